"""The HTTP API laid out as in FastAPI's full-stack template: routes per resource, shared dependencies."""
