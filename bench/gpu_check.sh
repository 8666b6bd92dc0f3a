#!/usr/bin/env bash
# Every check that needs CUDA, as one script for a short GPU lease (not yet timed on a GPU;
# estimated 6-8 minutes on one H200, most of it torch.compile: see each step).
#
#   bash bench/gpu_check.sh prepare   # here, with the network: wheels the GPU image may lack
#   bash bench/gpu_check.sh           # on the GPU machine; logs go to $OUT (or gpu-check/)
#
# It runs, in this order, each step's output teed into one log:
#   1. the `gpu`-marked tests (~2 min): every meta-learner and self-supervised method through
#      `fit` and `evaluate_learner` on CUDA, MAML's vmap on CUDA against the CPU loop in
#      float64, the augmentations and the encoder probes on CUDA, and the fast paths of `fit`
#      (tests/test_train.py): channels-last against NCHW in float64 (ProtoNet, SimCLR, MAML,
#      and MAML's vmap), amp's autocast policy, torch.compile against eager (they skip
#      without CUDA, so a CPU-only run proves nothing);
#   2. `bench/maml_speed.py` (issue 3, ~30 s: the package's meta-step vs a learn2learn-style
#      loop; the last line is `speedup_vs_loop=<x> conv_efficiency=<y>`);
#   3. `bench/amp_numerics.py --device cuda` (~30 s: each method's meta-gradient in float32
#      and under bfloat16 autocast against float64, on the GPU's kernels; written to
#      $LOGDIR/amp_numerics_cuda.json, beside the CPU figures in bench/results/);
#   4. `bench/gpu_paths.py` (~3 min, mostly compiling: steps/s of ProtoNet, MAML and SimCLR
#      in float32, bf16 autocast, channels-last, both, and torch.compile, each as a ratio to
#      float32; written to $LOGDIR/gpu_paths.json, to be copied to bench/results/ by hand);
#   5. the distributed path on one GPU (~1 min): `torchrun --nproc_per_node=1` of
#      `train protonet` (the launcher, LOCAL_RANK and the CLI on CUDA; with one rank `fit`
#      needs no process group), then `train simclr` and `train protonet` inside an NCCL
#      process group of one, so that the NCCL code paths run: the logged means
#      (all_reduce on the GPU) and SimCLR's gathered negatives (all_gather). DDP itself
#      needs two ranks, which one GPU cannot host with NCCL.
# Prepared for machines that run a CUDA image's own python3 with torch, pytest and
# scikit-learn but without the project's pure-Python extras (pooch, platformdirs) and with no
# network: `prepare` downloads those as wheels into .gpu-wheels/ (ignored by git; pass it in
# the device tool's `carry`), and the check installs them from there with --no-index.
# The project's pytest options need nbval, so the check replaces them with plain ones.
# Without CUDA the tests skip, maml_speed.py runs on the CPU (minutes) and steps 3-5 are
# skipped: the exit status is then 0 but nothing about CUDA has been checked; the log's
# "machine" line says which it was.
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
if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    step "bench/amp_numerics.py" "$PY" bench/amp_numerics.py --device cuda \
        --results "$LOGDIR/amp_numerics_cuda.json"
    # at most 5 minutes (compilation has no bound of its own); the file is written after
    # every method, so a run cut short keeps what it measured
    step "bench/gpu_paths.py" timeout 300 "$PY" bench/gpu_paths.py --steps 20 \
        --results "$LOGDIR/gpu_paths.json"
    step "torchrun, one rank on CUDA" "$PY" -m torch.distributed.run --nproc_per_node=1 \
        -m companion train protonet --dataset glyphs --steps 20 --device cuda --quiet \
        --restart --out "$LOGDIR/ddp-nccl"
    for method in simclr protonet; do
        step "an NCCL group of one: train $method" "$PY" -c "
import sys, torch, torch.distributed as dist
torch.cuda.set_device(0)
dist.init_process_group('nccl', init_method='tcp://127.0.0.1:29533', rank=0, world_size=1)
from companion.__main__ import main  # its teardown leaves the group
sys.exit(main(['train', '$method', '--dataset', 'glyphs', '--steps', '20', '--device', 'cuda',
               '--quiet', '--restart', '--out', '$LOGDIR/nccl-$method']))"
    done
else  # steps 3-5 measure CUDA only (gpu_paths.py --quick checks its plumbing on a CPU)
    echo "=== steps 3-5 (amp numerics, fast paths, NCCL) skipped: no CUDA" | tee -a "$LOG"
fi
echo "=== done, status $status; log in $LOG" | tee -a "$LOG"
exit $status
