#!/usr/bin/env bash
# Delete the kind cluster made by infra/kind/up.sh, with KFP, TF Serving and the volumes' files
# (the data and model versions under /data/fer on the node). The images stay in the local
# Docker. Environment: CLUSTER_NAME=fer.
set -euo pipefail

: "${CLUSTER_NAME:=fer}"

command -v kind >/dev/null 2>&1 || { echo "error: 'kind' is not installed" >&2; exit 1; }
kind delete cluster --name "$CLUSTER_NAME"
