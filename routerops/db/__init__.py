from routerops.db.models import Base
from routerops.db.session import dispose_engines, get_engine, session_scope

__all__ = ["Base", "dispose_engines", "get_engine", "session_scope"]
