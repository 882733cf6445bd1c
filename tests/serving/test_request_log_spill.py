"""Request-log rows still buffered at shutdown (database unreachable) go to a spill file; the next
writer to start replays it into the database: good rows land (cascade steps and the serving time
included), a bad line is logged and skipped, a row the database refuses is dropped, a row an interrupted replay already committed is not
written twice, and the file is removed only once its rows are committed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from serving_helpers import WEAK, free_port, wait_for
from sqlalchemy import func, select


def _entry(n: int, **kw):  # noqa: ANN003, ANN202
    from routerops.db.models import new_id
    from routerops.serving.request_log import LogEntry

    return LogEntry(new_id(), f"prompt {n}", f"answer {n}", "router", "router", WEAK, 0.4, 0.5, "3", 10.0, 1.0,
                    3, 4, 0.001, "t", **kw)


def test_spilled_at_shutdown_and_replayed_at_the_next_start(postgres_url: str, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    from routerops.db import migrate, session_scope
    from routerops.db.models import CascadeStepLog, RequestLog
    from routerops.models.cascade_log import StepRecord
    from routerops.serving.metrics import ServingMetrics
    from routerops.serving.request_log import RequestLogWriter, write_entry
    from routerops.serving.request_log_spill import spill_dir, spill_files
    from routerops.settings import Settings

    caplog.set_level(logging.WARNING, logger="serving")
    data = tmp_path / "data"
    # nothing listens on this port: every write fails at once, as with a database that is down
    down = Settings(data_dir=data, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    metrics = ServingMetrics()
    writer = RequestLogWriter(down, metrics, capacity=10, retry_interval_s=60)
    served_at = datetime.now(UTC) - timedelta(hours=1)
    steps = [StepRecord(0, WEAK, 0.2, 0.5, False, 0.0001).to_dict(), StepRecord(1, "strong", None, None, True, 0.01).to_dict()]
    entries = [_entry(0, created_at=served_at, extra={"cascade_steps": steps, "cascade_models": [WEAK, "strong"]},
                      spec={"acceptance_rate": 0.5}),
               *[_entry(i) for i in range(1, 4)]]
    refused = _entry(4)
    refused.strategy = "s" * 41  # PostgreSQL refuses it (String(40)): dropped at replay, never blocking the file
    for e in [*entries, refused]:
        assert writer.write(e) is False
    writer.stop()
    (spilled,) = spill_files(spill_dir(data))
    assert len(spilled.read_text().splitlines()) == 5 and len(writer) == 0
    assert "routerops_request_log_spilled_total 5.0" in metrics.render().decode()
    assert not list(spill_dir(data).glob(".*.tmp"))  # written to a temp file, then renamed

    # as if an earlier replay was cut short after committing one row; and one line is garbage
    up = Settings(data_dir=data, database_url=postgres_url)
    migrate.upgrade("head", settings=up)
    write_entry(up, entries[1])
    with spilled.open("a") as f:
        f.write('{"request_id": "half a line\n')

    metrics = ServingMetrics()
    writer = RequestLogWriter(up, metrics, retry_interval_s=0.2)
    writer.start()
    try:
        wait_for(lambda: not spilled.exists(), timeout_s=20)
    finally:
        writer.stop()
    text = metrics.render().decode()
    assert "routerops_request_log_replayed_total 3.0" in text  # the already-stored row is not written again
    assert 'routerops_request_log_dropped_total{reason="spill_unreadable"} 1.0' in text
    assert 'routerops_request_log_dropped_total{reason="rejected"} 1.0' in text
    with session_scope(up) as s:
        ids = [e.request_id for e in (*entries, refused)]  # the database is shared by the session's tests
        rows = {r.id: r for r in s.scalars(select(RequestLog).where(RequestLog.id.in_(ids)))}
        assert set(rows) == {e.request_id for e in entries}
        first = rows[entries[0].request_id]
        assert abs((first.created_at - served_at).total_seconds()) < 1  # the time it was served, not replayed
        assert first.spec_acceptance_rate == 0.5 and first.completion == "answer 0"
        n_steps = s.scalar(select(func.count(CascadeStepLog.id)).where(CascadeStepLog.request_id == first.id))
        assert n_steps == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "5 row(s) the database could not take spilled to" in logged
    assert f"request log spill {spilled.name}: line 6 is not a request-log row" in logged
    assert f"request log spill row {refused.request_id} rejected (DataError" in logged
    assert f"replayed {spilled.name}: 3 row(s) written, 2 already stored or rejected, 1 unreadable line(s)" in logged


def test_a_spill_file_waits_while_the_database_is_unreachable(tmp_path: Path) -> None:
    from routerops.serving.request_log import RequestLogWriter
    from routerops.serving.request_log_spill import spill_dir, write_spill
    from routerops.settings import Settings

    down = Settings(data_dir=tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    path = write_spill(spill_dir(tmp_path), [_entry(1)])
    writer = RequestLogWriter(down, retry_interval_s=60)
    assert writer.replay_spills() == 0
    assert path.exists() and writer.replayed == 0
