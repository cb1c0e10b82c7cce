//go:build !strata_noregistry

package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/lazypull"
	"github.com/stratafs/strata/runtime"
)

func convertVerb() *verb {
	return &verb{name: "convert", args: "SRC DST", summary: "Rewrite an image's layers as eStargz and push it", minArgs: 2, maxArgs: 2,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			chunk := fs.String("chunk-size", "4m", "split files in chunks of this size, each fetched on its own")
			platform := fs.String("platform", "", "convert the image for this platform (os/arch[/variant]); default the host's")
			optimize := fs.Bool("optimize", false, "run the image's workload in a container and put the files it opens first in each layer, before the prefetch landmark")
			cmd := fs.String("cmd", "", "--optimize: the workload, run with sh -c (default the image's entrypoint and command)")
			timeout := fs.Duration("timeout", 10*time.Second, "--optimize: stop the workload after this long")
			return func(ctx context.Context, a *app, args []string) error {
				n, err := parseBytes(*chunk)
				if err != nil || n < 4096 || n > 1<<30 {
					return &usageError{msg: fmt.Sprintf("invalid --chunk-size %q: want a size from 4k to 1g", *chunk)}
				}
				if !*optimize && (fs.Changed("cmd") || fs.Changed("timeout")) {
					return &usageError{msg: "--cmd and --timeout go with --optimize"}
				}
				s, err := a.Store()
				if err != nil {
					return err
				}
				opts, err := a.pullOptions(*platform, nil)
				if err != nil {
					return err
				}
				co := lazypull.ConvertOptions{ChunkSize: int(n)}
				if *optimize {
					if co.Prioritized, err = a.accessLog(ctx, args[0], *platform, *cmd, *timeout); err != nil {
						return fmt.Errorf("--optimize: %w", err)
					}
					fmt.Fprintf(a.stdout, "%s: the workload opened %d files; they go first\n", args[0], len(co.Prioritized))
				}
				res, err := lazypull.NewPuller(s, opts).Convert(ctx, args[0], args[1], co)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: %d layers as eStargz, %s → %s compressed\n%s\n", args[1], res.Layers, humanSize(res.Before), humanSize(res.After), res.Digest)
				return nil
			}
		}}
}

// accessLog runs the image's workload in a container of this process and
// returns the files of the image it opened, in the order it first opened
// them, as the union filesystem saw them (what ctr-remote's optimize
// records with fanotify).
func (a *app) accessLog(ctx context.Context, image, platform, cmd string, timeout time.Duration) ([]string, error) {
	f := createFlags{network: "none", pull: "missing", platform: platform, lazy: true, stopTimeout: 1, rm: true}
	var args []string
	if cmd != "" {
		args = []string{"sh", "-c", cmd}
	}
	c, err := a.newContainer(ctx, &f, image, args)
	if err != nil {
		return nil, err
	}
	defer a.removeContainer(context.WithoutCancel(ctx), c, true)
	cs, err := a.containers()
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var order []string
	seen := map[string]bool{}
	record := func(p string) {
		mu.Lock()
		defer mu.Unlock()
		if !seen[p] {
			seen[p] = true
			order = append(order, p)
		}
	}
	stop := time.AfterFunc(timeout, func() { cs.Signal(c.ID, syscall.SIGKILL) })
	defer stop.Stop()
	if _, err := cs.Run(context.WithoutCancel(ctx), c, storeMounter{a: a, onOpen: record}, runtime.RunOptions{Stdout: io.Discard, Stderr: io.Discard}); err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	return order, nil
}
