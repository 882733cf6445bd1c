"""The cascade's per-rung P(correct) scorer, its features and its MLflow pyfunc."""
