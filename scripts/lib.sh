# Shared by the scripts (source it): packing a dynamically linked binary into a root file
# system for `docker import`, with no base image; starting a benchmark Redis container;
# reading a process's CPU time.

# pack_binary BINARY ROOT NAME: copies BINARY (dereferenced) to ROOT/usr/local/bin/NAME,
# with every shared library `ldd` lists and the dynamic loader, at their own paths.
pack_binary() {
  local binary=$1 root=$2 name=$3 lib
  mkdir -p "$root/usr/local/bin"
  cp -L "$binary" "$root/usr/local/bin/$name"
  ldd "$binary" | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# start_bench_redis NAME: starts a container NAME of the locally built Redis image, waits
# until it answers, and sets redis_host (its own address) and redis_pid (its process on this
# host, for cpu_ticks). Reached at its own address, not a published port: a published port
# goes through docker-proxy, which copies every byte in user space and caps any client near
# 20k requests/s here. Fails if Redis does not answer within 30 s. The caller removes the
# container (docker rm -f NAME).
start_bench_redis() {
  local tries=0
  docker run -d --rm --name "$1" ratelimitd-test-redis:7 >/dev/null
  redis_host=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1")
  redis_pid=$(docker inspect -f '{{.State.Pid}}' "$1")
  until redis-cli -h "$redis_host" PING >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 300 ]; then
      echo "start_bench_redis: Redis in container $1 ($redis_host) did not answer PING within 30 s" >&2
      return 1
    fi
    sleep 0.1
  done
}

# cpu_ticks PID: CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
