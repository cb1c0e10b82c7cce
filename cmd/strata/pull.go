//go:build !strata_noregistry

package main

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/lazypull"
)

// pullOptions builds the puller settings from the global flags and
// <root>/config.json: flag mirrors are tried before configured ones.
func (a *app) pullOptions(platform string, progress lazypull.Progress) (lazypull.Options, error) {
	o := lazypull.Options{Platform: platform, Progress: progress, Logger: a.log, Lazy: true, ReadTimeout: a.readTimeout,
		Insecure: append(append([]string{}, a.insecure...), a.config.InsecureRegistries...)}
	for _, m := range append(append([]string{}, a.mirrors...), a.config.Mirrors...) {
		mm, err := lazypull.ParseMirror(m)
		if err != nil {
			return o, &usageError{msg: err.Error()}
		}
		o.Mirrors = append(o.Mirrors, mm)
	}
	if platform != "" {
		if _, err := lazypull.ParsePlatform(platform); err != nil {
			return o, &usageError{msg: err.Error()}
		}
	}
	if max := cmp.Or(a.cacheMax, a.config.CacheMax); max != "" {
		n, err := parseBytes(max)
		if err != nil || n <= 0 {
			return o, &usageError{msg: fmt.Sprintf("invalid --cache-max %q: want a size such as 10g", max)}
		}
		o.CacheMax = n
	}
	return o, nil
}

func pullVerb() *verb {
	return &verb{name: "pull", args: "NAME[:TAG|@DIGEST]", summary: "Pull an image from a registry into the local store", minArgs: 1, maxArgs: 1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			platform := fs.String("platform", "", "pull the image for this platform (os/arch[/variant]); default the host's")
			quiet := fs.BoolP("quiet", "q", false, "print only the image ID")
			lazy := fs.Bool("lazy", true, "pull eStargz layers lazily: their TOC now, files' bytes when read (false: whole)")
			return func(ctx context.Context, a *app, args []string) error {
				s, err := a.Store()
				if err != nil {
					return err
				}
				var prog progressPrinter
				if !*quiet {
					prog = newProgress(a.stdout, a.stdoutIsTerminal)
				}
				opts, err := a.pullOptions(*platform, prog)
				if err != nil {
					return err
				}
				opts.Lazy = *lazy
				if _, err := lazypull.ParseReference(args[0], opts.Insecure...); err != nil {
					return err
				}
				if prog != nil {
					fmt.Fprintf(a.stdout, "Pulling %s\n", args[0])
				}
				res, err := lazypull.NewPuller(s, opts).Pull(ctx, args[0])
				if prog != nil {
					prog.Finish()
				}
				if err != nil {
					return err
				}
				if *quiet {
					fmt.Fprintln(a.stdout, res.Image.ID())
					return nil
				}
				printPullSummary(a, res)
				return nil
			}
		}}
}

func printPullSummary(a *app, res *lazypull.PullResult) {
	name := res.Ref.Familiar()
	if res.Ref.Tag != "" {
		name += ":" + res.Ref.Tag
	}
	if res.Ref.Digest != "" {
		name += "@" + res.Ref.Digest
	}
	digest := res.Image.ManifestDigest
	for _, d := range res.Image.RepoDigests {
		if strings.HasPrefix(d, res.Ref.Repo+"@") {
			digest = strings.TrimPrefix(d, res.Ref.Repo+"@")
		}
	}
	fmt.Fprintf(a.stdout, "Digest: %s\n", digest)
	if res.UpToDate {
		fmt.Fprintf(a.stdout, "Status: Image is up to date for %s\n", name)
	} else {
		fmt.Fprintf(a.stdout, "Status: Downloaded newer image for %s (%d layers, %s fetched", name, res.LayersFetched, humanSize(res.Fetched))
		if res.Source != res.Ref.Registry() && !(res.Ref.Registry() == "docker.io" && res.Source == "index.docker.io") {
			fmt.Fprintf(a.stdout, " from %s", res.Source)
		}
		fmt.Fprintln(a.stdout, ")")
	}
	fmt.Fprintln(a.stdout, res.Ref.String())
}
