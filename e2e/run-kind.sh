#!/usr/bin/env bash
# End-to-end on kind: cluster (e2e/kind-up.sh), image build + load, helm
# install of the chart with k8s/kind-values.yaml (Prometheus and Grafana on),
# helm test, port-forwards, then the e2e suite (e2e/test_*.py) against the
# forwarded public ports. Needs docker, kind, kubectl, helm and `make deps`.
#
#   e2e/run-kind.sh            # AEP_KEEP=1 keeps the release and cluster afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${AEP_KIND_CLUSTER:-aep}
context="kind-$cluster"
namespace=${AEP_NAMESPACE:-ad-events}
release=aep
image=ad-event-processor:dev
fullname="$release-ad-event-processor"
helm=${HELM:-helm}
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "${AEP_KEEP:-0}" != 1 ]; then
    "$helm" --kube-context "$context" -n "$namespace" uninstall "$release" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

e2e/kind-up.sh
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

"$helm" --kube-context "$context" upgrade --install "$release" charts/ad-event-processor \
  --namespace "$namespace" --create-namespace \
  --values k8s/kind-values.yaml \
  --wait --timeout 5m
"$helm" --kube-context "$context" -n "$namespace" test "$release" --logs

free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
metrics_port=$(free_port)
prometheus_port=$(free_port)
# One pod for gRPC and /metrics together, so the suite reads the counters of
# the pod it sent to; Prometheus sums over all pods.
pod=$(kubectl --context "$context" -n "$namespace" get pods \
  -l app.kubernetes.io/instance="$release",app.kubernetes.io/component=server \
  --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')
kubectl --context "$context" -n "$namespace" port-forward "pod/$pod" \
  "$grpc_port:8080" "$metrics_port:9464" >/dev/null &
pids+=($!)
kubectl --context "$context" -n "$namespace" port-forward "svc/$release-prometheus" \
  "$prometheus_port:9090" >/dev/null &
pids+=($!)
for port in "$grpc_port" "$metrics_port" "$prometheus_port"; do
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
  done
done

AEP_E2E_GRPC="127.0.0.1:$grpc_port" \
AEP_E2E_METRICS="127.0.0.1:$metrics_port" \
AEP_E2E_PROMETHEUS="http://127.0.0.1:$prometheus_port" \
AEP_E2E_STORE=file \
  .venv/bin/pytest e2e -p no:cacheprovider "$@"

kubectl --context "$context" -n "$namespace" get hpa "$fullname"
