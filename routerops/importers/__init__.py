"""Importers of preference logs (ours and public ones) into the preference store.

`import_file(session_or_settings, fmt, path, questions=None) -> ImportReport`; CLI: `routerops ingest`.
"""

from routerops.importers.core import FORMATS, ImportReport, import_file
from routerops.importers.records import ImportFailed, ImportOptions

__all__ = ["FORMATS", "ImportFailed", "ImportOptions", "ImportReport", "import_file"]
