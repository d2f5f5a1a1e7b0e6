#!/usr/bin/env bash
# Issue 21's fair ablation: every arm the same start, steps, schedule, seed and patch stream.
#
#   research/ablation.sh SCALE ARM [TIME_LIMIT_S]
#
# Runs (or resumes) runs/a{SCALE}-{ARM} through the stages below, each a `--resume` of the one
# before with a larger --steps, exactly as the earlier p2/p3/p4 runs were made (they named the same
# start file `--init squeezesr-x{S}`), so those runs are arms too (p{S}-twin = plain, p{S}-kd-o =
# plain + IMDN output KD). Stopped by TIME_LIMIT_S (or
# Ctrl-C), rerun the same line to continue. Teacher caches live in $TCACHE (default /work/tcache).
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?scale}; ARM=${2:?arm}; LIMIT=${3:-}
SEED=${SEED:-5}  # another seed (another patch stream) runs in runs/a{S}-{ARM}-seed{SEED}
SRKD=${SRKD:-.venv/bin/srkd}
TCACHE=${TCACHE:-/work/tcache}
DATA=${DATA:-../shared/data/train}
# Every arm starts from the SqueezeSR that was bundled when the p2/p3/p4 runs began (re-bundling
# squeezesr-x* must not move the start of later arms): taken from git at START_COMMIT and checked.
START_COMMIT=1b72cf9
case $S in
  2) C="--patch 48 --lr 2e-4"; STAGES="4000 16000"; SHA=4d17c45ad06fe9c883cf8a61dd4c11c7fe17b8dcff2527a918bcb8e0910b2d59 ;;
  3) C="--patch 40 --lr 5e-4"; STAGES="4000 16000"; SHA=5752c064eb36acbe8fa8e4397ad82c537b80598cee999f7a93529d84a83061e2 ;;
  4) C="--patch 32 --lr 2e-4"; STAGES="6000 12000"; SHA=5bdb778460730f02ace117565f68f5e7a39e0b92954c65153d3e5b93150875ef ;;
  *) echo "scale: 2, 3 or 4" >&2; exit 2 ;;
esac
INIT=runs/starts/squeezesr-x$S-${SHA:0:8}.safetensors
if [ ! -f "$INIT" ]; then
  mkdir -p runs/starts
  git show "$START_COMMIT:srkd_cli/weights/squeezesr-x$S.safetensors" > "$INIT.tmp" && mv "$INIT.tmp" "$INIT"
fi
echo "$SHA  $INIT" | sha256sum -c --quiet - || { echo "$INIT is not the start the arms share" >&2; exit 2; }
C="$C --init $INIT"
C="--scale $S --data $DATA --val tests/data/Set5 --batch 16 $C --warmup 100 --val-every 1000 --ckpt-every 500 --log-every 100 --device cpu --seed $SEED --threads 1"
REP="--reparam 64"
UP=${UP:-runs/up/bsrn-x$S}
case $ARM in
  twin)          CMD="train --arch squeezesr" ;;
  rep-twin)      CMD="train --arch squeezesr $REP" ;;
  imdn-o)        CMD="distill --teacher imdn-x$S --student squeezesr --feat-weight 0 --out-weight 0.5 --teacher-cache $TCACHE/imdn-x$S" ;;
  rep-imdn-o)    CMD="distill --teacher imdn-x$S --student squeezesr $REP --feat-weight 0 --out-weight 0.5 --teacher-cache $TCACHE/imdn-x$S" ;;
  bsrn-o)        CMD="distill --teacher bsrn-x$S --student squeezesr --feat-weight 0 --out-weight 0.5 --teacher-cache $TCACHE/bsrn-x$S" ;;
  rep-bsrn-o)    CMD="distill --teacher bsrn-x$S --student squeezesr $REP --feat-weight 0 --out-weight 0.5 --teacher-cache $TCACHE/bsrn-x$S" ;;
  rep-bsrn-fo)   CMD="distill --teacher bsrn-x$S --student squeezesr $REP --feat-weight 0.1 --out-weight 0.5 --teacher-cache $TCACHE/bsrn-x$S" ;;
  # Data upcycling: the training images plus BSRN's upscale of each one's centre (research/upcycle.py).
  rep-up)        CMD="train --arch squeezesr $REP --data $UP" ;;
  rep-bsrn-o-up) CMD="distill --teacher bsrn-x$S --student squeezesr $REP --feat-weight 0 --out-weight 0.5 --teacher-cache $TCACHE/bsrn-x$S --data $UP" ;;
  *) echo "arm: twin rep-twin imdn-o rep-imdn-o bsrn-o rep-bsrn-o rep-bsrn-fo rep-up rep-bsrn-o-up" >&2; exit 2 ;;
esac
if [[ $ARM == *-up ]] && [ ! -f "$UP/provenance.json" ]; then
  ${PYTHON:-.venv/bin/python} research/upcycle.py --teacher "bsrn-x$S" --data "$DATA" --out "$UP"
fi
OUT=runs/a$S-$ARM
[ "$SEED" = 5 ] || OUT=$OUT-seed$SEED
START=$(date +%s)
for N in $STAGES; do
  if [ -f "$OUT/state.pt" ] && python3 -c "import json,sys; l=[json.loads(x) for x in open('$OUT/log.jsonl') if x.strip()]; sys.exit(0 if any(r.get('event')=='val' and r['step']>=$N for r in l) else 1)" 2>/dev/null; then
    continue  # this stage is done
  fi
  T=()
  if [ -n "$LIMIT" ]; then
    LEFT=$(( LIMIT - ($(date +%s) - START) ))
    [ "$LEFT" -le 60 ] && exit 0
    T=(--time-limit "$LEFT")
  fi
  # shellcheck disable=SC2086
  $SRKD $CMD $C --steps "$N" --out "$OUT" --resume "${T[@]}"
  python3 -c "import json,sys; l=[json.loads(x) for x in open('$OUT/log.jsonl') if x.strip()]; sys.exit(0 if any(r.get('event')=='val' and r['step']>=$N for r in l) else 1)" || exit 0
done
