#!/usr/bin/env bash
# Issue 32: paper 2 at x2 on the CPU: srkd's 4-RSTB SwinIR-light teacher and its 1-3 RSTB students.
#
#   research/paper2_cpu.sh ARM[,ARM...] [TIME_LIMIT_S]
#
#   teacher      swinir4-srkd-x2: 4 RSTBs from scratch, L1, 16k steps (about 22 idle CPU-hours at
#                5.07 s a step, docs/performance.md); the stop rule of issue 32 is read at ~8.5k
#   probe-l1     the teacher's recipe for 1,500 steps (the probe's baseline)
#   probe-bsrn   the same 1,500 steps with output KD from bsrn-x2 (gamma 0.5, its outputs cached in
#                $RUNS/tcache-bsrn-x2): the teacher uses it only if it converges faster than probe-l1
#   s{1,2,3}-kd  a student with k RSTBs, paper 2's loss (alpha 0.75: L1 to HR, L1 to the teacher's
#                output, MSE on F1), starting from the teacher's head, first k RSTBs and tail
#   s{1,2,3}     its no-KD twin: the same start (--init cuts the teacher to k RSTBs), steps, seed and
#                patch stream, L1 only
# Batch 16, 48x48 LR patches (6x6 whole windows of 8), lr 2e-4 cosine, seed 1, bf16 (--precision
# auto), validated on 10 training images held out (--val-split), Set5 only as a monitor. The teacher
# is $TEACHER (default $RUNS/swinir-x2-teacher/best.safetensors). Runs (or resumes)
# $RUNS/swinir-x2-{ARM}; rerun the same line to continue (STEPS=N overrides the steps: a smoke run).
# One run at a time: it takes both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ARMS=${1:?arm}; LIMIT=${2:-}
SRKD=${SRKD:-.venv/bin/srkd}
RUNS=${RUNS:-runs}
TEACHER=${TEACHER:-$RUNS/swinir-x2-teacher/best.safetensors}
run_arm() {  # ARM [--time-limit S]
  local ARM=$1 CMD N=${STEPS:-4000} K; shift
  case $ARM in
    teacher) N=${STEPS:-16000}; CMD=(train --arch swinir --blocks 4) ;;
    probe-l1) N=${STEPS:-1500}; CMD=(train --arch swinir --blocks 4) ;;
    probe-bsrn) N=${STEPS:-1500}
                CMD=(distill --student swinir --student-blocks 4 --teacher bsrn-x2 --out-weight 0.5
                     --teacher-cache "$RUNS/tcache-bsrn-x2") ;;
    s1-kd|s2-kd|s3-kd) K=${ARM:1:1}
                CMD=(distill --student swinir --student-blocks "$K" --teacher "$TEACHER" --init-from-teacher --alpha 0.75) ;;
    s1|s2|s3) K=${ARM:1:1}; CMD=(train --arch swinir --blocks "$K" --init "$TEACHER") ;;
    *) echo "arm: teacher probe-l1 probe-bsrn s1-kd s2-kd s3-kd s1 s2 s3" >&2; return 2 ;;
  esac
  if [[ $ARM == s* && ! -f $TEACHER ]]; then
    echo "$TEACHER: no teacher weights (research/paper2_cpu.sh teacher, or TEACHER=FILE)" >&2; return 2
  fi
  $SRKD "${CMD[@]}" --scale 2 "${HELD_OUT[@]}" \
    --out "$RUNS/swinir-x2-$ARM" --steps "$N" --batch 16 --patch 48 \
    --lr 2e-4 --seed 1 --threads 2 --val-every 500 --ckpt-every 100 --log-every 20 --resume "$@"
}

source research/lib/runs.sh
run_arms "$ARMS" "$LIMIT"
