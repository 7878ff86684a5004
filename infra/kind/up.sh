#!/usr/bin/env bash
# A local kind cluster with Kubeflow Pipelines (standalone) and TensorFlow Serving for "fer":
# builds fer-train:local and fer-serve:local, creates the cluster and the node directories of
# its volumes, loads the images into the node, installs KFP, creates the pipeline's volumes
# (infra/storage/local), deploys infra/serving/overlays/local and copies the newest local model
# version into the models volume. Re-running it reuses the cluster. Run from anywhere:
#   bash infra/kind/up.sh
#
# Environment (defaults):
#   CLUSTER_NAME=fer            kind cluster (kubectl context kind-$CLUSTER_NAME)
#   KIND_NODE_IMAGE=kindest/node:v1.32.8@sha256:abd489f0...  Kubernetes 1.32, kind v0.30.0's image
#   PIPELINE_VERSION=2.17.0     Kubeflow Pipelines release
#   KFP_TIMEOUT=20m, SERVING_TIMEOUT=10m, SKIP_KFP=0, SKIP_BUILD=0,
#   SERVING_DIR=runs/serving, MODEL_NAME=fer   (see infra/lib.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source-path=SCRIPTDIR/../..
source infra/lib.sh

: "${CLUSTER_NAME:=fer}"
: "${KIND_NODE_IMAGE:=kindest/node:v1.32.8@sha256:abd489f042d2b644e2d033f5c2d900bc707798d075e8186cb65e3f1367a9d5a1}"
export KUBE_CONTEXT="kind-$CLUSTER_NAME"  # also for infra/copy-model.sh
NODE="$CLUSTER_NAME-control-plane"  # the node's container

need docker kind kubectl git
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is Docker running?)"

# Build first: a broken build fails in minutes, before the long cluster and KFP steps.
build_images

# (grep without -q: with pipefail, an early grep exit would fail kind with SIGPIPE.)
if kind get clusters 2>/dev/null | grep -Fx "$CLUSTER_NAME" >/dev/null; then
  log "Reusing kind cluster $CLUSTER_NAME"
else
  log "Creating kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
  kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
    --config infra/kind/cluster.yaml --wait 180s
fi
# The node is a container: docker exec runs as root on it.
make_node_dirs docker exec "$NODE"

log "Loading $TRAIN_IMAGE and $SERVE_IMAGE into the node"
kind load docker-image --name "$CLUSTER_NAME" "$TRAIN_IMAGE" "$SERVE_IMAGE"

install_kfp
deploy_pipeline_storage
deploy_serving
# kind maps localhost:8501/8500 to the Service's NodePorts (infra/kind/cluster.yaml).
print_access "http://localhost:8501" "localhost:8500"
