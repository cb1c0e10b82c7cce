# strata — see README.md. `make demo` and `make test` do all set-up.
GO      := $(shell ./scripts/go.sh)
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PREFIX  ?= /usr/local
BIN     := bin

# Debian packages the tests need: busybox-static builds the test images,
# skopeo and umoci are the reference unpacker, fuse3 and fuse-overlayfs the
# union peers; podman (with runc, which copes with hybrid cgroups) runs
# containers on strata-overlay.
TEST_DEPS  := busybox-static skopeo umoci fuse3 fuse-overlayfs ca-certificates podman runc
BENCH_DEPS := $(TEST_DEPS) debootstrap crun
# Packages with goroutines of their own; the race detector runs on them.
RACE_PKGS  := ./lazypull/... ./whiteout/... ./fusefs/... ./layertree/... ./internal/... ./runtime/... ./volumes/...

.PHONY: all build test test-short lint demo install bench bench-coldstart deps clean

all: build

# strata, strata-init and strata-overlay are static: each container start
# runs strata and strata-init, and a static binary starts 0.7 ms sooner.
# strata is built without registry code, which makes its start 0.5 ms
# shorter; it hands what needs a registry to strata-full beside it.
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -tags strata_noregistry -ldflags '$(LDFLAGS)' -o $(BIN)/strata ./cmd/strata
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/strata-full ./cmd/strata
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/strata-init ./cmd/strata-init
	$(GO) build -trimpath -o $(BIN)/demo-registry ./internal/cmd/demo-registry
	$(GO) build -trimpath -o $(BIN)/strata-bench ./cmd/strata-bench
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/strata-overlay ./cmd/strata-overlay

deps:
	./scripts/deps.sh $(TEST_DEPS)

test: deps lint
	$(GO) test -count=1 -timeout 15m ./...
	$(GO) test -count=1 -race -timeout 15m $(RACE_PKGS)

lint:
	@out=$$($(dir $(GO))gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags strata_noregistry ./cmd/strata

demo: build
	./scripts/deps.sh busybox-static
	./scripts/demo.sh

install: build
	install -D -m 0755 $(BIN)/strata $(DESTDIR)$(PREFIX)/bin/strata
	install -D -m 0755 $(BIN)/strata-full $(DESTDIR)$(PREFIX)/bin/strata-full
	install -D -m 0755 $(BIN)/strata-init $(DESTDIR)$(PREFIX)/bin/strata-init
	install -D -m 0755 $(BIN)/strata-bench $(DESTDIR)$(PREFIX)/bin/strata-bench
	install -D -m 0755 $(BIN)/strata-overlay $(DESTDIR)$(PREFIX)/bin/strata-overlay

bench: build
	./scripts/deps.sh $(BENCH_DEPS)
	$(BIN)/strata bench pull
	$(BIN)/strata bench union

# Cold start through a shaped link (100 Mbit/s, 20 ms): builds its Debian
# image with debootstrap the first time.
bench-coldstart: build
	./scripts/deps.sh $(BENCH_DEPS)
	$(BIN)/strata bench -v --chart bench/coldstart.svg coldstart

clean:
	rm -rf $(BIN)
