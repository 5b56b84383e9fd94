#!/bin/bash
# Continue the world model's training on a lent GPU, then evaluate it; everything lands in
# $OUT (the device tool brings that folder back): run/ (a loadable checkpoint with train/
# to resume here), train.log, eval/ (eval-world's table, plot and strip).
#
#   bash scripts/world-device.sh            # on the device machine: CUDA, MINUTES of training
#   bash scripts/world-device.sh --smoke    # here, on the CPU: the same steps, seconds long
#
# Uses the machine's own python3 (torch, numpy, pillow, safetensors, tqdm: the device's
# package list has them) with this checkout on PYTHONPATH. Knobs: MINUTES (default 6),
# BATCH (32), LR (3e-4), WORKERS (render processes, 12), FROM (models/world-64-training).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/world-device}
python=${PYTHON:-python3}
if [ "${1:-}" = --smoke ]; then
    device=cpu minutes=0.2 batch=4 workers=1 episodes=1 steps=2
else
    device=cuda minutes=${MINUTES:-6} batch=${BATCH:-32} workers=${WORKERS:-12} episodes=3 steps=8
fi
mkdir -p "$out"
rm -rf "$out/run"
cp -r "${FROM:-models/world-64-training}" "$out/run"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$python" -m workbench train-world "$out/run" --resume --steps 10000000 --device "$device" \
    --batch "$batch" --lr "${LR:-3e-4}" --ae-lr "${LR:-3e-4}" --render-workers "$workers" \
    --threads 4 --minutes "$minutes" >"$out/train.log" 2>&1 || { tail -c 3000 "$out/train.log"; exit 1; }
tail -n 1 "$out/train.log"
tail -n 2 "$out/run/train/log.jsonl"
"$python" -m workbench eval-world --model "$out/run" --episodes "$episodes" --steps "$steps" \
    --timesteps 10 --out "$out/eval"
