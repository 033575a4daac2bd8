#!/usr/bin/env bash
# The Redis ceiling: redis-benchmark running the project's own script
# (lua/sliding_window.lua) by EVALSHA against a Redis, with the concurrency and
# key distribution of the service benchmark (uniform over K keys), unpipelined and
# with -P 16. The service's throughput divided by the unpipelined figure is our
# efficiency figure. Only point it at a Redis you started for benchmarking.
#
# Usage: scripts/redis-ceiling.sh [-h host] [-p port] [-c clients] [-k keys] [-n requests] [-l limit] [-w window_ms]
set -euo pipefail
cd "$(dirname "$0")/.."

host=127.0.0.1 port=6379 clients=64 keys=1000 requests=300000 limit=300 window=60000
while getopts "h:p:c:k:n:l:w:" opt; do
  case "$opt" in
    h) host=$OPTARG ;; p) port=$OPTARG ;; c) clients=$OPTARG ;; k) keys=$OPTARG ;;
    n) requests=$OPTARG ;; l) limit=$OPTARG ;; w) window=$OPTARG ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
  esac
done

sha=$(redis-cli -h "$host" -p "$port" SCRIPT LOAD "$(cat lua/sliding_window.lua)")
# The script's arguments (see its header): Redis's clock, then one check: cost 1, consume, one window.
# redis-benchmark does not read replies: check once that the script decides such a call.
first=$(redis-cli -h "$host" -p "$port" EVALSHA "$sha" 1 "ceiling-$limit:{check}" "" "1 consume $limit $window" | head -n 1)
case "$first" in
  0 | 1) ;;
  *) echo "redis-ceiling: the script did not decide the benchmark's call: $first" >&2; exit 1 ;;
esac
for pipeline in 1 16; do
  # __rand_int__ becomes a random 12-digit number below -r: uniform over $keys keys.
  rps=$(redis-benchmark -h "$host" -p "$port" -c "$clients" -n "$requests" -r "$keys" -P "$pipeline" --csv \
    EVALSHA "$sha" 1 "ceiling-$limit:{__rand_int__}" "" "1 consume $limit $window" | tail -n 1 | cut -d'"' -f4)
  echo "redis ceiling: limit $limit, $clients clients, $keys keys, -P $pipeline: $rps EVALSHA/s"
done
