#!/usr/bin/env bash
# Checks a built ad-event-processor image from the outside:
#   - the entrypoint is the exec-form server and the image runs as a numeric non-root user
#   - no compiler or pip in the final image
#   - the server runs the native codec (started with server.codec=native, which
#     refuses to start without it, and its start-up log says so)
#   - gRPC health is SERVING (grpc.health.v1 and HealthCheck) and /health answers 200
#   - events sent with ad-event-client are stored as JSON Lines in the mounted data dir
#   - `docker stop` during a load ends the server with exit code 0, and every event
#     it acknowledged is in the data dir (acknowledged ids vs stored lines)
# The container runs with --network host on free loopback ports and a read-only
# root filesystem (as the Helm chart runs it), so it works where no bridge network exists.
#
# usage: e2e/image_test.sh IMAGE        (env: AEP_CLIENT, the ad-event-client to use)
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:?usage: e2e/image_test.sh IMAGE}
client=${AEP_CLIENT:-.venv/bin/ad-event-client}
python=${AEP_PYTHON:-.venv/bin/python}
work=$(mktemp -d)
name="aep-image-test-$$"

fail() { echo "FAIL: $*" >&2; docker logs "$name" 2>&1 | tail -n 30 >&2 || true; exit 1; }
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
metrics_port=$(free_port)
while [ "$metrics_port" = "$grpc_port" ]; do metrics_port=$(free_port); done
server="127.0.0.1:$grpc_port"

echo "== image $image"
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image size: $((size / 1000 / 1000)) MB ($size bytes)"

entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$image")
[ "$entrypoint" = '["ad-event-processor"]' ] || fail "entrypoint is $entrypoint, want exec-form [\"ad-event-processor\"]"
user=$(docker image inspect -f '{{.Config.User}}' "$image")
[[ "$user" =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || fail "image user is '$user', want a numeric non-root uid"
for port in 8080 9464; do
  docker image inspect -f '{{json .Config.ExposedPorts}}' "$image" | grep -q "\"$port/tcp\"" \
    || fail "port $port is not exposed"
done
tools=$(docker run --rm --network none --entrypoint sh "$image" -c \
  'for t in gcc cc c++ make pip pip3; do command -v "$t"; done; ls /opt/venv/bin/pip* 2>/dev/null; true')
[ -z "$tools" ] || fail "build tools in the final image: $tools"
echo "ok: exec-form entrypoint, numeric user $user, ports 8080 and 9464 exposed, no compiler or pip"

# The data dir belongs to the image's user, as a Kubernetes fsGroup would arrange.
mkdir -p "$work/data"
chown "${user%%:*}" "$work/data"
docker run -d --name "$name" --network host --read-only --tmpfs /tmp \
  -v "$work/data:/app/data" \
  -e AEP_SERVER_HOST=127.0.0.1 -e AEP_SERVER_PORT="$grpc_port" \
  -e AEP_METRICS_HOST=127.0.0.1 -e AEP_METRICS_PORT="$metrics_port" \
  -e AEP_SERVER_CODEC=native \
  "$image" >/dev/null

deadline=$((SECONDS + 60))
until "$client" --server "$server" --mode health --connect-timeout 1 >"$work/health.txt" 2>&1; do
  [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "container exited early"
  [ $SECONDS -lt $deadline ] || fail "not SERVING within 60s: $(cat "$work/health.txt")"
  sleep 0.5
done
grep -q 'grpc_health=SERVING' "$work/health.txt" || fail "health: $(cat "$work/health.txt")"
"$python" - "$metrics_port" <<'PY' || fail "/health did not answer 200"
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=5) as response:
    assert response.status == 200, response.status
PY
echo "ok: $(cat "$work/health.txt")"
serving=$(docker logs "$name" 2>&1 | grep '"serving"' | tail -n 1)
[[ "$serving" =~ \"codec\":\ ?\"native\" ]] || fail "the start-up log does not name the native codec: $serving"
echo "ok: the native codec runs ($serving)"

pid=$(docker inspect -f '{{.State.Pid}}' "$name")
uid=$(stat -c %u "/proc/$pid")
[ "$uid" != 0 ] || fail "the server process runs as root"
cmdline=$(docker exec "$name" cat /proc/1/cmdline | tr '\0' ' ')
[[ "$cmdline" == *ad-event-processor* ]] || fail "PID 1 is '$cmdline', not the server"
echo "ok: server is PID 1 ($cmdline) running as uid $uid"

"$client" --server "$server" --mode batch --events 500 --batch 100 --quiet \
  --ids-out "$work/ids-batch.txt" >/dev/null || fail "batch ingest failed"

# Load in the background, then stop the container in the middle of it (300,000 events
# were nearly all sent within the 3 s once; what is left after the stop fails fast).
"$client" --server "$server" --mode load --events 1500000 --batch 50 --concurrent 4 \
  --timeout 5 --quiet --ids-out "$work/ids-load.txt" >"$work/load.txt" 2>&1 &
load_pid=$!
sleep 3
kill -0 "$load_pid" 2>/dev/null || fail "the load ended before docker stop; raise --events"
started=$SECONDS
docker stop -t 60 "$name" >/dev/null
echo "docker stop took $((SECONDS - started))s"
wait "$load_pid" || true  # RPCs after the stop fail: that is expected
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$exit_code" = 0 ] || fail "server exit code $exit_code after docker stop (want 0: drained, nothing lost)"
docker logs "$name" 2>&1 | grep '"stopped"' | tail -n 1

"$python" - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
acked = []
for name in ("ids-batch.txt", "ids-load.txt"):
    acked += (work / name).read_text().split()
stored = []
for path in sorted((work / "data" / "events").glob("*.jsonl")):
    stored += [json.loads(line)["event_id"] for line in path.read_bytes().splitlines()]
missing = set(acked) - set(stored)
print(f"acknowledged {len(acked)} events, stored {len(stored)} lines "
      f"({len(set(stored))} distinct), acknowledged but not stored: {len(missing)}")
assert len(acked) > 500, "the load acknowledged nothing before the stop"
assert not missing, f"lost acknowledged events, e.g. {sorted(missing)[:5]}"
assert len(stored) == len(set(stored)), "an event_id is stored twice"
PY
echo "PASS: image $image"
