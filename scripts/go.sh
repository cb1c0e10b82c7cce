#!/bin/sh
# Prints the path of a Go toolchain new enough for go.mod, installing one if
# needed: Debian's golang-go (1.19 on bookworm) is too old, so it is used only
# to fetch the real toolchain from the Go module proxy, which serves Go
# toolchains as the module golang.org/toolchain.
set -eu
want=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$(dirname "$0")/../go.mod")
toolchain=${STRATA_GO_TOOLCHAIN:-1.26.8}

new_enough() {
	v=$("$1" env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
	[ -n "$v" ] || return 1
	[ "$(printf '%s\n%s\n' "$want" "$v" | sort -V | head -n1)" = "$want" ]
}

for g in go /usr/local/go/bin/go /usr/lib/go/bin/go; do
	if p=$(command -v "$g" 2>/dev/null) && new_enough "$p"; then
		echo "$p"; exit 0
	fi
done
cache=${XDG_CACHE_HOME:-$HOME/.cache}/strata-go
if [ -x "$cache/go/bin/go" ] && new_enough "$cache/go/bin/go"; then
	echo "$cache/go/bin/go"; exit 0
fi
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/lib/go/bin/go ]; then
	echo "installing Debian's golang-go to bootstrap Go $toolchain" >&2
	apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >&2
fi
boot=$(command -v go || echo /usr/lib/go/bin/go)
arch=$(uname -m); case $arch in x86_64) arch=amd64;; aarch64) arch=arm64;; esac
mod="golang.org/toolchain@v0.0.1-go$toolchain.linux-$arch"
echo "fetching Go $toolchain ($mod) from the Go module proxy" >&2
tmp=$(mktemp -d)
dir=$(cd "$tmp" && GOFLAGS=-modcacherw GOTOOLCHAIN=local GOPATH="$tmp/gopath" "$boot" mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
mkdir -p "$cache" && rm -rf "$cache/go" && cp -a "$dir" "$cache/go" && chmod -R u+w "$cache/go"
rm -rf "$tmp"
echo "$cache/go/bin/go"
