#!/bin/sh
# Runs once, when the postgres volume is first initialised: a separate role and database for MLflow,
# which keeps its own Alembic history (alembic_version) apart from routerops' schema.
set -eu
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set (see .env.example)}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=pw="$MLFLOW_DB_PASSWORD" --set=role="${MLFLOW_DB_USER:-mlflow}" --set=db="${MLFLOW_DB_NAME:-mlflow}" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"role";
SQL
