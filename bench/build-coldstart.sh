#!/bin/sh
# Builds the cold-start benchmark image's layers from Debian packages, as
# an image build stacks them: a debootstrap minbase bookworm; + python3;
# + gcc, libc6-dev, python3-numpy, perl; + a layer that deletes the docs
# and adds a small app. Each layer after the first is the upper directory
# of a kernel overlayfs mount the packages were installed through, so it
# holds exactly what changed (whiteouts in the overlayfs form). Cached: a
# second run does nothing.
#
#   bench/build-coldstart.sh WORKDIR   → WORKDIR/coldstart/layers/{1,2,3,4}
set -eu
work=${1:?usage: build-coldstart.sh WORKDIR}
out="$work/coldstart"
[ -f "$out/.done" ] && exit 0
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rm -rf "$out"
mkdir -p "$out/layers/1" "$out/mnt" "$out/work"
echo "debootstrap --variant=minbase bookworm from $mirror, then apt-get install (several minutes)" >&2
debootstrap --variant=minbase bookworm "$out/layers/1" "$mirror" >"$out/build.log" 2>&1 || {
	tail -20 "$out/build.log" >&2; exit 1; }
rm -rf "$out/layers/1/var/cache/apt/archives/"*.deb "$out/layers/1/var/lib/apt/lists/"*

# stage N LOWERS COMMAND: run COMMAND in a chroot of LOWERS + a new upper.
stage() {
	n=$1 lowers=$2 cmd=$3
	mkdir -p "$out/layers/$n" "$out/work/$n"
	mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$out/layers/$n,workdir=$out/work/$n" "$out/mnt"
	mount -t proc proc "$out/mnt/proc"
	mount --bind /dev "$out/mnt/dev"
	cp /etc/resolv.conf "$out/mnt/etc/resolv.conf" 2>/dev/null || true
	rc=0
	chroot "$out/mnt" /bin/sh -c "$cmd" >>"$out/build.log" 2>&1 || rc=$?
	umount "$out/mnt/dev" "$out/mnt/proc" "$out/mnt"
	rm -rf "$out/work/$n"
	[ $rc = 0 ] || { tail -20 "$out/build.log" >&2; exit 1; }
}
apt='export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends'
clean='apt-get clean; rm -rf /var/lib/apt/lists/* /var/log/* /var/cache/debconf/*-old /etc/resolv.conf'
L1="$out/layers/1"; L2="$out/layers/2"; L3="$out/layers/3"
stage 2 "$L1" "$apt python3 && $clean"
stage 3 "$L2:$L1" "$apt gcc libc6-dev python3-numpy perl && $clean"
stage 4 "$L3:$L2:$L1" "rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* && mkdir -p /app && cat > /app/app.py <<'APP'
import json, sqlite3, hashlib
db = sqlite3.connect(':memory:')
db.execute('create table t (k text, v text)')
db.executemany('insert into t values (?, ?)', [(str(i), hashlib.sha256(str(i).encode()).hexdigest()) for i in range(1000)])
print(json.dumps({'app': 'ok', 'rows': db.execute('select count(*) from t').fetchone()[0]}))
APP"
rmdir "$out/mnt" "$out/work"
touch "$out/.done"
