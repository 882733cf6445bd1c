"""Credentials out of anything shown: `scheme://user:password@host` becomes `scheme://user:***@host`.

Used wherever a URI or an error that may quote one is shown (API answers, logs, MLflow tags). The
log filter masks every record of the process, so a library's own message that quotes a URI is
covered too.
"""

from __future__ import annotations

import logging
import re

# userinfo with a password: scheme://user:pass@ ; the password may hold anything but '@', '/' and space
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
# key=value secrets in query strings or DSNs (password=..., api_key=..., token=...)
_PARAMS = re.compile(r"(?i)\b(?P<k>password|passwd|pwd|api[_-]?key|access[_-]?token|token|secret)=(?P<v>[^&\s;,'\"]+)")
MASK = "***"


def redact(text: object) -> str:
    """`text` with every URI password and key=value secret masked."""
    s = str(text)
    if "://" in s:
        s = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", s)
    if "=" in s:
        s = _PARAMS.sub(lambda m: f"{m['k']}={MASK}", s)
    return s


_installed = False


def _scrub(record: logging.LogRecord) -> None:
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        # (client, method, path with query, http version, status): the formatter unpacks the tuple.
        # The query string is dropped: a client may put a key there (`?api_key=`), and it is no
        # place for anything the log should keep.
        client, method, path, version, status = record.args
        record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is the formatter's problem, not ours
        return
    masked = redact(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[1] is not None:
        # the traceback's last line quotes the exception (a connection error quotes its URL)
        text = logging.Formatter().formatException(record.exc_info)
        masked_exc = redact(text)
        if masked_exc != text:
            record.exc_text = masked_exc  # formatters use a cached exc_text as is


def install_log_redaction() -> None:
    """Mask credentials in every log record this process creates, whatever logger or handler it goes
    to (a record factory: logging reconfiguration by uvicorn or MLflow does not undo it). Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:  # noqa: ANN002, ANN003
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def redact_values(values: dict) -> dict:
    """A tags or params dict with credentials masked in every string value (MLflow keeps them forever)."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in values.items()}
