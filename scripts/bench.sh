#!/usr/bin/env bash
# Reproduces the figures of BENCHMARKS.md on this machine, in one run: starts its own
# Redis container on loopback (the locally built image), a release ratelimitd on it,
# and runs ratelimitd-bench, the Redis ceiling (scripts/redis-ceiling.sh) and the
# Limitador comparison (benches/store-compare) one after another against that Redis.
# Traffic goes only to loopback and to the container this script started.
#
# Usage: scripts/bench.sh [--quick] [--no-limitador] [results-dir]   (default target/bench-results)
set -euo pipefail
cd "$(dirname "$0")/.."

duration=20s requests=400000 limitador=1 out=target/bench-results
for arg in "$@"; do
  case "$arg" in
    --quick) duration=5s requests=100000 ;;
    --no-limitador) limitador=0 ;;
    -*) sed -n '2,9p' "$0" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
mkdir -p "$out"

cargo build --release --bins
if [ "$limitador" = 1 ]; then
  # Limitador's crate builds RocksDB, whose bindings need libclang.
  if ! command -v clang >/dev/null 2>&1; then
    echo "bench.sh: installing clang and libclang-dev (Limitador's RocksDB dependency needs them)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev clang >/dev/null
  fi
  cargo build --release -p store-compare
fi
scripts/build-redis-image.sh

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port) metrics_port=$(free_port)
container=ratelimitd-bench-redis-$$
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  docker rm -f "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# Reached at the container's own address: a published port goes through docker-proxy,
# which copies every byte in user space and caps any client near 20k requests/s here.
docker run -d --rm --name "$container" ratelimitd-test-redis:7 >/dev/null
redis_host=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$container")
redis_url="redis://$redis_host:6379"
rcli() { redis-cli -h "$redis_host" "$@"; }
until rcli PING >/dev/null 2>&1; do sleep 0.1; done

# A generous Redis deadline: the benchmark measures the Redis path, and on a saturated
# 2-core machine queueing alone can pass the 10 ms default (a fallback would then answer).
start_server() { # limit
  [ -n "$server_pid" ] && { kill "$server_pid"; wait "$server_pid" || true; }
  rcli FLUSHALL >/dev/null
  target/release/ratelimitd --listen "127.0.0.1:$grpc_port" --metrics-listen "127.0.0.1:$metrics_port" \
    --redis-url "$redis_url" --fingerprint-secret bench --limit "$1" --window 60s \
    --redis-timeout 500ms --failure-mode closed 2>>"$out/ratelimitd.log" &
  server_pid=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { echo "ratelimitd did not start:" >&2; tail -3 "$out/ratelimitd.log" >&2; exit 1; }
    sleep 0.1
  done
}
bench() { # name, ratelimitd-bench flags...
  local name=$1; shift
  echo "== $name: ratelimitd-bench $*"
  target/release/ratelimitd-bench --target "127.0.0.1:$grpc_port" --redis-url "$redis_url" --quiet "$@" \
    --json >"$out/$name.json" || true
  python3 - "$out/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_us"]; e = r["exactness"]
print(f'   {r["throughput_per_s"]:.0f} checks/s, p50 {l["p50"]/1000:.2f} ms, p99 {l["p99"]/1000:.2f} ms, '
      f'p99.9 {l["p999"]/1000:.2f} ms, max {l["max"]/1000:.2f} ms; {r["allowed"]} allowed, {r["denied"]} denied, '
      f'{r["errors"]} errors; exactness {"holds" if e["keys_over"] == 0 and e["wrongly_denied"] == 0 else "BROKEN"} '
      f'(worst {e["worst_max_in_window"]}/{e["worst_limit"]}); {r["redis_calls_per_check"]:.4f} Redis calls per check')
PY
}

echo "# $(date -u +%FT%TZ) on $(nproc) cores; $(rcli INFO server | grep redis_version | tr -d '\r')"
start_server 300
bench uniform-1000 --callers 64 --keys 1000 --duration "$duration"
scripts/redis-ceiling.sh -h "$redis_host" -c 64 -k 1000 -n "$requests" -l 300 | tee "$out/ceiling-300.txt"
start_server 300
bench zipf-10000 --callers 64 --keys 10000 --distribution zipf --duration "$duration"
start_server 300
bench open-15000 --callers 64 --keys 1000 --rate 15000 --duration "$duration"
start_server 300
bench hot-10x --callers 4 --keys 1 --distribution hot --rate 50 --duration "$duration"
start_server 30000
bench uniform-1000-L30000 --callers 64 --keys 1000 --duration "$duration"
rcli FLUSHALL >/dev/null
scripts/redis-ceiling.sh -h "$redis_host" -c 64 -k 1000 -n "$requests" -l 30000 | tee "$out/ceiling-30000.txt"
kill "$server_pid"; wait "$server_pid" || true; server_pid=
rcli FLUSHALL >/dev/null

if [ "$limitador" = 1 ]; then
  echo "== store level: ratelimitd vs Limitador (benches/store-compare)"
  target/release/store-compare --redis-url "$redis_url" --round "$duration" | tee "$out/store-compare.md"
fi
echo "results in $out"
