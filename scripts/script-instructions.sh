#!/usr/bin/env bash
# Redis instructions per check of two versions of the Redis script: the same calls to each,
# counted by valgrind (callgrind) in a redis-server of this machine on a Unix socket, so the
# figure does not move with the machine's load as CPU time does (scripts/script-compare.sh).
# Only the handling of the calls is counted (readQueryFromClient: reading, running and
# answering them), not Redis's timed housekeeping, whose share grows with the run's length.
# Each call is one EVALSHA of --checks N checks (default 16), each of its own key, cost 1,
# limit 300 per hour, repeated --calls N times (default 200): by default every key is at its
# limit first (every check is a denial); with --allowed every key starts empty and stays under
# its limit (every check is allowed and counted). Only the calls are counted, not the filling.
#
# Formats as for scripts/script-compare.sh: "joined", "v2" (keys <prefix>{<id>}:2, looking for
# the previous release's rings as --redis-previous-layout read does) or "v2-ignore".
# Installs Debian's valgrind and redis-tools (it carries the server) if they are missing.
#
# Usage: scripts/script-instructions.sh [--allowed] [--checks N] [--calls N] OLD.lua FORMAT NEW.lua FORMAT
set -euo pipefail
cd "$(dirname "$0")/.."

checks=16 calls=200 allowed=no
while [ $# -gt 0 ]; do
  case "$1" in
    --allowed) allowed=yes ;;
    --checks) checks=${2:?--checks needs a number}; shift ;;
    --calls) calls=${2:?--calls needs a number}; shift ;;
    -*) sed -n '2,14p' "$0" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 4 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
if [ "$allowed" = yes ] && [ "$calls" -ge 300 ]; then
  echo "script-instructions: --allowed needs --calls below the limit, 300" >&2
  exit 2
fi
for tool in valgrind redis-check-rdb; do
  if ! command -v "$tool" >/dev/null; then
    echo "script-instructions: installing Debian's ${tool/redis-check-rdb/redis-tools}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool/redis-check-rdb/redis-tools}" >/dev/null
  fi
done

work=$(mktemp -d)
trap 'redis-cli -s "$work/redis.sock" SHUTDOWN NOSAVE >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
# The server binary runs as redis-server by its name (see scripts/build-redis-image.sh).
ln -s "$(command -v redis-check-rdb)" "$work/redis-server"

# count SCRIPT FORMAT: prints the instructions per check of the calls.
count() {
  local script=$1 format=$2 first="" suffix="" pid sha
  case "$format" in
    joined) ;;
    v2) first=" previous" suffix=":2" ;;
    v2-ignore) suffix=":2" ;;
    *) echo "script-instructions: format $format is not joined, v2 or v2-ignore" >&2; exit 2 ;;
  esac
  rm -f "$work"/callgrind.*
  valgrind --tool=callgrind --instr-atstart=no --toggle-collect=readQueryFromClient --callgrind-out-file="$work/callgrind.out" \
    "$work/redis-server" --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no >"$work/log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do redis-cli -s "$work/redis.sock" PING >/dev/null 2>&1 && break; sleep 0.1; done
  sha=$(redis-cli -s "$work/redis.sock" SCRIPT LOAD "$(cat "$script")")
  python3 - "$work/redis.sock" "$sha" "$checks" "$calls" "$first" "$suffix" "$allowed" "$pid" <<'PY'
import socket, subprocess, sys
path, sha, checks, calls, first, suffix, allowed, pid = sys.argv[1:]
checks, calls = int(checks), int(calls)
keys = ["rl:{%012d}%s" % (i, suffix) for i in range(checks)]
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
replies = sock.makefile("rb")

def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)
    return reply()

def reply():
    line = replies.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        return [reply() for _ in range(int(rest))]
    if kind == b"$":
        return None if int(rest) < 0 else replies.read(int(rest) + 2)[:-2]
    if kind == b"-":
        sys.exit("script-instructions: Redis answered " + rest.decode())
    return int(rest) if kind == b":" else rest

if allowed == "no":
    for key in keys:
        command("EVALSHA", sha, "1", key, first, "300 consume 300 3600000")
call = ["EVALSHA", sha, str(checks)] + keys + [first] + ["1 consume 300 3600000"] * checks
want = 1 if allowed == "yes" else 0
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
for _ in range(calls):
    decided = command(*call)
    if decided[0] != want:
        sys.exit("script-instructions: the script did not decide as expected: %r" % decided[:3])
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
PY
  redis-cli -s "$work/redis.sock" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait "$pid" || true
  cat "$work"/callgrind.out* | awk -v n=$((calls * checks)) -v s="$script" -v f="$format" \
    '/^totals:/ { total += $2 } END { printf "%s (%s): %d instructions per check\n", s, f, total / n }'
}

echo "# Redis instructions per check, batches of $checks, $calls calls, limit 300, $([ "$allowed" = yes ] && echo allowed || echo denied)"
count "$1" "$2"
count "$3" "$4"
