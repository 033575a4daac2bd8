#!/usr/bin/env bash
# Builds the Redis image the tests start through testcontainers, with no image registry:
# Debian's redis-server binary and the libraries `ldd` lists, packed with `docker import`.
# Usage: scripts/build-redis-image.sh [NAME:TAG]   (default: ratelimitd-test-redis:7)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

image="${1:-${RATELIMITD_TEST_REDIS_IMAGE:-ratelimitd-test-redis:7}}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-redis-image: $image is already present"
  exit 0
fi

# Debian's redis-tools ships the server binary as /usr/bin/redis-check-rdb (redis-server,
# when installed, is a symlink to it); argv[0] picks the mode, so it is copied
# dereferenced under the name redis-server.
server="$(command -v redis-check-rdb || true)"
if [ -z "$server" ]; then
  echo "build-redis-image: installing Debian's redis-tools (it carries the Redis server binary)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-tools >/dev/null
  server="$(command -v redis-check-rdb)"
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/data" "$root/tmp"
chmod 1777 "$root/tmp"
pack_binary "$server" "$root" redis-server
printf 'root:x:0:0:root:/root:/bin/false\nredis:x:999:999:redis:/data:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nredis:x:999:\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
chown 999:999 "$root/data"

# No persistence: a restarted container comes back empty, as the fault tests expect.
tar -C "$root" -c . | docker import \
  --change 'EXPOSE 6379/tcp' \
  --change 'USER redis' \
  --change 'WORKDIR /data' \
  --change 'CMD ["/usr/local/bin/redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]' \
  - "$image" >/dev/null
echo "build-redis-image: built $image from $("$root/usr/local/bin/redis-server" --version | cut -d' ' -f1-3)"
