#!/usr/bin/env bash
# Issue 30's parity check: SqueezeSR and RepSR trained 4k steps from scratch in fp32 and in bf16
# autocast, the same seed and patch stream, scored on Set14 and Urban100 (docs/results.md).
#   research/precision_parity.sh [THREADS]        -> runs/parity/<arch>-<precision>, logs/eval/parity-*.json
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2}
SRKD=${SRKD:-.venv/bin/srkd}
mkdir -p runs/parity logs/eval
for arch in squeezesr repsr; do
  for p in fp32 bf16; do
    out=runs/parity/$arch-$p
    $SRKD train --arch "$arch" --scale 2 --data ../shared/data/train --val-split 10 --steps 4000 --batch 16 --patch 48 \
      --seed 7 --precision "$p" --threads "$T" --val-every 1000 --ckpt-every 1000 --log-every 100 --out "$out" --resume --quiet
    [ -f "logs/eval/parity-$arch-$p.json" ] || $SRKD eval --weights "$out/final.safetensors" \
      --data ../shared/data/benchmark/Set14 --data ../shared/data/benchmark/Urban100 --scale 2 --json "logs/eval/parity-$arch-$p.json"
  done
done
