# Sourced by the research scripts: run_arms ARM[,ARM...] [TIME_LIMIT_S] calls the script's
# run_arm ARM [--time-limit S] for each arm in turn (a finished run says so and is skipped), the
# arms sharing the time limit.
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
