#!/usr/bin/env bash
# Issue 31: pilots for the fast tier's recipe (RepSR, the default), one variable each against base.
#
#   research/fast_tier.sh SCALE ARM[,ARM...] [TIME_LIMIT_S]
#
#   base     RepSR --reparam 64 from scratch: batch 16, 48x48 LR patches, lr 1e-3 cosine, 20k steps
#   long     base's recipe over 60k steps (a longer schedule, not more steps of the same one)
#   b32p64   batch 32 and 64x64 patches (3.6x the pixels a step), 20k steps
#   rep128   --reparam 128 (a wider over-parameterisation; the same plain network after collapse)
#   deep     11 body layers instead of 9 (about 1.2x the latency)
#   l2ft     base's weights, 4k more steps of MSE at lr 1e-4 (L1 then an L2 fine-tune)
#   kd-bsrn  base plus output KD from bsrn-x{SCALE} (gamma 0.5; its outputs cached once in $RUNS/tcache-bsrn-x{S})
#   x2body   (x3, x4) base's recipe started from the x2 base's weights (SESR's order)
# Every arm: seed 1, the same patch stream, validated on 10 training images held out (--val-split),
# Set5 only as a monitor, training data without BSD200 302003. Runs (or resumes) $RUNS/fast-x{S}-{ARM};
# rerun the same line to continue (STEPS=N overrides the steps: a smoke run).
# One run at a time: it takes both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?scale}; ARMS=${2:?arm}; LIMIT=${3:-}
SRKD=${SRKD:-.venv/bin/srkd}
RUNS=${RUNS:-runs}
case $S in 2|3|4) ;; *) echo "scale: 2, 3 or 4" >&2; exit 2 ;; esac
run_arm() {  # ARM [--time-limit S]
  local ARM=$1 CMD=(train --arch repsr) OPT=(--reparam 64 --lr 1e-3) N=${STEPS:-20000} B=16 P=48 base; shift
  base=$RUNS/fast-x$S-base/final.safetensors
  case $ARM in
    base) ;;
    long) N=${STEPS:-60000} ;;
    b32p64) B=32; P=64 ;;
    rep128) OPT=(--reparam 128 --lr 1e-3) ;;
    deep) OPT+=(--set layers=11) ;;
    l2ft) [ -f "$base" ] || { echo "l2ft starts from $base: run base first" >&2; return 2; }
          N=${STEPS:-4000}; OPT=(--reparam 64 --lr 1e-4 --warmup 100 --loss mse --init "$base") ;;
    kd-bsrn) CMD=(distill --student repsr --teacher "bsrn-x$S" --feat-weight 0 --out-weight 0.5 --teacher-cache "$RUNS/tcache-bsrn-x$S") ;;
    x2body) base=$RUNS/fast-x2-base/final.safetensors
            [ "$S" != 2 ] || { echo "x2body is an x3/x4 arm" >&2; return 2; }
            [ -f "$base" ] || { echo "x2body starts from $base: run the x2 base first" >&2; return 2; }
            OPT+=(--init "$base") ;;
    *) echo "arm: base long b32p64 rep128 deep l2ft kd-bsrn x2body" >&2; return 2 ;;
  esac
  $SRKD "${CMD[@]}" --scale "$S" "${HELD_OUT[@]}" \
    --out "$RUNS/fast-x$S-$ARM" --steps "$N" --batch "$B" --patch "$P" \
    --seed 1 --threads 2 --val-every 2000 --ckpt-every 1000 --log-every 200 --resume "${OPT[@]}" "$@"
}

source research/lib/runs.sh
run_arms "$ARMS" "$LIMIT"
