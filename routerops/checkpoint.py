"""Named points inside long jobs where a fault-injection test can stop the process.

With ROUTEROPS_DEBUG_PAUSE_AT=<name> set, reaching checkpoint(<name>) writes "<pid> <name>" to the file
ROUTEROPS_DEBUG_PAUSE_MARKER and sleeps, so the test kills the process (SIGKILL) exactly there. Unset
(always, outside tests) a checkpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT = "ROUTEROPS_DEBUG_PAUSE_AT"
PAUSE_MARKER = "ROUTEROPS_DEBUG_PAUSE_MARKER"


def checkpoint(name: str) -> None:
    if os.environ.get(PAUSE_AT) != name:
        return
    marker = os.environ.get(PAUSE_MARKER)
    if marker:
        Path(marker).write_text(f"{os.getpid()} {name}\n")
    time.sleep(3600)  # the test kills us here
