#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Create a Cloud TPU VM (one host or a multi-host slice) for jsoft.
#
#   create.sh [--dry-run] NAME ZONE ACCELERATOR_TYPE [RUNTIME_VERSION] [--spot] [--queued [--wait]]
#             [-- EXTRA_GCLOUD_FLAGS...]
#
#   ACCELERATOR_TYPE   v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v6e-8, ...
#   RUNTIME_VERSION    default by family: v2/v3/v4/v5p -> tpu-ubuntu2204-base, v5litepod -> v2-alpha-tpuv5-lite,
#                      v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e
#   --spot             Spot capacity (cheaper, can be preempted; jsoft.train resumes from its workdir)
#   --queued           request it as a queued resource (`queued-resources create --node-id NAME`), the way
#                      to get v5e/v6e/Spot capacity in many zones; --wait polls until it is ACTIVE
#
#   create.sh my-v4 us-central2-b v4-8 --spot
#   create.sh my-v5e us-west4-a v5litepod-16 --queued --spot --wait
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

take_dry_run "$@"
for a in ${REST[@]+"${REST[@]}"}; do [[ "$a" == -h || "$a" == --help ]] && { usage_from_header "$0"; exit 0; }; done
need_name_zone
set -- ${REST[@]+"${REST[@]}"}
[[ $# -ge 1 && "$1" != -* ]] || die "ACCELERATOR_TYPE is required (e.g. v4-8, v5litepod-16)"
TYPE="$1"
shift
VERSION=""
if [[ $# -ge 1 && "$1" != -* ]]; then
  VERSION="$1"
  shift
fi
SPOT=0 QUEUED=0 WAIT=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --wait) WAIT=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$WAIT" == 0 || "$QUEUED" == 1 ]] || die "--wait goes with --queued (tpu-vm create already waits)"

if [[ -z "$VERSION" ]]; then
  case "$TYPE" in
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default runtime version for $TYPE; give RUNTIME_VERSION (gcloud compute tpus versions list --zone $ZONE)" ;;
  esac
fi

flags=(--zone="$ZONE" --accelerator-type="$TYPE")
[[ "$SPOT" == 1 ]] && flags+=(--spot)
if [[ "$QUEUED" == 1 ]]; then
  gc_tpus queued-resources create "$NAME" --node-id="$NAME" --runtime-version="$VERSION" "${flags[@]}" \
    ${EXTRA[@]+"${EXTRA[@]}"}
  if [[ "$WAIT" == 1 ]]; then
    if [[ "$DRY_RUN" == 1 ]]; then
      echo "# then poll until ACTIVE:"
      gc_tpus queued-resources describe "$NAME" --zone="$ZONE" --format='value(state.state)'
    else
      while :; do
        state="$(gc_tpus queued-resources describe "$NAME" --zone="$ZONE" --format='value(state.state)' 2>/dev/null)"
        echo "$(date +%H:%M:%S) $NAME: $state" >&2
        case "$state" in
          ACTIVE) break ;;
          FAILED | SUSPENDED) die "queued resource $NAME is $state" ;;
        esac
        sleep 30
      done
    fi
  fi
else
  gc_tpus tpu-vm create "$NAME" --version="$VERSION" "${flags[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
fi
