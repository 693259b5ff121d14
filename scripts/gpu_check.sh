#!/usr/bin/env bash
# The checks that need a GPU, prepared as one run for a short lease of a CUDA machine.
#
#   bash scripts/gpu_check.sh wheels                        # here, with PyPI: .whl/ for the GPU machine
#   bash scripts/gpu_check.sh install env cuda-tests bench  # there: about 6 minutes on an H200
#   bash scripts/gpu_check.sh install suite                 # there: the whole test suite
#
# Stages, in the order given:
#   wheels      download cp312 x86-64 wheels of transformers, pandas and scikit-learn as pinned in
#               requirements.txt (and .venv's regex, which transformers checks) into .whl/, for a machine without an index whose image holds other
#               versions; torch stays the machine's own CUDA build, and tokenizers and huggingface_hub
#               the image's, within transformers' ranges (hub 2.x would need packages the image lacks)
#   install     install .whl/ into /tmp/site with --no-deps and put it first on PYTHONPATH
#   env         the GPU, the driver and the packages the run uses
#   cuda-tests  tests/test_cuda.py: fp16 with its GradScaler and bf16 training, a resume, GPU prediction
#               (eager and compiled), page-locked batch copies
#   bench       bench/throughput.py --parts trainer on scratch:base (BERT-base's shape), bf16 then fp16:
#               ours against transformers.Trainer, samples/s, peak GPU memory and the ratios
#   suite       the whole suite (where CUDA is visible, runs that ask for device auto train on it)
#
# Each stage writes its log to $OUT (the device tool's folder that comes back) or to ./gpu-check,
# and runs under `timeout $STAGE_SECONDS` (default 300) so that one hung stage cannot spend the lease.
# The bench reads data/train.csv: carry it (a path through the data link travels), with .whl:
#   run(command="bash scripts/gpu_check.sh install env cuda-tests bench", carry=[".whl", "data/train.csv"])
# BENCH_ROWS (default 20000) sets the bench's training rows.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
python=${PYTHON:-python3}
seconds=${STAGE_SECONDS:-300}
export PYTHONUNBUFFERED=1
status=0

stage() {  # stage NAME COMMAND...: run it under the timeout, log to $out/NAME.log, remember a failure
  local name=$1
  shift
  echo "== $name: $*"
  timeout "$seconds" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit status $rc"
  [ "$rc" -eq 0 ] || status=1
}

for name in "$@"; do  # every name checked before any stage runs
  case $name in
    wheels | install | env | cuda-tests | bench | suite) ;;
    *) echo "error: unknown stage $name; expected wheels, install, env, cuda-tests, bench or suite" >&2; exit 2 ;;
  esac
done

for name in "$@"; do
  case $name in
    wheels)
      pins="$(grep -E '^(transformers|pandas|scikit-learn)==' requirements.txt | tr '\n' ' ')"
      pins+="regex==$(.venv/bin/python -c 'import regex; print(regex.__version__)')"  # transformers checks it at import
      stage wheels .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins ;;
    install)
      stage install $python -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} ;;
    env)
      stage env bash -c "nvidia-smi; $python -c 'import importlib.metadata as m, torch
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())
print(*(n + \" \" + m.version(n) for n in (\"transformers\", \"tokenizers\", \"huggingface_hub\", \"safetensors\",
      \"regex\", \"pandas\", \"numpy\", \"scikit-learn\", \"accelerate\")), sep=\", \")
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no GPU\")'" ;;
    cuda-tests)  # skipped tests would pass: no GPU visible is a failure here
      stage cuda-tests bash -c "$python -c 'import torch; assert torch.cuda.is_available(), \"no CUDA GPU visible\"' \
        && $python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py" ;;
    bench)
      for precision in bf16 fp16; do
        stage "bench-$precision" $python -m bench.throughput --parts trainer --device cuda --preset base \
          --precision "$precision" --train-samples "${BENCH_ROWS:-20000}"
      done ;;
    suite)
      stage suite $python -m pytest -q -p no:cacheprovider ;;
  esac
done
exit $status
