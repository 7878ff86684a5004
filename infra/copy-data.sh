#!/usr/bin/env bash
# Copy a data source from this machine into the pipeline's data volume on the local cluster
# (claim kubeflow/fer-data of infra/storage/local: the node directory /data/fer/data), where a
# run submitted with `--volume fer-data:/data` reads it:
#
#   infra/copy-data.sh [DIR]
#
# DIR (default: ../shared/fer2013, relative to the repository root; a DIR given here is relative
# to the current directory) lands at /data/<basename of DIR> on the volume: ../shared/fer2013 is
# /data/fer2013, for `fer-pipeline submit ... --source /data/fer2013`. A .zip or .csv file works
# too (/data/<file name>). It travels as one tar stream (tar here, `kubectl exec -i ... tar` in a
# short-lived helper pod that mounts the claim), into a hidden staging directory that is then
# renamed into place, so a run never reads a half-copied source. A source already on the volume
# is left alone; REPLACE=1 copies it again and swaps it in.
#
# Environment (defaults): KUBE_CONTEXT=<the current context>, PVC=fer-data, REPLACE=0,
# HELPER_IMAGE=busybox:1.37.0 (any image with sh and tar).
set -euo pipefail
source_arg="${1:-}"
if [[ -n "$source_arg" && "$source_arg" != /* ]]; then
  source_arg="$PWD/$source_arg"  # before the cd below
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR/..
source infra/lib.sh

: "${PVC:=fer-data}"
: "${REPLACE:=0}"
HELPER_POD="fer-data-copy"

need kubectl tar
src="${source_arg:-../shared/fer2013}"
[[ -e "$src" ]] || die "no data source at $src (give its directory: infra/copy-data.sh DIR)"
if [[ -d "$src" ]]; then
  src="$(cd "$src" && pwd)"
else
  src="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"
fi
parent="$(dirname "$src")"
name="$(basename "$src")"
[[ "$name" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] \
  || die "the data source's name '$name' is not a plain file name (letters, digits, . _ -)"
files="$(find "$src" -type f | wc -l | tr -d ' ')"
require_bound_pvc "$PIPELINE_NAMESPACE" "$PVC" \
  "kubectl apply -k $PIPELINE_STORAGE once Kubeflow Pipelines is installed (the up scripts do)"

trap 'delete_helper_pod "$PIPELINE_NAMESPACE" "$HELPER_POD"' EXIT
start_helper_pod "$PIPELINE_NAMESPACE" "$HELPER_POD" "$PVC" /data

k=(kc -n "$PIPELINE_NAMESPACE")
dest="/data/$name"
staging="/data/.incoming-$name"
old="/data/.replaced-$name"
if "${k[@]}" exec "$HELPER_POD" -- test -e "$dest"; then
  if [[ "$REPLACE" != 1 ]]; then
    log "$name is already on the volume ($PVC:$dest): nothing to copy (REPLACE=1 copies it again)"
    exit 0
  fi
  log "$name is already on the volume ($PVC:$dest): replacing it (REPLACE=1)"
fi
"${k[@]}" exec "$HELPER_POD" -- rm -rf "$staging" "$old"
"${k[@]}" exec "$HELPER_POD" -- mkdir -p "$staging"
log "Copying $src ($files files) to $PVC:$dest"
# One stream instead of a kubectl cp per file, of the files only: the pod's tar makes their
# directories itself, writable by its user. (Directory entries would carry their modes here,
# and busybox tar, not root, cannot write into a read-only directory it has just made, such
# as one copied from a read-only data source.) COPYFILE_DISABLE: no ._ files from macOS tar;
# -o: the files belong to the pod's user (uid 1000, as the pipeline's tasks), not to yours.
(cd "$parent" && find "$name" -type f -print0 | COPYFILE_DISABLE=1 tar --null -T - -cf -) \
  | "${k[@]}" exec -i "$HELPER_POD" -- tar -C "$staging" -xof -
"${k[@]}" exec "$HELPER_POD" -- test -e "$staging/$name" \
  || die "copy incomplete: $staging/$name is missing on the volume"
if "${k[@]}" exec "$HELPER_POD" -- test -e "$dest"; then
  "${k[@]}" exec "$HELPER_POD" -- mv "$dest" "$old"
fi
"${k[@]}" exec "$HELPER_POD" -- mv "$staging/$name" "$dest"
"${k[@]}" exec "$HELPER_POD" -- rm -rf "$staging" "$old"
log "$name is in place: submit with --volume $PVC:/data --source $dest"
