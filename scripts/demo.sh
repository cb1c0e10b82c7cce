#!/bin/sh
# make demo: a local registry holding a small image built here, and strata
# pulling it. No internet needed.
set -eu
cd "$(dirname "$0")/.."
root=$(mktemp -d /tmp/strata-demo.XXXXXX)
ready="$root/registry-addr"
./bin/demo-registry --ready-file "$ready" >/dev/null &
reg=$!
trap 'kill $reg 2>/dev/null; wait $reg 2>/dev/null; rm -rf "$root"' EXIT INT TERM
i=0
while [ ! -s "$ready" ]; do
	i=$((i+1)); [ $i -gt 300 ] && { echo "demo registry did not start" >&2; exit 1; }
	kill -0 $reg 2>/dev/null || { echo "demo registry failed" >&2; exit 1; }
	sleep 0.1
done
addr=$(cat "$ready")
export STRATA_ROOT="$root/store"
echo "== registry on $addr; store in $STRATA_ROOT"
set -x
./bin/strata pull "$addr/demo/busybox:latest"
./bin/strata pull "$addr/demo/busybox:latest"
./bin/strata images
./bin/strata unpack "$addr/demo/busybox:latest" "$root/rootfs"
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
	# A container on the union filesystem, in its own namespaces.
	./bin/strata run --rm -v demo-data:/data "$addr/demo/busybox:latest" \
		sh -c 'echo "hello from $(hostname), PID $$ of $(ls /proc | grep -c "^[0-9]") processes"; id; echo kept > /data/note'
	./bin/strata run --rm -v demo-data:/data:ro "$addr/demo/busybox:latest" cat /data/note
	./bin/strata volume rm demo-data
	# A detached container, a command run inside it, its log.
	./bin/strata run -d --init --name demo-box "$addr/demo/busybox:latest" sh -c 'echo up; while :; do sleep 1; done'
	./bin/strata exec demo-box ps
	./bin/strata ps
	./bin/strata logs demo-box
	./bin/strata rm -f demo-box
	# The image as eStargz, pulled lazily: its tables of contents now, the
	# files the container reads when it reads them.
	./bin/strata convert --chunk-size 64k "$addr/demo/busybox:latest" "$addr/demo/busybox:estargz"
	./bin/strata pull "$addr/demo/busybox:estargz"
	./bin/strata run --rm --background-fetch=false "$addr/demo/busybox:estargz" cat /etc/os-release
	./bin/strata system df
fi
set +x
echo "== flattened rootfs:"
ls -la "$root/rootfs" "$root/rootfs/etc" | head -40
