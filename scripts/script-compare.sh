#!/usr/bin/env bash
# Redis CPU per check of two versions of the Redis script, alternating, in a Redis container
# this script starts (the locally built image, reached at its own address): redis-benchmark
# with 64 clients, -P 4, 16 checks per EVALSHA (--checks N: N), keys uniform over 10,000. By default every key
# is at its limit (300 per hour: every check is a denial); with --allowed each run uses fresh
# keys, 32 checks each (every check is allowed). --limit N changes the limit (default 300).
# Redis CPU comes from /proc/<pid>/stat.
#
# Each script is given with its call format: "joined" (one argument per check, since commit
# e8a2ea7), "split" (3 + 2n arguments per check, the releases before), "v2" (joined, keys
# named <prefix>{<id>}:2 as the store names them since the per-request layout, and the script
# looks for the previous release's ring as with --redis-previous-layout read, the default) or
# "v2-ignore" (the same with --redis-previous-layout ignore).
#
# Usage: scripts/script-compare.sh [--allowed] [--limit N] [--checks N] [--rounds N] OLD.lua FORMAT NEW.lua FORMAT
#   e.g. scripts/script-compare.sh <(git show a9b3b1c:lua/sliding_window.lua) split lua/sliding_window.lua joined
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

limit=300 requests=100000 rounds=3 allowed=no checks=16
while [ $# -gt 0 ]; do
  case "$1" in
    --allowed) allowed=yes requests=20000 ;;
    --limit) limit=${2:?--limit needs a number}; shift ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift ;;
    --checks) checks=${2:?--checks needs a number}; shift ;;
    -*) sed -n '2,15p' "$0" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 4 ] || { sed -n '2,15p' "$0" >&2; exit 2; }
scripts=("$(cat "$1")" "$(cat "$3")") formats=("$2" "$4")
for format in "${formats[@]}"; do
  case "$format" in joined | split | v2 | v2-ignore) ;; *) echo "script-compare: format $format is not joined, split, v2 or v2-ignore" >&2; exit 2 ;; esac
done

scripts/build-redis-image.sh >/dev/null
container=ratelimitd-script-compare-$$
trap 'docker rm -f "$container" >/dev/null 2>&1 || true' EXIT
start_bench_redis "$container"
rcli() { redis-cli -h "$redis_host" "$@"; }
shas=("$(rcli SCRIPT LOAD "${scripts[0]}")" "$(rcli SCRIPT LOAD "${scripts[1]}")")

# One check's arguments in a format: cost, consume, one window of an hour.
check_args() { # format cost
  if [ "$1" != split ]; then printf '%s\n' "$2 consume $limit 3600000"; else printf '%s\n' 1 "$2" consume "$limit" 3600000; fi
}
# Script v's first argument: the clock (Redis's), and whether to read the previous layout.
first_arg() { if [ "${formats[$1]}" = v2 ]; then echo " previous"; else echo ""; fi; }
# Script v's key for an id (redis-benchmark's __rand_int__ is 12 digits).
key_of() { # v prefix id
  local suffix=""
  case "${formats[$1]}" in v2*) suffix=":2" ;; esac
  printf '%s%s:{%s}%s' "$2" "$1" "$3" "$suffix"
}
if [ "$allowed" = no ]; then
  # Every key of each script at its limit, filled by that script, 16 keys per call.
  for v in 0 1; do
    mapfile -t fill < <(check_args "${formats[$v]}" "$limit")
    for i in $(seq 0 16 9999); do
      keys=() args=()
      for j in $(seq "$i" $((i + 15))); do keys+=("$(key_of "$v" rl "$(printf '%012d' "$j")")"); args+=("${fill[@]}"); done
      rcli EVALSHA "${shas[$v]}" 16 "${keys[@]}" "$(first_arg "$v")" "${args[@]}" >/dev/null
    done
  done
fi

echo "# Redis CPU per check, batches of $checks, $requests calls per run, limit $limit"
for round in $(seq "$rounds"); do
  for v in 0 1; do
    mapfile -t one < <(check_args "${formats[$v]}" 1)
    keys=() args=()
    prefix=rl
    [ "$allowed" = no ] || prefix="rl-$round-$v"
    for _ in $(seq "$checks"); do keys+=("$(key_of "$v" "$prefix" __rand_int__)"); args+=("${one[@]}"); done
    # redis-benchmark does not read replies: check once that the script decides such a call.
    first=$(rcli EVALSHA "${shas[$v]}" "$checks" "${keys[@]//__rand_int__/check}" "$(first_arg "$v")" "${args[@]}" | head -n 1)
    case "$first" in 0 | 1) ;; *) echo "script-compare: script $((v + 1)) did not decide the call: $first" >&2; exit 1 ;; esac
    before=$(cpu_ticks "$redis_pid")
    redis-benchmark -h "$redis_host" -c 64 -n "$requests" -r 10000 -P 4 EVALSHA "${shas[$v]}" "$checks" "${keys[@]}" "$(first_arg "$v")" "${args[@]}" >/dev/null
    after=$(cpu_ticks "$redis_pid")
    # Ticks are 10 ms; $checks checks per call.
    python3 -c "import sys; print(f'round {sys.argv[1]}, script {sys.argv[2]}: {(int(sys.argv[4]) - int(sys.argv[3])) * 10000 / (int(sys.argv[5]) * int(sys.argv[6])):.2f} us per check')" \
      "$round" "$((v + 1))" "$before" "$after" "$requests" "$checks"
  done
done
