# Sourced by benchmarks/run_gpu.sh and scripts/studies/long_horizon_gpu.sh: named stages that
# share one time budget. The sourcing script sets `end` (the SECONDS value at which its budget
# is spent). STAGES, if set, names the stages to run (space-separated); AFTER_STAGE, if set, is
# eval'ed after every stage that ran (e.g. to archive results where only some files come back).
#
#   stage NAME CAP_S COMMAND...
# runs COMMAND for at most min(CAP_S, what is left of the budget) seconds (SIGINT, then SIGKILL
# 10 s later) and prints its status and time. Returns 1 when the stage did not run (not named
# in STAGES, or given under STAGE_MIN_S seconds, default 20), else 0 whatever COMMAND returned:
# a stage cut short or failing does not stop the next, and `stage ... && report` reports only
# after a stage that ran.
stage() {
  local name=$1 cap=$2; shift 2
  [[ -n "${STAGES:-}" && " $STAGES " != *" $name "* ]] && return 1
  local left=$((end - SECONDS)); local t=$(( cap < left ? cap : left ))
  if (( t < ${STAGE_MIN_S:-20} )); then echo "== $name: skipped, budget spent"; return 1; fi
  echo "== $name (up to ${t}s): $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$t" "$@"
  echo "== $name: rc=$? in $((SECONDS - t0))s"
  [[ -n "${AFTER_STAGE:-}" ]] && eval "$AFTER_STAGE"
  return 0
}
