"""The deferral probe: features of the weak model's hidden states, the probe, its MLflow pyfunc."""
