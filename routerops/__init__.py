"""routerops: train, serve and monitor LLM routers."""

__version__ = "0.1.0"
