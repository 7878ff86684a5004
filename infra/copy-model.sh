#!/usr/bin/env bash
# Copy a model version from this machine into the serving PVC of the local overlay
# (infra/serving/overlays/local), through a short-lived helper pod and `kubectl cp`. TF Serving
# polls the volume and loads the version within ~10 s (--file_system_poll_wait_seconds).
#
#   infra/copy-model.sh [VERSION]
#
# VERSION is a numbered directory under $SERVING_DIR/$MODEL_NAME (default: the highest), e.g.
# runs/serving/fer/1 as written by `.venv/bin/fer-pipeline run`. It is copied to a hidden
# staging directory on the volume and then renamed into place, so TF Serving never sees a
# half-copied version (it ignores non-numeric names). A version already there is left alone.
#
# Environment (defaults): SERVING_DIR=runs/serving (relative to the repo root), MODEL_NAME=fer,
# NAMESPACE=fer-serving, PVC=fer-models, KUBE_CONTEXT=<the current context>,
# HELPER_IMAGE=busybox:1.37.0 (any image with sh and tar, which kubectl cp needs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR/..
source infra/lib.sh

: "${PVC:=fer-models}"
: "${HELPER_IMAGE:=busybox:1.37.0}"
HELPER_POD="fer-model-copy"

need kubectl
version="${1:-$(latest_version)}"
[[ -n "$version" ]] \
  || die "no version under $SERVING_DIR/$MODEL_NAME: run '.venv/bin/fer-pipeline run --profile smoke' first"
[[ "$version" =~ ^[0-9]+$ ]] || die "VERSION must be a number, got '$version'"
src="$SERVING_DIR/$MODEL_NAME/$version"
[[ -f "$src/saved_model.pb" ]] || die "no SavedModel at $src ($src/saved_model.pb is missing)"
kc -n "$NAMESPACE" get pvc "$PVC" >/dev/null \
  || die "PVC $NAMESPACE/$PVC not found: kubectl apply -k $SERVING_OVERLAY first"

cleanup() {
  kc -n "$NAMESPACE" delete pod "$HELPER_POD" --ignore-not-found --wait=false >/dev/null || true
}
trap cleanup EXIT

log "Starting helper pod $NAMESPACE/$HELPER_POD with PVC $PVC at /models"
kc -n "$NAMESPACE" delete pod "$HELPER_POD" --ignore-not-found >/dev/null  # from an interrupted run
# Same user as TF Serving (uid 1000), within the namespace's "restricted" pod security profile.
kc -n "$NAMESPACE" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $HELPER_POD
  labels:
    app.kubernetes.io/name: fer-model-copy
    app.kubernetes.io/part-of: fer-pipeline
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: copy
      image: $HELPER_IMAGE
      command: ["sleep", "3600"]
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: ["ALL"]
      resources:
        requests: {cpu: 50m, memory: 32Mi}
        limits: {cpu: 500m, memory: 256Mi}
      volumeMounts:
        - name: models
          mountPath: /models
  volumes:
    - name: models
      persistentVolumeClaim:
        claimName: $PVC
YAML
kc -n "$NAMESPACE" wait --for=condition=Ready "pod/$HELPER_POD" --timeout=180s

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
