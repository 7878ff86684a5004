#!/usr/bin/env bash
# Steps shared by infra/kind/up.sh, infra/minikube/up.sh and infra/copy-model.sh. Sourced from
# the repository root (the callers cd there), not run. Settings, from the environment:
#   PIPELINE_VERSION=2.17.0   Kubeflow Pipelines release (standalone, platform-agnostic manifests)
#   KFP_TIMEOUT=20m           how long to wait for the KFP deployments
#   SERVING_TIMEOUT=10m       how long to wait for TF Serving once a model is on its volume
#   SKIP_KFP=0                1: do not install Kubeflow Pipelines
#   SKIP_BUILD=0              1: do not build the images (they must exist in the local Docker)
#   SERVING_DIR=runs/serving  where `fer-pipeline run` deploys versions (relative to the repo root)
#   MODEL_NAME=fer            model name (the one models.config serves)
#   NAMESPACE=fer-serving     namespace of the TF Serving manifests
#   KUBE_CONTEXT              kubectl context (the up scripts set it; default: the current one)
set -euo pipefail

: "${PIPELINE_VERSION:=2.17.0}"
: "${KFP_TIMEOUT:=20m}"
: "${SERVING_TIMEOUT:=10m}"
: "${SKIP_KFP:=0}"
: "${SKIP_BUILD:=0}"
: "${SERVING_DIR:=runs/serving}"
: "${MODEL_NAME:=fer}"
: "${NAMESPACE:=fer-serving}"
: "${KUBE_CONTEXT:=}"

KFP_MANIFESTS="github.com/kubeflow/pipelines/manifests/kustomize"
TRAIN_IMAGE="fer-train:local"
SERVE_IMAGE="fer-serve:local"
SERVING_OVERLAY="infra/serving/overlays/local"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed (prerequisites: infra/README.md)"
  done
}

# kubectl on KUBE_CONTEXT, so nothing lands on whichever cluster happens to be current.
kc() {
  if [[ -n "$KUBE_CONTEXT" ]]; then
    kubectl --context "$KUBE_CONTEXT" "$@"
  else
    kubectl "$@"
  fi
}

# The highest numbered version directory under SERVING_DIR/MODEL_NAME (empty if none).
latest_version() {
  local best="" dir name
  for dir in "$SERVING_DIR/$MODEL_NAME"/*/; do
    name="$(basename "$dir")"
    if [[ "$name" =~ ^[0-9]+$ ]] && { [[ -z "$best" ]] || (( 10#$name > 10#$best )); }; then
      best="$name"
    fi
  done
  printf '%s' "$best"
}

build_images() {
  if [[ "$SKIP_BUILD" == 1 ]]; then
    log "Not building images (SKIP_BUILD=1): using $TRAIN_IMAGE and $SERVE_IMAGE as they are"
    return
  fi
  log "Building $TRAIN_IMAGE (pipeline components) and $SERVE_IMAGE (TF Serving)"
  docker build -f Dockerfile.train -t "$TRAIN_IMAGE" .
  docker build -f Dockerfile.serve -t "$SERVE_IMAGE" .
}

# The documented KFP standalone install: cluster-scoped resources, wait for the Application
# CRD, then the platform-agnostic environment (MySQL and object storage inside the cluster).
# kubectl fetches the manifests from GitHub (git must be installed).
install_kfp() {
  if [[ "$SKIP_KFP" == 1 ]]; then
    log "Not installing Kubeflow Pipelines (SKIP_KFP=1)"
    return
  fi
  log "Installing Kubeflow Pipelines $PIPELINE_VERSION"
  kc apply -k "$KFP_MANIFESTS/cluster-scoped-resources?ref=$PIPELINE_VERSION"
  kc wait --for condition=established --timeout=60s crd/applications.app.k8s.io
  kc apply -k "$KFP_MANIFESTS/env/platform-agnostic?ref=$PIPELINE_VERSION"
  log "Waiting for Kubeflow Pipelines to become available (up to $KFP_TIMEOUT)"
  kc -n kubeflow wait --for=condition=Available deployment --all --timeout="$KFP_TIMEOUT"
}

# TF Serving from the local overlay. Its pod turns ready only once a version is on the PVC, so
# the newest local version (if any) is copied in first and the rollout is awaited after.
deploy_serving() {
  log "Deploying TensorFlow Serving ($SERVING_OVERLAY)"
  kc apply -k "$SERVING_OVERLAY"
  local version
  version="$(latest_version)"
  if [[ -z "$version" ]]; then
    log "No model under $SERVING_DIR/$MODEL_NAME yet: TF Serving waits for one. Make one and copy it in:"
    printf '  .venv/bin/fer-pipeline run --profile smoke\n  KUBE_CONTEXT=%s infra/copy-model.sh\n' \
      "$KUBE_CONTEXT"
    return
  fi
  infra/copy-model.sh "$version"
  log "Waiting for TensorFlow Serving (up to $SERVING_TIMEOUT)"
  kc -n "$NAMESPACE" rollout status deployment/fer-serving --timeout="$SERVING_TIMEOUT"
}

# print_access REST_BASE_URL GRPC_ADDRESS [COMMAND_TO_REACH_SERVING]
print_access() {
  local rest="$1" grpc="$2" reach="${3:-}"
  printf '\nCluster ready (kubectl context %s).\n\n' "$KUBE_CONTEXT"
  printf 'Kubeflow Pipelines UI and API on http://localhost:8080:\n'
  printf '  kubectl --context %s port-forward -n kubeflow svc/ml-pipeline-ui 8080:80\n' "$KUBE_CONTEXT"
  printf 'Compile and submit the pipeline (its components run %s):\n' "$TRAIN_IMAGE"
  printf '  .venv/bin/fer-pipeline compile --image %s -o fer_pipeline.yaml\n' "$TRAIN_IMAGE"
  printf '  .venv/bin/fer-pipeline submit --host http://localhost:8080 --experiment fer --wait\n\n'
  printf 'TensorFlow Serving, model "%s":\n' "$MODEL_NAME"
  if [[ -n "$reach" ]]; then
    printf '  %s\n' "$reach"
  fi
  printf '  REST  %s/v1/models/%s  (predict: POST %s/v1/models/%s:predict)\n' \
    "$rest" "$MODEL_NAME" "$rest" "$MODEL_NAME"
  printf '  gRPC  %s\n' "$grpc"
  printf 'Copy a new local version in: KUBE_CONTEXT=%s infra/copy-model.sh [VERSION]\n' "$KUBE_CONTEXT"
}
