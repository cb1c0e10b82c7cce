#!/bin/sh
# Builds the large benchmark image's layers from Debian: a debootstrap
# minbase bookworm root filesystem, split into four layer directories the
# way image builds stack content (base system, libraries, shared data,
# variable state). Cached: a second run does nothing.
#
#   bench/build-debian.sh WORKDIR   → WORKDIR/debian/layers/{1,2,3,4}
set -eu
work=${1:?usage: build-debian.sh WORKDIR}
out="$work/debian"
[ -f "$out/.done" ] && exit 0
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rm -rf "$out"
mkdir -p "$out"
echo "debootstrap --variant=minbase bookworm from $mirror (a few minutes)" >&2
debootstrap --variant=minbase --include=python3 bookworm "$out/rootfs" "$mirror" >"$out/debootstrap.log" 2>&1 || {
	tail -20 "$out/debootstrap.log" >&2; exit 1; }
rm -rf "$out/rootfs/var/cache/apt/archives/"*.deb "$out/rootfs/dev/"*
mkdir -p "$out/layers/1" "$out/layers/2/usr" "$out/layers/3/usr" "$out/layers/4"
cd "$out/rootfs"
mv usr/lib "$out/layers/2/usr/lib"
mv usr/share "$out/layers/3/usr/share"
mv var "$out/layers/4/var"
# Layer directories carry their parents' metadata so the stack flattens to
# the original tree.
for l in 2 3; do
	chown --reference=usr "$out/layers/$l/usr"
	chmod --reference=usr "$out/layers/$l/usr"
	touch -r usr "$out/layers/$l/usr"
done
for e in * .[!.]*; do
	if [ -e "$e" ] || [ -L "$e" ]; then mv "$e" "$out/layers/1/"; fi
done
cd / && rmdir "$out/rootfs"
touch "$out/.done"
