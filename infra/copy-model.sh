#!/usr/bin/env bash
# Copy a model version from this machine into the models volume of the local cluster, the one
# TF Serving serves (claim fer-serving/fer-models of infra/serving/overlays/local; the node
# directory /data/fer/models, which pipeline runs deploy to as well), through a short-lived
# helper pod and `kubectl cp`. TF Serving polls the volume and loads the version within ~10 s
# (--file_system_poll_wait_seconds).
#
#   infra/copy-model.sh [VERSION]
#
# VERSION is a numbered directory under $SERVING_DIR/$MODEL_NAME (default: the highest), e.g.
# runs/serving/fer/1 as written by `.venv/bin/fer-pipeline run`. It is copied to a hidden
# staging directory on the volume and then renamed into place, so TF Serving never sees a
# half-copied version (it ignores non-numeric names). A version already there (copied before,
# or deployed by a pipeline run on the cluster) is left alone.
#
# Environment (defaults): SERVING_DIR=runs/serving (relative to the repo root), MODEL_NAME=fer,
# NAMESPACE=fer-serving, PVC=fer-models, KUBE_CONTEXT=<the current context>,
# HELPER_IMAGE=busybox:1.37.0 (any image with sh and tar, which kubectl cp needs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR/..
source infra/lib.sh

: "${PVC:=fer-models}"
HELPER_POD="fer-model-copy"

need kubectl
version="${1:-$(latest_version)}"
[[ -n "$version" ]] \
  || die "no version under $SERVING_DIR/$MODEL_NAME: run '.venv/bin/fer-pipeline run --profile smoke' first"
[[ "$version" =~ ^[0-9]+$ ]] || die "VERSION must be a number, got '$version'"
src="$SERVING_DIR/$MODEL_NAME/$version"
[[ -f "$src/saved_model.pb" ]] || die "no SavedModel at $src ($src/saved_model.pb is missing)"
require_bound_pvc "$NAMESPACE" "$PVC" "kubectl apply -k $SERVING_OVERLAY first"

trap 'delete_helper_pod "$NAMESPACE" "$HELPER_POD"' EXIT
start_helper_pod "$NAMESPACE" "$HELPER_POD" "$PVC" /models

dest="/models/$MODEL_NAME/$version"
staging="/models/$MODEL_NAME/.incoming-$version"
if kc -n "$NAMESPACE" exec "$HELPER_POD" -- test -e "$dest"; then
  log "Version $version is already on the volume ($PVC:$dest): nothing to copy"
  exit 0
fi
kc -n "$NAMESPACE" exec "$HELPER_POD" -- rm -rf "$staging"
kc -n "$NAMESPACE" exec "$HELPER_POD" -- mkdir -p "/models/$MODEL_NAME"
log "Copying $src to $PVC:$dest"
# $staging does not exist, so kubectl cp creates it with the contents of $src.
kc -n "$NAMESPACE" cp "$src" "$HELPER_POD:$staging"
kc -n "$NAMESPACE" exec "$HELPER_POD" -- test -f "$staging/saved_model.pb" \
  || die "copy incomplete: $staging/saved_model.pb is missing on the volume"
kc -n "$NAMESPACE" exec "$HELPER_POD" -- mv "$staging" "$dest"
log "Version $version is in place; TF Serving loads it within ~10 s"
