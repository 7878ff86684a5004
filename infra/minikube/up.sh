#!/usr/bin/env bash
# A local minikube cluster with Kubeflow Pipelines (standalone) and TensorFlow Serving for "fer":
# builds fer-train:local and fer-serve:local, starts the cluster and creates the node
# directories of its volumes, loads the images into the node, installs KFP, creates the
# pipeline's volumes (infra/storage/local), deploys infra/serving/overlays/local and copies the
# newest local model version into the models volume. Re-running it reuses the cluster. Run from
# anywhere:  bash infra/minikube/up.sh
#
# Environment (defaults):
#   CLUSTER_NAME=fer              minikube profile (and kubectl context)
#   KUBERNETES_VERSION=v1.32.8
#   MINIKUBE_DRIVER=docker, MINIKUBE_CPUS=4, MINIKUBE_MEMORY=8g   KFP needs the room
#   PIPELINE_VERSION=2.17.0       Kubeflow Pipelines release
#   KFP_TIMEOUT=20m, SERVING_TIMEOUT=10m, SKIP_KFP=0, SKIP_BUILD=0,
#   SERVING_DIR=runs/serving, MODEL_NAME=fer   (see infra/lib.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source-path=SCRIPTDIR/../..
source infra/lib.sh

: "${CLUSTER_NAME:=fer}"
: "${KUBERNETES_VERSION:=v1.32.8}"
: "${MINIKUBE_DRIVER:=docker}"
: "${MINIKUBE_CPUS:=4}"
: "${MINIKUBE_MEMORY:=8g}"
export KUBE_CONTEXT="$CLUSTER_NAME"  # also for infra/copy-model.sh

need docker minikube kubectl git
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is Docker running?)"

# Build first: a broken build fails in minutes, before the long cluster and KFP steps.
build_images

if minikube -p "$CLUSTER_NAME" status >/dev/null 2>&1; then
  log "Reusing minikube profile $CLUSTER_NAME"
else
  log "Starting minikube profile $CLUSTER_NAME (Kubernetes $KUBERNETES_VERSION)"
  minikube start -p "$CLUSTER_NAME" --kubernetes-version="$KUBERNETES_VERSION" \
    --driver="$MINIKUBE_DRIVER" --cpus="$MINIKUBE_CPUS" --memory="$MINIKUBE_MEMORY"
fi
make_node_dirs minikube -p "$CLUSTER_NAME" ssh -- sudo
# CPU metrics for the TF Serving HorizontalPodAutoscaler.
minikube -p "$CLUSTER_NAME" addons enable metrics-server

log "Loading $TRAIN_IMAGE and $SERVE_IMAGE into the node"
minikube -p "$CLUSTER_NAME" image load "$TRAIN_IMAGE"
minikube -p "$CLUSTER_NAME" image load "$SERVE_IMAGE"

install_kfp
deploy_pipeline_storage
deploy_serving
# The node's NodePorts are not on localhost with every driver: port-forward instead.
print_access "http://localhost:8501" "localhost:8500" \
  "kubectl --context $KUBE_CONTEXT port-forward -n $NAMESPACE svc/fer-serving 8501:8501 8500:8500"
