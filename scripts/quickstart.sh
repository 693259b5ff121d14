#!/usr/bin/env bash
# Fresh clone to submission: set up, train the offline default on data/train.csv, predict data/test.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f data/train.csv ] || { echo "error: data/train.csv not found; set NSMC4_DIR to the NSMC-4 folder" >&2; exit 2; }
name="quickstart-$(date +%Y%m%d-%H%M%S)"
.venv/bin/python train.py --run-name "$name" --test-file data/test.csv "$@"
.venv/bin/python predict.py "runs/$name" --test data/test.csv --out submission.csv --quiet
