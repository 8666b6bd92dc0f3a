#!/usr/bin/env bash
# Every check that needs CUDA, as one script for a short GPU lease (not yet timed on a GPU).
#
#   bash bench/gpu_check.sh prepare   # here, with the network: wheels the GPU image may lack
#   bash bench/gpu_check.sh           # on the GPU machine; logs go to $OUT (or gpu-check/)
#
# It runs, in this order, each step's output teed into one log:
#   1. the `gpu`-marked tests: every meta-learner and self-supervised method through `fit` and
#      `evaluate_learner` on CUDA, MAML's vmap on CUDA against the CPU loop in float64, the
#      augmentations and the encoder probes on CUDA (they skip without CUDA, so a CPU-only
#      run proves nothing);
#   2. `bench/maml_speed.py` (issue 3: the package's meta-step vs a learn2learn-style loop;
#      the last line is `speedup_vs_loop=<x> conv_efficiency=<y>`).
# Prepared for machines that run a CUDA image's own python3 with torch, pytest and
# scikit-learn but without the project's pure-Python extras (pooch, platformdirs) and with no
# network: `prepare` downloads those as wheels into .gpu-wheels/ (ignored by git; pass it in
# the device tool's `carry`), and the check installs them from there with --no-index.
# The project's pytest options need nbval, so the check replaces them with plain ones.
# Without CUDA the tests skip and the benchmark runs on the CPU: the exit status is then 0
# but nothing about CUDA has been checked; the log's "machine" line says which it was.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "prepare" ]]; then
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" pooch platformdirs
    ls "$WHEELS"
    exit
fi

LOGDIR="${OUT:-gpu-check}"
mkdir -p "$LOGDIR"
LOG="$LOGDIR/gpu_check.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME COMMAND...: run, tee into the log, remember a failure
    echo "=== $1 ($(date -u +%H:%M:%S))" | tee -a "$LOG"
    shift
    "$@" 2>&1 | tee -a "$LOG" || status=1
}

missing=$("$PY" -c "import importlib.util as u; print(*(m for m in ('pooch', 'platformdirs') if u.find_spec(m) is None))")
if [[ -n "$missing" ]]; then
    step "install $missing from $WHEELS" "$PY" -m pip install --quiet --no-index --no-deps \
        --find-links "$WHEELS" $missing
fi
step "machine" "$PY" -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.is_available() and torch.cuda.get_device_name())"
# Only the files that hold gpu-marked tests: the others import tools (jupytext, hypothesis,
# yaml) that a CUDA image need not have.
step "gpu-marked tests" "$PY" -m pytest -o addopts="-ra --strict-markers" -p no:cacheprovider \
    -m gpu $(grep -rl --include='*.py' "mark.gpu" tests | sort)
step "bench/maml_speed.py" "$PY" bench/maml_speed.py --steps 5
echo "=== done, status $status; log in $LOG" | tee -a "$LOG"
exit $status
