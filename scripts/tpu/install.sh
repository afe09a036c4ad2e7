#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install jsoft and jax[tpu] on every worker of a TPU VM, in a Python 3.11+ virtualenv made by uv
# (TPU VM images ship Python 3.10; jsoft needs 3.11).
#
#   install.sh [--dry-run] NAME ZONE [--git URL [--ref REF]] [--jax VERSION] [--python VERSION]
#              [--extras EXTRAS] [--gcsfuse BUCKET] [--no-check]
#
#   (default)        pack this checkout (tracked and untracked, non-ignored files: your working tree,
#                    configs/ included) and scp it to ~/jsoft on every worker
#   --git URL        instead, git clone URL (at --ref, default the default branch) on every worker
#   --jax VERSION    pin jax[tpu]==VERSION (default: the newest jax[tpu])
#   --python VER     Python for the virtualenv (default 3.11)
#   --extras E       install jsoft[E] (e.g. "serve")
#   --gcsfuse BUCKET mount gs://BUCKET at ~/gcs/BUCKET on every worker, so that launch.sh and fetch.sh
#                    accept --workdir gs://BUCKET/... (a multi-host run needs a workdir all hosts share)
#   --no-check       skip the final `jax.devices()` check
#
#   install.sh my-v4 us-central2-b
#   install.sh my-v5e us-west4-a --gcsfuse my-bucket --jax 0.10.2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

take_dry_run "$@"
for a in ${REST[@]+"${REST[@]}"}; do [[ "$a" == -h || "$a" == --help ]] && { usage_from_header "$0"; exit 0; }; done
need_name_zone
set -- ${REST[@]+"${REST[@]}"}
GIT="" REF="" JAX="" PY=3.11 EXTRAS="" BUCKET="" CHECK=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --git) need_value "$1" $#; GIT="$2"; shift ;;
    --ref) need_value "$1" $#; REF="$2"; shift ;;
    --jax) need_value "$1" $#; JAX="$2"; shift ;;
    --python) need_value "$1" $#; PY="$2"; shift ;;
    --extras) need_value "$1" $#; EXTRAS="$2"; shift ;;
    --gcsfuse) need_value "$1" $#; BUCKET="${2#gs://}"; BUCKET="${BUCKET%%/*}"; shift ;;
    --no-check) CHECK=0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ -z "$REF" || -n "$GIT" ]] || die "--ref goes with --git"

src="\$HOME/$REMOTE_DIR"
venv="\$HOME/$VENV"
tarball="jsoft-src.tar.gz"
add "set -euo pipefail"

# 1. The source on every worker.
if [[ -z "$GIT" ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then
    local_tar="${TMPDIR:-/tmp}/jsoft-src.XXXXXX/$tarball"
    echo "# pack $REPO_ROOT (git ls-files -co --exclude-standard) into $local_tar"
  else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    local_tar="$tmp/$tarball"
    git -C "$REPO_ROOT" ls-files -z -co --exclude-standard | tar -C "$REPO_ROOT" --null -T - -czf "$local_tar"
    echo "packed $(tar -tzf "$local_tar" | wc -l | tr -d ' ') files into $local_tar" >&2
  fi
  tpu_scp "$NAME" "$ZONE" all "$local_tar" "$NAME:$tarball"
  add "rm -rf $src && mkdir -p $src && tar -xzf \$HOME/$tarball -C $src"
else
  add "rm -rf $src && git clone $(q "$GIT") $src"
  [[ -z "$REF" ]] || add "git -C $src checkout $(q "$REF")"
fi

# 2. uv, the virtualenv, jsoft (editable: configs/ and the code stay together) and jax[tpu].
pkg="$src"
[[ -z "$EXTRAS" ]] || pkg="${src}[$EXTRAS]"
jaxreq="jax[tpu]"
[[ -z "$JAX" ]] || jaxreq="jax[tpu]==$JAX"
add "export PATH=\$HOME/.local/bin:\$PATH"
add "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh"
add "[ -x $venv/bin/python ] || uv venv --python $(q "$PY") $venv"
add "uv pip install --python $venv/bin/python -e \"$pkg\" $(q "$jaxreq")"

# 3. Optionally gcsfuse, and the bucket mounted where launch.sh and fetch.sh look for gs:// workdirs.
if [[ -n "$BUCKET" ]]; then
  mnt="$(gcs_mount "gs://$BUCKET")"
  add "if ! command -v gcsfuse >/dev/null; then"
  add "  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
  add "  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
  add "  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse"
  add "fi"
  # Orbax commits a step by renaming its directory (gcsfuse refuses directory renames by default), and the
  # hosts of a slice must see each other's files at once (no metadata cache).
  add "mkdir -p $mnt && { mountpoint -q $mnt || gcsfuse --implicit-dirs --rename-dir-limit=1000000 --metadata-cache-ttl-secs=0 $(q "$BUCKET") $mnt; }"
fi

# 4. The check: every worker sees its TPU chips.
if [[ "$CHECK" == 1 ]]; then
  add "cd $src && $venv/bin/python - <<PY"
  add "import jax, jsoft"
  add "d = jax.devices()"
  add "print(f\"jsoft {jsoft.__version__}, jax {jax.__version__}: {jax.local_device_count()} local of {len(d)} {d[0].device_kind}\")"
  add "PY"
fi
tpu_ssh "$NAME" "$ZONE" all "$REMOTE"
