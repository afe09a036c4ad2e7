#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stop a run on every worker: SIGTERM to its process group (jsoft.train's own handling of SIGTERM applies),
# then SIGKILL after a grace period.
#
#   stop.sh [--dry-run] NAME ZONE [--run RUN] [--grace SECONDS]
#
#   --run     the run (launch.sh --run; default: the latest run on each worker)
#   --grace   seconds between SIGTERM and SIGKILL (default 60)
#
#   stop.sh my-v4 us-central2-b
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

take_dry_run "$@"
for a in ${REST[@]+"${REST[@]}"}; do [[ "$a" == -h || "$a" == --help ]] && { usage_from_header "$0"; exit 0; }; done
need_name_zone
set -- ${REST[@]+"${REST[@]}"}
RUN=latest GRACE=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --run) need_value "$1" $#; RUN="$2"; shift ;;
    --grace) need_value "$1" $#; GRACE="$2"; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace wants seconds, got $GRACE"

pid="\$HOME/$LOG_DIR/$(q "$RUN").pid"
add "h=\$(hostname)"
add "if [ ! -f $pid ] || ! kill -0 \"\$(cat $pid)\" 2>/dev/null; then echo \"\$h: $RUN is not running\"; exit 0; fi"
add "p=\$(cat $pid)"
add "kill -TERM -- -\$p 2>/dev/null || kill -TERM \$p"
add "for i in \$(seq $GRACE); do kill -0 \$p 2>/dev/null || break; sleep 1; done"
add "if kill -0 \$p 2>/dev/null; then kill -KILL -- -\$p 2>/dev/null || kill -KILL \$p; echo \"\$h: killed \$p\"; else echo \"\$h: stopped \$p\"; fi"
tpu_ssh "$NAME" "$ZONE" all "$REMOTE"
