"""AlpacaEval annotations: {instruction, generator_1, generator_2, annotator, preference}.

preference is in [1, 2]: 1 = generator_1 (model_a) preferred, 2 = generator_2 (model_b), 1.5 = tie;
the `weighted_*` annotators give a float. We store soft_label = 2 - preference = P(model_a wins) and
winner a / b / tie for preference < / > / == 1.5. AlpacaEval encodes a draw as 0 as well
(`pairwise_to_winrate`: "0 for draw"), so 0 is a tie; null or anything else is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from routerops.importers.readers import iter_json_records
from routerops.importers.records import ImportOptions, Pair, Reject

SOURCE = "alpaca_eval"


def parse(path: Path, options: ImportOptions) -> Iterator[Pair | Reject]:
    for line, obj in iter_json_records(path):
        if isinstance(obj, Reject):
            yield obj
            continue
        pref = obj.get("preference")
        if pref is None:
            yield Reject(line, "null preference")
            continue
        if isinstance(pref, bool) or not isinstance(pref, int | float) or math.isnan(pref):
            yield Reject(line, "unparseable preference", repr(pref)[:80])
            continue
        if pref == 0:
            winner, soft = "tie", 0.5
        elif 1.0 <= pref <= 2.0:
            soft = 2.0 - float(pref)
            winner = "a" if pref < 1.5 else "b" if pref > 1.5 else "tie"
        else:
            yield Reject(line, "preference out of range", repr(pref))
            continue
        yield Pair(
            line=line,
            prompt=obj.get("instruction") or "",
            model_a=obj.get("generator_1") or "",
            model_b=obj.get("generator_2") or "",
            winner=winner,
            soft_label=soft,
            judge=obj.get("annotator") or None,
            answer_a=obj.get("output_1") if isinstance(obj.get("output_1"), str) else None,
            answer_b=obj.get("output_2") if isinstance(obj.get("output_2"), str) else None,
            category=obj.get("dataset") if isinstance(obj.get("dataset"), str) and obj.get("dataset") else None,
        )
