# Shared by the image scripts (source it): packing a dynamically linked binary into a
# root file system for `docker import`, with no base image.

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
