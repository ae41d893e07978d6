#!/usr/bin/env bash
# Compare miners and losses on DogFaceNet with everything else fixed (small backbone, 64 px,
# P=32 K=4, same identity split, same seed). Each run's numbers come from its epochs.jsonl;
# the summary prints the final and best held-out verification accuracy per configuration.
#   bash bench/compare_losses.sh [EPOCHS] [OUT]
set -euo pipefail
epochs=${1:-25}
out=${2:-runs/compare}
data=${DATA:-../shared/data/dogfacenet/images}
run() {
  local name=$1; shift
  [ -f "$out/$name/epochs.jsonl" ] && [ "$(wc -l < "$out/$name/epochs.jsonl")" -ge "$epochs" ] && return
  local resume=()
  [ -f "$out/$name/last.pt" ] && resume=(--resume)
  trainer train --data "$data" --out "$out/$name" --species dog --epochs "$epochs" --no-progress "${resume[@]}" "$@"
}
run batch-hard --loss triplet --miner batch-hard
run semi-hard --loss triplet --miner semi-hard
run batch-all --loss triplet --miner batch-all
run joint-batch-hard --loss joint --miner batch-hard
run contrastive --loss contrastive
python - "$out" <<'PY'
import json, sys, pathlib
print(f"{'configuration':20} {'final acc':>10} {'best acc':>9} {'final AUC':>10} {'s/epoch':>8}")
for run in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    rows = [json.loads(l) for l in (run / "epochs.jsonl").read_text().splitlines()]
    last = rows[-1]
    print(f"{run.name:20} {last['val_accuracy']:10.4f} {max(r['val_accuracy'] for r in rows):9.4f} "
          f"{last['val_auc']:10.4f} {sum(r['seconds'] for r in rows) / len(rows):8.1f}")
PY
