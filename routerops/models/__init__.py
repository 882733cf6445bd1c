"""What training produces and serving and monitoring load: the router, the deferral probe, the
cascade scorer and config, the exit head, the embedders, and the one cached MLflow loader.
It imports only the base (settings, storage, backends, registry)."""
