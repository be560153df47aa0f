#!/usr/bin/env bash
# Ablation of the training recipe at a short budget: 3 joint epochs each, no decoder-only stage
# (it changes no code, so retrieval is the same; compare MSE with "before decoder stage").
# Each variant changes one thing: version one's recipe vs the current one (no input noise),
# then single changes to the current recipe;
# ~5 minutes per variant on an idle 2-core machine, far more when the cores are shared.
# Writes data/ablation/NAME.{pt,train.json,eval.json}.
#   scripts/ablation.sh TRAIN_FOLDER TEST_FOLDER [NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
train=${1:-../shared/datasets/cifar10-jpg/train}
test=${2:-../shared/datasets/cifar10-jpg/test}
shift $(( $# < 2 ? $# : 2 ))
out=data/ablation
mkdir -p "$out"
py=.venv/bin/python
first="--noise-std 0.05 --crop-scale 0.35 --depth 1"  # the first shipped recipe (version one)
declare -A variants=(
  [first_recipe]="$first"
  [no_contrastive]="$first --contrastive-weight 0"
  [no_denoising]="--noise-std 0 --crop-scale 0.35 --depth 1"  # the current recipe
  [crops_20]="--noise-std 0 --crop-scale 0.2 --depth 1"
  [depth_2]="--noise-std 0 --crop-scale 0.35 --depth 2"
  [temperature_01]="--noise-std 0 --crop-scale 0.35 --depth 1 --temperature 0.1"
  [temperature_05]="--noise-std 0 --crop-scale 0.35 --depth 1 --temperature 0.5"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(first_recipe no_contrastive no_denoising crops_20 depth_2)
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  $py scripts/train.py --data "$train" --test-data "$test" --epochs 3 --decoder-epochs 0 --out "$out/$name.pt" \
    ${variants[$name]} > "$out/$name.train.json"
  $py scripts/evaluate.py --database "$train" --queries "$test" --model "$out/$name.pt" --limit-queries 2000 \
    --json "$out/$name.eval.json" | tail -7
done
