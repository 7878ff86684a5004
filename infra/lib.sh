#!/usr/bin/env bash
# Steps shared by infra/kind/up.sh, infra/minikube/up.sh, infra/copy-model.sh and
# infra/copy-data.sh. Sourced from the repository root (the callers cd there), not run.
# Settings, from the environment:
#   PIPELINE_VERSION=2.17.0   Kubeflow Pipelines release (standalone, platform-agnostic manifests)
#   KFP_TIMEOUT=20m           how long to wait for the KFP deployments
#   SERVING_TIMEOUT=10m       how long to wait for TF Serving once a model is on its volume
#   SKIP_KFP=0                1: do not install Kubeflow Pipelines (the pipeline volumes are
#                             then made only if its namespace, kubeflow, is there already)
#   SKIP_BUILD=0              1: do not build the images (they must exist in the local Docker)
#   SERVING_DIR=runs/serving  where `fer-pipeline run` deploys versions (relative to the repo root)
#   MODEL_NAME=fer            model name (the one models.config serves)
#   NAMESPACE=fer-serving     namespace of the TF Serving manifests
#   KUBE_CONTEXT              kubectl context (the up scripts set it; default: the current one)
#   HELPER_IMAGE=busybox:1.37.0  image of the copy scripts' helper pods (needs sh and tar)
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
: "${HELPER_IMAGE:=busybox:1.37.0}"

KFP_MANIFESTS="github.com/kubeflow/pipelines/manifests/kustomize"
TRAIN_IMAGE="fer-train:local"
SERVE_IMAGE="fer-serve:local"
SERVING_OVERLAY="infra/serving/overlays/local"
# The pipeline's volumes in namespace kubeflow (fer-data, fer-models), for `--volume`.
PIPELINE_STORAGE="infra/storage/local"
PIPELINE_NAMESPACE="kubeflow"
# The node directories behind the local volumes (hostPath PersistentVolumes: the paths in
# infra/storage/local/persistentvolumes.yaml and infra/serving/overlays/local/pv.yaml). Under
# /data because minikube keeps /data across restarts with every driver; kind keeps the node's
# whole filesystem until the cluster is deleted.
NODE_DATA_DIR="/data/fer/data"
NODE_MODELS_DIR="/data/fer/models"

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

# make_node_dirs COMMAND...: create the node directories of the hostPath volumes, COMMAND being
# how to run a command as root on the node (kind: docker exec NODE; minikube: minikube ssh --
# sudo). Mode 0777: the pipeline's tasks and the copy scripts' helper pods write there and TF
# Serving reads there, all as uid 1000, which owns nothing on the node. Done here rather than
# by the volumes (hostPath type DirectoryOrCreate would make them root's, mode 0755, which uid
# 1000 cannot write); the volumes say type Directory, so a pod fails to start, visibly, if the
# directories are missing. Idempotent: existing files are kept.
make_node_dirs() {
  log "Creating the volumes' node directories $NODE_DATA_DIR and $NODE_MODELS_DIR"
  "$@" mkdir -p "$NODE_DATA_DIR" "$NODE_MODELS_DIR"
  "$@" chmod 0777 "$NODE_DATA_DIR" "$NODE_MODELS_DIR"
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

# The pipeline's volumes, fer-data and fer-models, in namespace kubeflow (which the KFP install
# creates). With SKIP_KFP=1 they are applied if KFP is already there (an earlier up.sh run),
# and skipped otherwise: without KFP nothing would mount them.
deploy_pipeline_storage() {
  if [[ "$SKIP_KFP" == 1 ]] && ! kc get namespace "$PIPELINE_NAMESPACE" >/dev/null 2>&1; then
    log "No namespace $PIPELINE_NAMESPACE (SKIP_KFP=1):" \
      "not creating the pipeline volumes ($PIPELINE_STORAGE)"
    return
  fi
  log "Creating the pipeline volumes fer-data and fer-models in namespace" \
    "$PIPELINE_NAMESPACE ($PIPELINE_STORAGE)"
  kc apply -k "$PIPELINE_STORAGE"
  PIPELINE_VOLUMES=1
}

# TF Serving from the local overlay. Its pod turns ready only once a version is on the volume, so
# the newest local version (if any) is copied in first and the rollout is awaited after.
deploy_serving() {
  log "Deploying TensorFlow Serving ($SERVING_OVERLAY)"
  kc apply -k "$SERVING_OVERLAY"
  local version
  version="$(latest_version)"
  if [[ -z "$version" ]]; then
    log "No model under $SERVING_DIR/$MODEL_NAME yet: TF Serving waits for one. A pipeline run" \
      "on the cluster deploys one (below), or make one here and copy it in:"
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
  if [[ "${PIPELINE_VOLUMES:-0}" != 1 ]]; then
    printf 'No Kubeflow Pipelines (SKIP_KFP=1): TF Serving only.\n\n'
  else
    printf 'Copy FER2013 into the data volume, reach the Kubeflow Pipelines UI and API on\n'
    printf 'http://localhost:8080, and run the pipeline on %s (smoke profile, CPU):\n' "$TRAIN_IMAGE"
    printf '  KUBE_CONTEXT=%s bash infra/copy-data.sh ../shared/fer2013\n' "$KUBE_CONTEXT"
    printf '  kubectl --context %s port-forward -n kubeflow svc/ml-pipeline-ui 8080:80 &\n' \
      "$KUBE_CONTEXT"
    printf '  .venv/bin/fer-pipeline submit --host http://localhost:8080 --experiment fer --wait'
    printf ' \\\n      --profile smoke --image %s --gpus 0 --train-cpu 1 --train-memory 4G \\\n' \
      "$TRAIN_IMAGE"
    printf '      --volume fer-data:/data --volume fer-models:/models \\\n'
    printf '      --source /data/fer2013 --serving-base /models\n\n'
  fi
  printf 'TensorFlow Serving, model "%s":\n' "$MODEL_NAME"
  if [[ -n "$reach" ]]; then
    printf '  %s\n' "$reach"
  fi
  printf '  REST  %s/v1/models/%s  (predict: POST %s/v1/models/%s:predict)\n' \
    "$rest" "$MODEL_NAME" "$rest" "$MODEL_NAME"
  printf '  gRPC  %s\n' "$grpc"
  printf 'Copy a new local version in: KUBE_CONTEXT=%s infra/copy-model.sh [VERSION]\n' "$KUBE_CONTEXT"
}

# start_helper_pod NAMESPACE POD CLAIM MOUNT_PATH: a short-lived pod (sleep, uid 1000 like TF
# Serving and the pipeline's tasks, "restricted" pod security) with the PersistentVolumeClaim
# CLAIM mounted read-write at MOUNT_PATH, for kubectl cp / kubectl exec. One left over by an
# interrupted run is replaced. The caller deletes it (delete_helper_pod, from an EXIT trap).
start_helper_pod() {
  local namespace="$1" pod="$2" claim="$3" mount="$4"
  log "Starting helper pod $namespace/$pod with PVC $claim at $mount"
  kc -n "$namespace" delete pod "$pod" --ignore-not-found >/dev/null
  kc -n "$namespace" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  labels:
    app.kubernetes.io/name: $pod
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
        - name: volume
          mountPath: $mount
  volumes:
    - name: volume
      persistentVolumeClaim:
        claimName: $claim
YAML
  # A hostPath volume whose node directory is missing keeps the pod in ContainerCreating.
  kc -n "$namespace" wait --for=condition=Ready "pod/$pod" --timeout=180s \
    || die "helper pod $namespace/$pod did not start: kubectl -n $namespace describe pod $pod" \
           "(a missing node directory? run infra/kind/up.sh or infra/minikube/up.sh again)"
}

# delete_helper_pod NAMESPACE POD (never fails: it runs from EXIT traps).
delete_helper_pod() {
  kc -n "$1" delete pod "$2" --ignore-not-found --wait=false >/dev/null || true
}

# require_bound_pvc NAMESPACE CLAIM HINT: fail unless the claim exists and binds to its volume
# (a pre-bound claim binds within seconds of being applied).
require_bound_pvc() {
  local namespace="$1" claim="$2" hint="$3"
  kc -n "$namespace" get pvc "$claim" >/dev/null 2>&1 \
    || die "PVC $namespace/$claim not found: $hint"
  kc -n "$namespace" wait --for=jsonpath='{.status.phase}'=Bound "pvc/$claim" --timeout=60s \
    || die "PVC $namespace/$claim is not Bound: kubectl -n $namespace describe pvc $claim"
}
