# shellcheck shell=bash disable=SC2034,SC2088
# (SC2034: the variables are for the scripts that source this file; SC2088: "~/"* matches a literal ~/)
# Shared by scripts/tpu/*.sh (source it, do not run it): flag parsing, the dry-run switch and the gcloud
# wrappers. Every script takes NAME and ZONE first; `--dry-run` anywhere (or DRY_RUN=1) prints each gcloud
# command, shell-quoted so that it can be pasted, instead of running it.
#
# Environment: DRY_RUN=1, PROJECT (adds --project), GCLOUD (the gcloud binary), and the remote layout
# JSOFT_REMOTE_DIR (source checkout, default "jsoft"), JSOFT_VENV ("jsoft-venv"), JSOFT_LOG_DIR ("jsoft-logs"),
# JSOFT_GCS_DIR ("gcs": gcsfuse mounts), all relative to the remote $HOME. Works with bash 3.2 (macOS).

set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
GCLOUD="${GCLOUD:-gcloud}"
REMOTE_DIR="${JSOFT_REMOTE_DIR:-jsoft}"
VENV="${JSOFT_VENV:-jsoft-venv}"
LOG_DIR="${JSOFT_LOG_DIR:-jsoft-logs}"
GCS_DIR="${JSOFT_GCS_DIR:-gcs}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

die() {
  echo "error: $*" >&2
  exit 2
}

# usage_from_header FILE: the script's leading comment block, without the '#'.
usage_from_header() {
  sed -n '2,/^[^#]/{/^# shellcheck /d;/^#/s/^# \{0,1\}//p;}' "$1"
}

# take_dry_run ARGS...: sets DRY_RUN=1 if --dry-run is among ARGS; the other ARGS end up in REST.
take_dry_run() {
  REST=()
  local a
  for a in "$@"; do
    if [[ "$a" == "--dry-run" ]]; then DRY_RUN=1; else REST+=("$a"); fi
  done
}

# q STRING: STRING quoted for a bash command line (also the remote one: bash on TPU VMs); single quotes,
# so that printed commands stay readable and paste as they are.
q() {
  case "$1" in
    "" | *[!A-Za-z0-9_@%+=:,./-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
  esac
}

# run CMD ARGS...: print the command; run it unless DRY_RUN=1.
run() {
  local line="" a
  for a in "$@"; do line+="$(q "$a") "; done
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "${line% }"
  else
    echo "+ ${line% }" >&2
    "$@"
  fi
}

# gc_tpus SUBCOMMAND...: `gcloud compute tpus SUBCOMMAND...` (plus --project when PROJECT is set).
gc_tpus() {
  if [[ -n "${PROJECT:-}" ]]; then
    run "$GCLOUD" compute tpus "$@" --project="$PROJECT"
  else
    run "$GCLOUD" compute tpus "$@"
  fi
}

# tpu_ssh NAME ZONE WORKER COMMAND: run COMMAND (a bash command line) on WORKER (a number or "all").
tpu_ssh() {
  gc_tpus tpu-vm ssh "$1" --zone="$2" --worker="$3" --command="$4"
}

# tpu_scp NAME ZONE WORKER SRC... DEST: gcloud scp, recursive; prefix remote paths with "$1:" yourself.
tpu_scp() {
  local zone="$2" worker="$3"
  shift 3
  gc_tpus tpu-vm scp --recurse --zone="$zone" --worker="$worker" "$@"
}

# remote_path PATH: where a workdir lives on the workers. gs://BUCKET/P becomes the gcsfuse mount
# $HOME/$GCS_DIR/BUCKET/P (install.sh --gcsfuse BUCKET mounts it), since jsoft.train takes file paths;
# a relative path is relative to the source checkout (the directory jsoft.train runs in).
remote_path() {
  case "$1" in
    gs://*) printf '%s' "\$HOME/$GCS_DIR/$(q "${1#gs://}")" ;;
    /*) q "$1" ;;
    "~/"*) printf '%s' "\$HOME/$(q "${1#\~/}")" ;;
    *) printf '%s' "\$HOME/$REMOTE_DIR/$(q "$1")" ;;
  esac
}

# gcs_bucket gs://BUCKET/P: BUCKET. gcs_mount gs://BUCKET/P: where install.sh --gcsfuse mounts BUCKET.
gcs_bucket() {
  local b="${1#gs://}"
  printf '%s' "${b%%/*}"
}
gcs_mount() {
  printf '%s' "\$HOME/$GCS_DIR/$(gcs_bucket "$1")"
}

# scp_path PATH: the same place as remote_path, as gcloud scp wants it (relative to the remote home).
scp_path() {
  case "$1" in
    gs://*) printf '%s' "$GCS_DIR/${1#gs://}" ;;
    /*) printf '%s' "$1" ;;
    "~/"*) printf '%s' "${1#\~/}" ;;
    *) printf '%s' "$REMOTE_DIR/$1" ;;
  esac
}

# add LINE: append LINE to REMOTE, the script (one command a line) that tpu_ssh runs on the workers.
REMOTE=""
add() {
  REMOTE+="$1"$'\n'
}

# need_name_zone: the first two of REST are NAME and ZONE; they go to NAME and ZONE, the rest stays in REST.
need_name_zone() {
  [[ ${#REST[@]} -ge 2 ]] || die "NAME and ZONE are required (see --help)"
  [[ "${REST[0]}" != -* && "${REST[1]}" != -* ]] || die "NAME and ZONE come first (see --help)"
  NAME="${REST[0]}"
  ZONE="${REST[1]}"
  REST=("${REST[@]:2}")
}

# need_value FLAG ARGC: FLAG needs a value.
need_value() {
  [[ "$2" -ge 2 ]] || die "$1 needs a value"
}
