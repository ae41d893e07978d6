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
# dog: dlib's network adapted to dog faces with semi-hard mining (whole 224 px crops at 150 px);
# then flip averaging switched on and the operating points chosen on the held-out dogs.
train runs/dog-dlib-sh60 --data ../shared/data/dogfacenet/images --species dog --init human --alignment lfw --crop 1.0 --freeze 14 --augment full --miner semi-hard --margin 0.2 --lr 1e-4 --epochs 60
trainer calibrate --model runs/dog-dlib-sh60/best.pt --data runs/dog-dlib-sh60/split/val --pairs runs/dog-dlib-sh60/split/val_pairs.txt --flip --out faces/bundled/dog.pt
# The dog face detector (faces/bundled/dog-detector.pt, card dog-detector.md): the dog model's
# training dogs only (trainer split, seed 0), LFW for backgrounds; from scratch, then on its
# own mistakes; then copy runs/dog-detector/dog-detector.pt to faces/bundled/.
trainer split ../shared/data/dogfacenet/images --out runs/dog-split
trainer train-dog-detector --dogs runs/dog-split/train --people ../shared/data/lfw/images --out runs/dog-detector-1 --scenes 15000 --epochs 10
trainer train-dog-detector --dogs runs/dog-split/train --people ../shared/data/lfw/images --out runs/dog-detector --scenes 15000 --epochs 3 --lr 1e-3 --init runs/dog-detector-1/dog-detector.pt --hard-negatives 4500
