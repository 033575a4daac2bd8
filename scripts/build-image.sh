#!/usr/bin/env bash
# Builds a ratelimitd image with no image registry, equivalent to the Dockerfile's: the
# binary and the libraries `ldd` lists, CA certificates, a nonroot user (65532) and no
# shell, packed with `docker import`.
# Usage: scripts/build-image.sh [BINARY] [NAME:TAG]
#   BINARY defaults to target/release/ratelimitd (built if missing); NAME:TAG to ratelimitd:local.
# The tests use the debug binary they already built: scripts/build-image.sh target/debug/ratelimitd ratelimitd-test:local
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

binary="${1:-target/release/ratelimitd}"
image="${2:-ratelimitd:local}"
if [ ! -x "$binary" ]; then
  [ "$binary" = target/release/ratelimitd ] || { echo "build-image: $binary does not exist" >&2; exit 1; }
  cargo build --release --locked --bin ratelimitd
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
pack_binary "$binary" "$root" ratelimitd
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
chown 65532:65532 "$root/home/nonroot"

tar -C "$root" -c . | docker import \
  --change 'USER 65532:65532' \
  --change 'EXPOSE 50051/tcp' \
  --change 'EXPOSE 9090/tcp' \
  --change 'ENTRYPOINT ["/usr/local/bin/ratelimitd"]' \
  - "$image" >/dev/null
echo "build-image: built $image from $binary"
