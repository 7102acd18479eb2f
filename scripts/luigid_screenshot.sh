#!/usr/bin/env bash
# Look at luigid's task graph as a user would: a headless Chromium screenshot of the visualiser's
# dependency graph of one task (needs Debian's `chromium` package), and the page as rendered
# (OUT.html: each node's name and status, `data-task-status="DONE"`).
#   [BUDGET=ms] scripts/luigid_screenshot.sh SCHEDULER_URL TASK_ID [OUT.png]
# TASK_ID: e.g. the Report task's id, from SCHEDULER_URL/api/task_list (or the visualiser's task list).
set -euo pipefail
url=${1:?usage: scripts/luigid_screenshot.sh SCHEDULER_URL TASK_ID [OUT.png]}
task=${2:?usage: scripts/luigid_screenshot.sh SCHEDULER_URL TASK_ID [OUT.png]}
out=${3:-runs/luigid-graph.png}
id=$(python3 -c "import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=''))" "$task")
page="${url%/}/static/visualiser/index.html#tab=graph&visType=svg&taskId=$id"
chrome() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
    --window-size=1600,${HEIGHT:-2400} --virtual-time-budget=${BUDGET:-10000} "$@" "$page" 2>/dev/null
}
chrome --screenshot="$out"
chrome --dump-dom > "${out%.png}.html"
echo "screenshot of $page -> $out (${out%.png}.html)"
