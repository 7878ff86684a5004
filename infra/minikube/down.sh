#!/usr/bin/env bash
# Delete the minikube profile made by infra/minikube/up.sh, with KFP, TF Serving and the
# volumes' files (the data and model versions under /data/fer on the node). The images stay in
# the local Docker. Environment: CLUSTER_NAME=fer.
set -euo pipefail

: "${CLUSTER_NAME:=fer}"

command -v minikube >/dev/null 2>&1 || { echo "error: 'minikube' is not installed" >&2; exit 1; }
minikube delete -p "$CLUSTER_NAME"
