#!/usr/bin/env bash
# Create .venv with the pinned requirements and link data/ to the NSMC-4 folder (default ../shared/data/nsmc4).
# Idempotent: a second call only checks. NSMC4_DIR=/path/to/nsmc4 points elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  echo "$want" > "$stamp"
fi
data_dir=${NSMC4_DIR:-../shared/data/nsmc4}
if [ ! -e data ] && [ -d "$data_dir" ]; then
  ln -s "$(cd "$data_dir" && pwd)" data
  echo "data -> $(readlink data)"
fi
