#!/bin/bash
# The GPU check (bench/gpu_check.py, docs/profiles.md): every memory profile and option
# checked for correctness on CUDA and timed on the 7B architecture, in one run of at most
# 9 minutes; everything lands in OUT: results.json, results.md (one table), profiler.txt
# (where a goal is missed) and run.log.
#
#   bash scripts/gpu-check.sh OUT            # on a GPU machine (default OUT: $OUT or /tmp/gpu-check)
#   bash scripts/gpu-check.sh --smoke OUT    # here, on the CPU: the same code paths, tiny, few steps
#
# Uses $PYTHON (default python3: on the GPU machine, the one that holds its torch) with
# this checkout on PYTHONPATH; nothing is installed into it. Wheels in .whl/ (or $WHEELS)
# are first installed into a scratch folder put on PYTHONPATH: bitsandbytes is not on the
# GPU machine's image, so bring its wheel along (docs/profiles.md says how); without it
# the int8 and nf4 rows say skipped. LIMIT: the hard limit in seconds (default 510); no
# new cell starts after MINUTES (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=()
if [ "${1:-}" = --smoke ]; then
    mode=(--smoke)
    shift
fi
out=${1:-${OUT:-/tmp/gpu-check}}
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ ${#mode[@]} -eq 0 ] && compgen -G "$wheels/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH=$PYTHONPATH:$site
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# SIGINT first: the check writes a last row saying it was stopped; its rows so far are kept
timeout --signal=INT --kill-after=15 "${LIMIT:-510}" \
    "$python" bench/gpu_check.py --out "$out" --minutes "${MINUTES:-8}" "${mode[@]}" \
    2>&1 | tee "$out/run.log"
