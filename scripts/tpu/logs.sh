#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Show the log of a run: follow worker 0, or the last lines of every worker (each line prefixed by its host).
#
#   logs.sh [--dry-run] NAME ZONE [--worker N|all] [--run RUN] [-n LINES] [--follow|--no-follow]
#
#   --worker    0 (default), another worker's index, or all
#   --run       the run (launch.sh --run; default: the latest run on each worker)
#   -n LINES    lines of history (default 50)
#   --follow    keep following (the default for one worker; with all, the outputs interleave)
#
#   logs.sh my-v4 us-central2-b
#   logs.sh my-v5e us-west4-a --worker all -n 5
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

take_dry_run "$@"
for a in ${REST[@]+"${REST[@]}"}; do [[ "$a" == -h || "$a" == --help ]] && { usage_from_header "$0"; exit 0; }; done
need_name_zone
set -- ${REST[@]+"${REST[@]}"}
WORKER=0 RUN=latest LINES=50 FOLLOW=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --worker) need_value "$1" $#; WORKER="$2"; shift ;;
    --run) need_value "$1" $#; RUN="$2"; shift ;;
    -n) need_value "$1" $#; LINES="$2"; shift ;;
    --follow) FOLLOW=1 ;;
    --no-follow) FOLLOW=0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker wants a number or all, got $WORKER"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "-n wants a number, got $LINES"
[[ -n "$FOLLOW" ]] || { [[ "$WORKER" == all ]] && FOLLOW=0 || FOLLOW=1; }

log="\$HOME/$LOG_DIR/$(q "$RUN").log"
tail_cmd="tail -n $LINES"
[[ "$FOLLOW" == 1 ]] && tail_cmd+=" -F"
if [[ "$WORKER" == all ]]; then
  remote="$tail_cmd $log 2>&1 | sed -u \"s/^/[\$(hostname)] /\""
else
  remote="$tail_cmd $log"
fi
tpu_ssh "$NAME" "$ZONE" "$WORKER" "$remote"
