# Sourced by the research scripts (from the repository root): what their runs share.
#
# HELD_OUT: the training data and its held-out validation slice. The slice is 10 images spread over
# the --data folders in the order given, so every run that is to be compared must list them alike;
# Set5 is only a monitor.
HELD_OUT=(--data ../shared/data/train/t91 --data ../shared/data/train/bsd200 --val-split 10
          --val ../shared/data/benchmark/Set5)

# run_arms ARM[,ARM...] [TIME_LIMIT_S] calls the script's run_arm ARM [--time-limit S] for each arm
# in turn (a finished run says so and is skipped), the arms sharing the time limit.
run_arms() {
  local arms=$1 limit=${2:-} end left arm list
  end=$(( $(date +%s) + ${limit:-0} ))
  IFS=, read -ra list <<< "$arms"
  for arm in "${list[@]}"; do
    if [ -z "$limit" ]; then run_arm "$arm"; continue; fi
    left=$(( end - $(date +%s) ))
    (( left > 60 )) || { echo "time limit reached before arm $arm" >&2; return 0; }
    run_arm "$arm" --time-limit "$left"
  done
}
