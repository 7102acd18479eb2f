#!/usr/bin/env bash
# Look at the MLflow UI as a user would: serve a tracking store on 127.0.0.1 and take a headless
# Chromium screenshot of an experiment's chart view (needs Debian's `chromium` package).
#   [MODE=CHART|TABLE] [BUDGET=ms] scripts/mlflow_screenshot.sh [STORE_URI] [EXPERIMENT_NAME] [OUT.png]
set -euo pipefail
uri=${1:-sqlite:///runs/mlflow.db}
exp=${2:-tiny}
out=${3:-runs/mlflow-ui.png}
port=${PORT:-5055}
py=${PY:-.venv/bin/python}
art=$(dirname "${uri#sqlite:///}")/mlartifacts
"$py" -m mlflow server --backend-store-uri "$uri" --default-artifact-root "$art" --host 127.0.0.1 --port "$port" \
  > /tmp/mlflow-ui.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 180); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done  # slow on a busy machine
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "error: mlflow server did not start (/tmp/mlflow-ui.log)" >&2; exit 1; }
id=$(MLFLOW_TRACKING_URI="$uri" "$py" -c "import mlflow,sys; e=mlflow.get_experiment_by_name(sys.argv[1]); print(e.experiment_id if e else '')" "$exp")
[ -n "$id" ] || { echo "error: experiment '$exp' not found in $uri" >&2; exit 1; }
url="http://127.0.0.1:$port/#/experiments/$id/runs?compareRunsMode=${MODE:-CHART}"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1600,1100 --virtual-time-budget=${BUDGET:-20000} --screenshot="$out" "$url" 2>/tmp/chromium.log ||
  { echo "error: chromium failed (/tmp/chromium.log)" >&2; exit 1; }
[ -s "$out" ] || { echo "error: no screenshot written (/tmp/chromium.log)" >&2; exit 1; }
echo "screenshot of $url -> $out"
