#!/usr/bin/env bash
# Redis CPU per check of two versions of the Redis script, alternating, in a Redis container
# this script starts (the locally built image, reached at its own address): redis-benchmark
# with 64 clients, -P 4, 16 checks per EVALSHA, keys uniform over 1,000. By default every key
# is at its limit (300 per hour: every check is a denial); with --allowed the limit is 30,000
# and each run uses fresh keys (every check is allowed). Redis CPU comes from /proc/<pid>/stat.
#
# Each script is given with its call format: "joined" (one argument per check, since commit
# e8a2ea7) or "split" (3 + 2n arguments per check, the releases before).
#
# Usage: scripts/script-compare.sh [--allowed] [--rounds N] OLD.lua FORMAT NEW.lua FORMAT
#   e.g. scripts/script-compare.sh <(git show a9b3b1c:lua/sliding_window.lua) split lua/sliding_window.lua joined
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

limit=300 requests=100000 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --allowed) limit=30000 requests=20000 ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift ;;
    -*) sed -n '2,13p' "$0" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 4 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
scripts=("$(cat "$1")" "$(cat "$3")") formats=("$2" "$4")
for format in "${formats[@]}"; do
  case "$format" in joined | split) ;; *) echo "script-compare: format $format is neither joined nor split" >&2; exit 2 ;; esac
done

scripts/build-redis-image.sh >/dev/null
container=ratelimitd-script-compare-$$
trap 'docker rm -f "$container" >/dev/null 2>&1 || true' EXIT
start_bench_redis "$container"
rcli() { redis-cli -h "$redis_host" "$@"; }
shas=("$(rcli SCRIPT LOAD "${scripts[0]}")" "$(rcli SCRIPT LOAD "${scripts[1]}")")

# One check's arguments in a format: cost, consume, one window of an hour.
check_args() { # format cost
  if [ "$1" = joined ]; then printf '%s\n' "$2 consume $limit 3600000"; else printf '%s\n' 1 "$2" consume "$limit" 3600000; fi
}
if [ "$limit" = 300 ]; then
  # Every key at its limit, filled by the first script.
  mapfile -t fill < <(check_args "${formats[0]}" 300)
  for i in $(seq 0 999); do
    rcli EVALSHA "${shas[0]}" 1 "$(printf 'rl:{%012d}' "$i")" "" "${fill[@]}" >/dev/null
  done
fi

echo "# Redis CPU per check, batches of 16, $requests calls per run, limit $limit"
for round in $(seq "$rounds"); do
  for v in 0 1; do
    mapfile -t one < <(check_args "${formats[$v]}" 1)
    keys=() args=()
    prefix=rl
    [ "$limit" = 300 ] || prefix="rl-$round-$v"
    for _ in $(seq 16); do keys+=("$prefix:{__rand_int__}"); args+=("${one[@]}"); done
    # redis-benchmark does not read replies: check once that the script decides such a call.
    first=$(rcli EVALSHA "${shas[$v]}" 16 "${keys[@]//__rand_int__/check}" "" "${args[@]}" | head -n 1)
    case "$first" in 0 | 1) ;; *) echo "script-compare: script $((v + 1)) did not decide the call: $first" >&2; exit 1 ;; esac
    before=$(cpu_ticks "$redis_pid")
    redis-benchmark -h "$redis_host" -c 64 -n "$requests" -r 1000 -P 4 EVALSHA "${shas[$v]}" 16 "${keys[@]}" "" "${args[@]}" >/dev/null
    after=$(cpu_ticks "$redis_pid")
    # Ticks are 10 ms; 16 checks per call.
    python3 -c "import sys; print(f'round {sys.argv[1]}, script {sys.argv[2]}: {(int(sys.argv[4]) - int(sys.argv[3])) * 10000 / (int(sys.argv[5]) * 16):.2f} us per check')" \
      "$round" "$((v + 1))" "$before" "$after" "$requests"
  done
done
