#!/usr/bin/env bash
# How the bundled models were trained (CPU, 2 cores). Each run holds out 20% of the
# identities (seed 0) in RUN/split/val and evaluates on them. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root
train() {
  local out=$1; shift
  local resume=()
  [ -f "$out/last.pt" ] && resume=(--resume)
  trainer train --out "$out" --no-progress "${resume[@]}" "$@"
}
train runs/dog-long --data ../shared/data/dogfacenet/images --species dog --miner batch-all --input-size 96 --epochs 120
train runs/human-long --data ../shared/data/lfw/images --species human --miner batch-all --crop 0.5 --input-size 64 --epochs 100
# The dog face detector (faces/bundled/dog-detector.pt, card dog-detector.md): the dog model's
# training dogs only (trainer split, seed 0), LFW for backgrounds; from scratch, then on its
# own mistakes; then copy runs/dog-detector/dog-detector.pt to faces/bundled/.
trainer split ../shared/data/dogfacenet/images --out runs/dog-split
trainer train-dog-detector --dogs runs/dog-split/train --people ../shared/data/lfw/images --out runs/dog-detector-1 --scenes 15000 --epochs 10
trainer train-dog-detector --dogs runs/dog-split/train --people ../shared/data/lfw/images --out runs/dog-detector --scenes 15000 --epochs 3 --lr 1e-3 --init runs/dog-detector-1/dog-detector.pt --hard-negatives 4500
