#!/usr/bin/env bash
# Reproduces the figures of BENCHMARKS.md on this machine, in one run: starts its own
# Redis container on loopback (the locally built image), a release ratelimitd on it,
# and runs ratelimitd-bench, the Redis ceiling (scripts/redis-ceiling.sh) and the
# Limitador comparison (benches/store-compare) one after another against that Redis.
# Traffic goes only to loopback and to the container this script started.
#
# With --baseline BIN (a ratelimitd binary built from an earlier commit), it also runs the
# 10,000-key closed loop three times on each binary, alternating, with the same generator.
#
# Usage: scripts/bench.sh [--quick] [--no-limitador] [--baseline BIN] [results-dir]   (default target/bench-results)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

duration=20s requests=400000 limitador=1 out=target/bench-results baseline=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) duration=5s requests=100000 ;;
    --no-limitador) limitador=0 ;;
    --baseline) baseline=${2:?--baseline needs a ratelimitd binary}; shift ;;
    -*) sed -n '2,12p' "$0" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
if [ -n "$baseline" ] && [ ! -x "$baseline" ]; then
  echo "bench.sh: --baseline $baseline is not an executable ratelimitd" >&2; exit 2
fi
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
start_bench_redis "$container"
redis_url="redis://$redis_host:6379"
rcli() { redis-cli -h "$redis_host" "$@"; }

# The default flags, as users run them: each scenario prints how many checks a failure
# mode answered (there should be none) beside the exactness the generator checks.
start_server() { # limit [binary]
  [ -n "$server_pid" ] && { kill "$server_pid"; wait "$server_pid" || true; }
  rcli FLUSHALL >/dev/null
  "${2:-target/release/ratelimitd}" --listen "127.0.0.1:$grpc_port" --metrics-listen "127.0.0.1:$metrics_port" \
    --redis-url "$redis_url" --fingerprint-secret bench --limit "$1" --window 60s 2>>"$out/ratelimitd.log" &
  server_pid=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { echo "ratelimitd did not start:" >&2; tail -3 "$out/ratelimitd.log" >&2; exit 1; }
    sleep 0.1
  done
}
# Checks the running ratelimitd has sent to Redis so far (the sum of its batch-size
# histogram; empty from a build without batches).
redis_checks() {
  python3 - "$metrics_port" <<'PY'
import sys, urllib.request
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
except OSError as e:
    sys.exit(f"bench.sh: cannot read ratelimitd's metrics: {e}")
print(next((l.split()[-1] for l in text.splitlines() if l.startswith("ratelimitd_redis_batch_checks_sum")), ""))
PY
}
# Checks a failure mode has answered so far (all modes and kinds).
fallbacks() {
  python3 - "$metrics_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("ratelimitd_fallback_decisions_total"))))
PY
}
bench() { # name, ratelimitd-bench flags...
  local name=$1; shift
  echo "== $name: ratelimitd-bench $*"
  local server0 redis0 checks0 fallbacks0
  server0=$(cpu_ticks "$server_pid") redis0=$(cpu_ticks "$redis_pid") checks0=$(redis_checks) fallbacks0=$(fallbacks)
  target/release/ratelimitd-bench --target "127.0.0.1:$grpc_port" --redis-url "$redis_url" --quiet "$@" \
    --json >"$out/$name.json" || true
  python3 - "$out/$name.json" "$(( $(cpu_ticks "$server_pid") - server0 ))" "$(( $(cpu_ticks "$redis_pid") - redis0 ))" \
    "$(getconf CLK_TCK)" "$checks0" "$(redis_checks)" "$(( $(fallbacks) - fallbacks0 ))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_us"]; e = r["exactness"]
server, redis, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
calls = max(r["calls"], 1)
# Checks decided in Redis per check: script calls per check counts a batch once.
# (The metric appears with the first Redis call; a build without batches has none.)
r["redis_checks_per_check"] = (float(sys.argv[6]) - float(sys.argv[5] or 0)) / calls if sys.argv[6] else None
r["fallback_answers"] = int(sys.argv[7])
r["cpu_us_per_check"] = {"ratelimitd": server / hz * 1e6 / calls, "redis": redis / hz * 1e6 / calls,
                         "generator": r["generator_cpu_us_per_call"]}
json.dump(r, open(sys.argv[1], "w"), indent=2)
print(f'   {r["throughput_per_s"]:.0f} checks/s, p50 {l["p50"]/1000:.2f} ms, p99 {l["p99"]/1000:.2f} ms, '
      f'p99.9 {l["p999"]/1000:.2f} ms, max {l["max"]/1000:.2f} ms; {r["allowed"]} allowed, {r["denied"]} denied, '
      f'{r["errors"]} errors, {r["fallback_answers"]} answered by a failure mode; exactness {"holds" if e["keys_over"] == 0 and e["wrongly_denied"] == 0 else "BROKEN"} '
      f'(worst {e["worst_max_in_window"]}/{e["worst_limit"]}); {r["redis_calls_per_check"]:.4f} Redis script calls and '
      f'{"n/a" if r["redis_checks_per_check"] is None else format(r["redis_checks_per_check"], ".4f")} checks decided in Redis per check')
c = r["cpu_us_per_check"]
print(f'   CPU per check: ratelimitd {c["ratelimitd"]:.1f} µs, Redis {c["redis"]:.1f} µs, generator {c["generator"] or 0:.1f} µs')
PY
}

echo "# $(date -u +%FT%TZ) on $(nproc) cores; $(rcli INFO server | grep redis_version | tr -d '\r')"
# 10,000 keys at 300 per 60 s: no key reaches its limit in the run, so every check
# reaches Redis (the service-level figure). With 1,000 keys, keys reach their limit
# within seconds and the deny cache answers most checks after that.
start_server 300
bench uniform-10000 --callers 64 --keys 10000 --duration "$duration"
start_server 300
bench uniform-1000 --callers 64 --keys 1000 --duration "$duration"
scripts/redis-ceiling.sh -h "$redis_host" -c 64 -k 10000 -n "$requests" -l 300 | tee "$out/ceiling-300.txt"
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

if [ -n "$baseline" ]; then
  for round in 1 2 3; do
    start_server 300 "$baseline"
    bench "baseline-uniform-10000-round$round" --callers 64 --keys 10000 --duration "$duration"
    start_server 300
    bench "current-uniform-10000-round$round" --callers 64 --keys 10000 --duration "$duration"
  done
  kill "$server_pid"; wait "$server_pid" || true; server_pid=
  rcli FLUSHALL >/dev/null
fi

if [ "$limitador" = 1 ]; then
  echo "== store level: ratelimitd vs Limitador (benches/store-compare)"
  target/release/store-compare --redis-url "$redis_url" --round "$duration" --redis-pid "$redis_pid" | tee "$out/store-compare.md"
fi
echo "results in $out"
