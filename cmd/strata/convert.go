package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/lazypull"
)

func convertVerb() *verb {
	return &verb{name: "convert", args: "SRC DST", summary: "Rewrite a registry image's layers as eStargz and push it", minArgs: 2, maxArgs: 2,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			chunk := fs.String("chunk-size", "4m", "split files in chunks of this size, each fetched on its own")
			platform := fs.String("platform", "", "convert the image for this platform (os/arch[/variant]); default the host's")
			optimize := fs.Bool("optimize", false, "run the image's workload and put the files it reads first (not built yet)")
			return func(ctx context.Context, a *app, args []string) error {
				if *optimize {
					return &usageError{msg: "--optimize: not built yet"}
				}
				n, err := parseBytes(*chunk)
				if err != nil || n < 4096 || n > 1<<30 {
					return &usageError{msg: fmt.Sprintf("invalid --chunk-size %q: want a size from 4k to 1g", *chunk)}
				}
				s, err := a.Store()
				if err != nil {
					return err
				}
				opts, err := a.pullOptions(*platform, nil)
				if err != nil {
					return err
				}
				res, err := lazypull.NewPuller(s, opts).Convert(ctx, args[0], args[1], lazypull.ConvertOptions{ChunkSize: int(n)})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: %d layers as eStargz, %s → %s compressed\n%s\n", args[1], res.Layers, humanSize(res.Before), humanSize(res.After), res.Digest)
				return nil
			}
		}}
}
