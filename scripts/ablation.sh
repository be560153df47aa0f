#!/usr/bin/env bash
# Ablation of the training recipe at a short budget (3 epochs each, ~5 minutes per variant on
# 2 cores): what each choice does to retrieval and reconstruction. Writes data/ablation/*.json.
#   scripts/ablation.sh TRAIN_FOLDER TEST_FOLDER
set -euo pipefail
cd "$(dirname "$0")/.."
train=${1:-../shared/datasets/cifar10-jpg/train}
test=${2:-../shared/datasets/cifar10-jpg/test}
out=data/ablation
mkdir -p "$out"
py=.venv/bin/python
declare -A variants=(
  [recipe]=""
  [no_contrastive]="--contrastive-weight 0"
  [no_denoising]="--noise-std 0"
  [weak_crops]="--crop-scale 0.8"
)
for name in recipe no_contrastive no_denoising weak_crops; do
  # shellcheck disable=SC2086
  $py scripts/train.py --data "$train" --test-data "$test" --epochs 3 --out "$out/$name.pt" ${variants[$name]} \
    > "$out/$name.train.json"
  $py scripts/evaluate.py --database "$train" --queries "$test" --model "$out/$name.pt" --limit-queries 2000 \
    --json "$out/$name.eval.json" | tail -7
done
