#!/usr/bin/env bash
# Creates the kind cluster "aep" (k8s/kind-config.yaml) with metrics-server (for
# the HPA's CPU metric). Idempotent. Needs docker, kind and kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${AEP_KIND_CLUSTER:-aep}
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is not installed" >&2; exit 1; }
done

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "kind cluster $cluster exists"
else
  kind create cluster --name "$cluster" --config k8s/kind-config.yaml --wait 120s
fi
context="kind-$cluster"
kubectl --context "$context" apply -k k8s/metrics-server
kubectl --context "$context" -n kube-system rollout status deployment/metrics-server --timeout=180s
echo "kubectl context: $context"
