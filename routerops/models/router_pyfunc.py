"""MLflow "models from code" entry for the MF router: MLflow runs this file to build the pyfunc."""

import mlflow

from routerops.models.router import RouterPyfunc

mlflow.models.set_model(RouterPyfunc())
