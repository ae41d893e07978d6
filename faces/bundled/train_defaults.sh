#!/usr/bin/env bash
# How the bundled models were made (CPU, 2 cores). Each run holds out 20% of the
# identities (seed 0) in RUN/split/val and evaluates on them. Re-running resumes.
# Copy each RUN/best.pt to faces/bundled/NAME.pt; `human` is written in place.
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root
train() {
  local out=$1; shift
  local resume=()
  [ -f "$out/last.pt" ] && resume=(--resume)
  trainer train --out "$out" --no-progress "${resume[@]}" "$@"
}
# human: dlib's network, imported (no training), operating points on the held-out LFW people.
trainer split ../shared/data/lfw/images --out runs/lfw-split
trainer import-dlib --out faces/bundled/human.pt --data runs/lfw-split/val --pairs runs/lfw-split/val_pairs.txt --flip-average
# human-fast
train runs/human-long --data ../shared/data/lfw/images --species human --miner batch-all --crop 0.5 --input-size 64 --epochs 100
# dog: DOG_COMMAND
