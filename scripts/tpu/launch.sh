#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Start `python -m jsoft.train` on every worker of a TPU VM, in the background (nohup), one log per worker.
#
#   launch.sh [--dry-run] NAME ZONE --config CONFIG --workdir WORKDIR [--run RUN] [--env KEY=VALUE]...
#             [--no-distributed] [-- TRAIN_ARGS...]
#
#   --config CONFIG    a config file of the checkout install.sh shipped, e.g. configs/ptuning_v2_sst2.py
#   --workdir WORKDIR  relative (to ~/jsoft), ~/..., absolute, or gs://BUCKET/... (needs install.sh --gcsfuse
#                      BUCKET). A multi-host slice needs a workdir every host sees: use gs://.
#   --run RUN          name of the run's log and pid files (default: the workdir's last component)
#   --env KEY=VALUE    extra environment for the run (e.g. HF_TOKEN=..., LIBTPU_INIT_ARGS=...); repeatable
#   --no-distributed   do not set JSOFT_DISTRIBUTED=1 (by default jsoft.train calls jax.distributed.initialize(),
#                      which finds the other hosts of the slice by itself on TPU VMs)
#   TRAIN_ARGS         passed on, e.g. --config.train.num_steps=1000
#
# Logs: ~/jsoft-logs/RUN.log on each worker (latest.log points to the last run); see logs.sh, stop.sh.
# Rerunning the same command resumes the run from its workdir.
#
#   launch.sh my-v4 us-central2-b --config configs/ptuning_v2_sst2.py --workdir runs/sst2
#   launch.sh my-v5e us-west4-a --config configs/prompt_tuning_imdb.py --workdir gs://my-bucket/imdb
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

take_dry_run "$@"
for a in ${REST[@]+"${REST[@]}"}; do
  [[ "$a" == -- ]] && break
  [[ "$a" == -h || "$a" == --help ]] && { usage_from_header "$0"; exit 0; }
done
need_name_zone
set -- ${REST[@]+"${REST[@]}"}
CONFIG="" WORKDIR="" RUN="" DIST=1
ENVS=()
TRAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) need_value "$1" $#; CONFIG="$2"; shift ;;
    --workdir) need_value "$1" $#; WORKDIR="$2"; shift ;;
    --run) need_value "$1" $#; RUN="$2"; shift ;;
    --env) need_value "$1" $#; [[ "$2" == *=* ]] || die "--env wants KEY=VALUE, got $2"; ENVS+=("$2"); shift ;;
    --no-distributed) DIST=0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown argument $1 (see --help; arguments for jsoft.train go after --)" ;;
  esac
  shift
done
[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
if [[ -z "$RUN" ]]; then
  RUN="${WORKDIR%/}"
  RUN="${RUN##*/}"
fi
[[ "$RUN" =~ ^[A-Za-z0-9._-]+$ ]] || die "--run $RUN: use letters, digits, '.', '_' and '-'"

src="\$HOME/$REMOTE_DIR"
logs="\$HOME/$LOG_DIR"
wd="$(remote_path "$WORKDIR")"
envs="PYTHONUNBUFFERED=1"
[[ "$DIST" == 1 ]] && envs+=" JSOFT_DISTRIBUTED=1"
for e in ${ENVS[@]+"${ENVS[@]}"}; do envs+=" $(q "$e")"; done
cmd="\$HOME/$VENV/bin/python -m jsoft.train --config $(q "$CONFIG") --workdir $wd"
for a in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do cmd+=" $(q "$a")"; done

# On each worker: refuse to start twice, then detach the run from the ssh session (setsid + nohup, all
# three standard streams redirected) so that ssh returns at once; its pid is also its process group.
pid="$logs/$RUN.pid"
add "set -euo pipefail"
add "mkdir -p $logs && cd $src"
case "$WORKDIR" in
  gs://*) add "mountpoint -q $(gcs_mount "$WORKDIR") || { echo \"\$(hostname): $(gcs_mount "$WORKDIR") is not mounted; run install.sh --gcsfuse $(gcs_bucket "$WORKDIR")\" >&2; exit 1; }" ;;
esac
add "if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then"
add "  echo \"\$(hostname): run $RUN is already running (pid \$(cat $pid)); stop.sh it first\" >&2; exit 1"
add "fi"
add "env $envs setsid nohup $cmd > $logs/$RUN.log 2>&1 < /dev/null &"
add "echo \$! > $pid && ln -sfn $RUN.log $logs/latest.log && ln -sfn $RUN.pid $logs/latest.pid"
add "echo \"\$(hostname): started $RUN (pid \$(cat $pid)), log $logs/$RUN.log\""
tpu_ssh "$NAME" "$ZONE" all "$REMOTE"
