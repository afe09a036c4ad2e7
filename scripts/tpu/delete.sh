#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Delete a TPU VM (and its queued resource, if it was created with create.sh --queued). Unrecoverable:
# fetch.sh what you need first (workdirs on the VMs' disks go with them; gs:// workdirs stay).
#
#   delete.sh [--dry-run] NAME ZONE [--queued | --node] [--async]
#
#   --queued   delete the queued resource NAME and its node (queued-resources delete --force)
#   --node     delete the TPU VM only (tpu-vm delete)
#   (neither)  ask gcloud whether a queued resource NAME exists and do the right one (--node in --dry-run)
#   --async    return without waiting for the deletion
#
#   delete.sh my-v4 us-central2-b
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

take_dry_run "$@"
for a in ${REST[@]+"${REST[@]}"}; do [[ "$a" == -h || "$a" == --help ]] && { usage_from_header "$0"; exit 0; }; done
need_name_zone
set -- ${REST[@]+"${REST[@]}"}
KIND="" ASYNC=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --queued) KIND=queued ;;
    --node) KIND=node ;;
    --async) ASYNC=(--async) ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
if [[ -z "$KIND" ]]; then
  KIND=node
  if [[ "$DRY_RUN" != 1 ]] && gc_tpus queued-resources describe "$NAME" --zone="$ZONE" --format='value(name)' \
    >/dev/null 2>&1; then
    KIND=queued
  fi
fi
if [[ "$KIND" == queued ]]; then
  gc_tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet ${ASYNC[@]+"${ASYNC[@]}"}
else
  gc_tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet ${ASYNC[@]+"${ASYNC[@]}"}
fi
