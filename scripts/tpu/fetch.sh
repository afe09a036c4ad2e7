#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Copy a run's exported PEFT adapter from worker 0 (or from GCS) to this machine, optionally exporting it first.
#
#   fetch.sh [--dry-run] NAME ZONE --workdir WORKDIR [--export [--best | --step N]] [--adapter DIR] [--out LOCAL]
#
#   --workdir   the run's workdir, as given to launch.sh
#   --export    first run `python -m jsoft.export` on worker 0 (on its CPU: the TPU may still be training),
#               writing WORKDIR/adapter; --best exports the best evaluated step, --step N that step,
#               default the latest
#   --adapter   the adapter directory on the workers (default WORKDIR/adapter)
#   --out       local destination (default ./NAME-RUN-adapter, RUN = the workdir's last component)
#
#   fetch.sh my-v4 us-central2-b --workdir runs/sst2 --export --best
#   fetch.sh my-v5e us-west4-a --workdir gs://my-bucket/imdb --export --out imdb-adapter
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

take_dry_run "$@"
for a in ${REST[@]+"${REST[@]}"}; do [[ "$a" == -h || "$a" == --help ]] && { usage_from_header "$0"; exit 0; }; done
need_name_zone
set -- ${REST[@]+"${REST[@]}"}
WORKDIR="" EXPORT=0 WHICH=() ADAPTER="" OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workdir) need_value "$1" $#; WORKDIR="$2"; shift ;;
    --export) EXPORT=1 ;;
    --best) WHICH=(--best) ;;
    --step) need_value "$1" $#; WHICH=(--step "$2"); shift ;;
    --adapter) need_value "$1" $#; ADAPTER="$2"; shift ;;
    --out) need_value "$1" $#; OUT="$2"; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ ${#WHICH[@]} -eq 0 || "$EXPORT" == 1 ]] || die "--best/--step go with --export"
WORKDIR="${WORKDIR%/}"
[[ -n "$ADAPTER" ]] || ADAPTER="$WORKDIR/adapter"
if [[ -z "$OUT" ]]; then
  OUT="$NAME-${WORKDIR##*/}-adapter"
fi

if [[ "$EXPORT" == 1 ]]; then
  remote="cd \$HOME/$REMOTE_DIR && JAX_PLATFORMS=cpu \$HOME/$VENV/bin/python -m jsoft.export"
  remote+=" --workdir $(remote_path "$WORKDIR") --out $(remote_path "$ADAPTER")"
  for a in ${WHICH[@]+"${WHICH[@]}"}; do remote+=" $(q "$a")"; done
  tpu_ssh "$NAME" "$ZONE" 0 "$remote"
fi
if [[ -e "$OUT" && "$DRY_RUN" != 1 ]]; then
  die "$OUT exists; remove it or give --out"
fi
case "$ADAPTER" in
  gs://*)
    if [[ -n "${PROJECT:-}" ]]; then
      run "$GCLOUD" storage cp -r "$ADAPTER" "$OUT" --project="$PROJECT"
    else
      run "$GCLOUD" storage cp -r "$ADAPTER" "$OUT"
    fi ;;
  *) tpu_scp "$NAME" "$ZONE" 0 "$NAME:$(scp_path "$ADAPTER")" "$OUT" ;;
esac
[[ "$DRY_RUN" == 1 ]] || echo "adapter in $OUT (load it with peft.PeftModel.from_pretrained(base, \"$OUT\"))" >&2
