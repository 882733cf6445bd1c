#!/usr/bin/env bash
# Regenerates the monitoring screenshots of the README as a user gets there: a store of AlpacaEval
# judgements, a router trained and approved, a golden set recorded from AlpacaEval outputs, the
# Evidently UI started (`routerops monitor ui`), one normal monitor run, then one with the weak model
# drifted (Mixtral's "concise" outputs: the scenario of tests/monitoring/test_monitor.py), a screenshot after
# each, and the monitor's output (per-category table included) saved next to them.
#
#   docs/screenshots/capture_monitoring.sh        # needs the shared data and Debian's chromium
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="${ROUTEROPS_SHARED_DATA:-$REPO/../shared/data}"
[[ -d "$DATA" ]] || DATA=/work/shared/data
AE="$DATA/alpaca_eval"
OUT="$REPO/docs/screenshots"
WORK="$(mktemp -d /tmp/routerops-screens.XXXXXX)"
PORT="${EVIDENTLY_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export ROUTEROPS_DATA_DIR="$WORK/data" DO_NOT_TRACK=1
cd "$WORK"
rops() { "$REPO/.venv/bin/routerops" "$@"; }

pair() {  # the live pair, replayed from AlpacaEval recordings; the router knows the weak by its base name
  export ROUTEROPS_WEAK_BACKEND=replay ROUTEROPS_STRONG_BACKEND=replay \
    ROUTEROPS_WEAK_MODEL="$1" ROUTEROPS_WEAK_REPLAY_FILE="$AE/model_outputs/$1.json.gz" \
    ROUTEROPS_STRONG_MODEL=gpt4_1106_preview ROUTEROPS_STRONG_REPLAY_FILE="$AE/model_outputs/gpt4_1106_preview.json.gz" \
    ROUTEROPS_ROUTER_WEAK_NAME=Mixtral-8x7B-Instruct-v0.1 ROUTEROPS_ROUTER_STRONG_NAME=gpt4_1106_preview \
    ROUTEROPS_PGR_TOLERANCE=0.05
}

rops init
rops ingest alpaca-eval "$AE/annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz"
rops train router | tail -3
rops approve 1 --by screenshots
pair Mixtral-8x7B-Instruct-v0.1
rops golden record --from-alpaca-eval --limit 150 --output golden.jsonl \
  --weak-outputs "$AE/model_outputs/Mixtral-8x7B-Instruct-v0.1.json.gz" \
  --strong-outputs "$AE/model_outputs/gpt4_1106_preview.json.gz" \
  --annotations "$AE/annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz"

rops monitor ui --port "$PORT" >"$WORK/ui.log" 2>&1 &
UI_PID=$!
trap 'kill $UI_PID 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 1; done
kill -0 $UI_PID || { cat "$WORK/ui.log"; exit 1; }  # ours answers, not another UI on that port
export ROUTEROPS_EVIDENTLY_URL="http://127.0.0.1:$PORT"
PROJECT=$(curl -fs "http://127.0.0.1:$PORT/api/projects" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

shot() {
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,4400 \
    --virtual-time-budget=15000 --screenshot="$OUT/$1" "http://127.0.0.1:$PORT/projects/$PROJECT" 2>/dev/null
  echo "wrote $OUT/$1"
}

# alpha for PGR 0.8 on the recorded set, as an operator calibrates after recording (tests/monitoring/test_monitor.py)
ALPHA=$("$REPO/.venv/bin/python" - <<'PY'
import numpy as np
from routerops.monitoring.golden import load_golden
from routerops import metrics
t = load_golden("golden.jsonl")
s = np.array([x.router_score for x in t]); w = np.array([x.label.p_weak_wins for x in t])
print(metrics.alpha_for_pgr(s, w, 1 - w, 0.8))
PY
)
rops alpha set "$ALPHA" --reason "calibrated to PGR 0.8 on the recorded set" --force
rops monitor run --golden golden.jsonl --no-recalibrate | tee "$OUT/monitor-normal.txt"
shot evidently-after-normal-run.png
pair Mixtral-8x7B-Instruct-v0.1_concise
rops monitor run --golden golden.jsonl --no-recalibrate \
  --judge-annotations "$AE/annotations/weighted_alpaca_eval_gpt4_turbo.jsonl.gz" | tee "$OUT/monitor-drift.txt"
shot evidently-after-drift-run.png
