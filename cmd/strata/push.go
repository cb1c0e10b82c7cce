//go:build !strata_noregistry

package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/lazypull"
)

func pushVerb() *verb {
	return &verb{name: "push", args: "IMAGE [DEST]", summary: "Push a local image to a registry", minArgs: 1, maxArgs: 2,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				s, err := a.Store()
				if err != nil {
					return err
				}
				rec, err := s.Lookup(args[0])
				if err != nil {
					return err
				}
				dst := args[0]
				if len(args) == 2 {
					dst = args[1]
				} else if _, err := lazypull.ParseReference(dst); err != nil || len(rec.Tags) == 0 {
					return &usageError{msg: fmt.Sprintf("%s names no repository: give a DEST", args[0])}
				}
				opts, err := a.pullOptions("", nil)
				if err != nil {
					return err
				}
				d, err := lazypull.NewPuller(s, opts).Push(ctx, rec, dst)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: pushed\nDigest: %s\n", dst, d)
				return nil
			}
		}}
}
