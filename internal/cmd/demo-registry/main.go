// Command demo-registry serves, on a loopback port, the images `make demo`
// pulls: it starts the Distribution registry in process, builds the
// multi-layer busybox image and a two-platform index from Debian's
// busybox-static, pushes them, prints the registry's address, and serves
// until interrupted. No internet needed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
)

func main() {
	ready := flag.String("ready-file", "", "write the registry address to this file once it serves")
	flag.Parse()
	if err := run(*ready); err != nil {
		slog.Error("demo-registry", "err", err)
		os.Exit(1)
	}
}

func run(readyFile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reg, err := testregistry.New(ctx, testregistry.Options{})
	if err != nil {
		return err
	}
	defer reg.Close()
	img, err := testimage.MultiLayer(testimage.Gzip)
	if err != nil {
		return err
	}
	if err := testimage.Push(ctx, reg.Ref("demo/busybox:latest"), img); err != nil {
		return err
	}
	idx, err := testimage.Index()
	if err != nil {
		return err
	}
	if err := testimage.PushIndex(ctx, reg.Ref("demo/multiarch:latest"), idx); err != nil {
		return err
	}
	fmt.Println(reg.Addr)
	if readyFile != "" {
		tmp := readyFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(reg.Addr+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, readyFile); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}
