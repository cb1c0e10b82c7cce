package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/lazypull"
)

func imagesVerb() *verb {
	return &verb{name: "images", args: "", summary: "List images in the local store", maxArgs: 0,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			format := fs.String("format", "table", "table, json (one object a line), or a Go template ({{.Repository}}:{{.Tag}})")
			quiet := fs.BoolP("quiet", "q", false, "print only image IDs")
			noTrunc := fs.Bool("no-trunc", false, "do not truncate image IDs")
			return func(_ context.Context, a *app, _ []string) error {
				var tmpl *template.Template
				if *format != "table" && *format != "json" {
					var err error
					if tmpl, err = outputTemplate(*format); err != nil {
						return err
					}
				}
				s, err := a.Store()
				if err != nil {
					return err
				}
				recs, err := s.Images()
				if err != nil {
					return err
				}
				rows := imageRows(recs)
				switch {
				case *quiet:
					seen := map[string]bool{}
					for _, r := range rows {
						id := r.ID
						if !*noTrunc {
							id = lazypull.ShortID(id)
						}
						if !seen[id] {
							seen[id] = true
							fmt.Fprintln(a.stdout, id)
						}
					}
				case *format == "json":
					enc := json.NewEncoder(a.stdout)
					for _, r := range rows {
						if err := enc.Encode(r); err != nil {
							return err
						}
					}
				case tmpl != nil:
					for _, r := range rows {
						if err := printTemplate(a.stdout, tmpl, r); err != nil {
							return err
						}
					}
				default:
					tw := tabwriter.NewWriter(a.stdout, 0, 8, 3, ' ', 0)
					fmt.Fprintln(tw, "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE")
					for _, r := range rows {
						id := r.ID
						if !*noTrunc {
							id = lazypull.ShortID(id)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Repository, r.Tag, id, humanAgo(r.CreatedAt), humanSize(r.Size))
					}
					return tw.Flush()
				}
				return nil
			}
		}}
}

// imageRow is one line of `strata images`: an image under one of its names.
type imageRow struct {
	Repository string    `json:"Repository"`
	Tag        string    `json:"Tag"`
	Digest     string    `json:"Digest"`
	ID         string    `json:"ID"`
	CreatedAt  time.Time `json:"CreatedAt"`
	Size       int64     `json:"Size"`
	Platform   string    `json:"Platform"`
}

func imageRows(recs []*lazypull.ImageRecord) []imageRow {
	var rows []imageRow
	for _, r := range recs {
		base := imageRow{ID: r.ConfigDigest, CreatedAt: r.Created, Size: r.Size, Platform: r.Platform, Digest: r.ManifestDigest}
		tagged := map[string]bool{}
		for _, t := range r.Tags {
			i := strings.LastIndex(t, ":")
			row := base
			row.Repository, row.Tag = lazypull.FamiliarRepo(t[:i]), t[i+1:]
			tagged[t[:i]] = true
			rows = append(rows, row)
		}
		for _, d := range r.RepoDigests {
			repo, dg, _ := strings.Cut(d, "@")
			if tagged[repo] {
				continue
			}
			tagged[repo] = true
			row := base
			row.Repository, row.Tag, row.Digest = lazypull.FamiliarRepo(repo), "<none>", dg
			rows = append(rows, row)
		}
		if len(r.Tags) == 0 && len(r.RepoDigests) == 0 {
			row := base
			row.Repository, row.Tag = "<none>", "<none>"
			rows = append(rows, row)
		}
	}
	return rows
}

func rmiVerb() *verb {
	return &verb{name: "rmi", args: "IMAGE [IMAGE...]", summary: "Remove images; layers no other image uses are freed", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			force := fs.BoolP("force", "f", false, "remove an image referenced by several repositories or used by containers")
			return func(ctx context.Context, a *app, args []string) error {
				s, err := a.Store()
				if err != nil {
					return err
				}
				var errs []error
				for _, name := range args {
					res, err := s.Remove(ctx, name, *force)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					for _, u := range res.Untagged {
						fmt.Fprintf(a.stdout, "Untagged: %s\n", u)
					}
					for _, d := range res.Deleted {
						fmt.Fprintf(a.stdout, "Deleted: %s\n", d)
					}
					for _, l := range res.LayersFreed {
						fmt.Fprintf(a.stdout, "Deleted layer: %s\n", l)
					}
				}
				return errors.Join(errs...)
			}
		}}
}

func inspectVerb() *verb {
	return &verb{name: "inspect", args: "CONTAINER|IMAGE [...]", summary: "Show a container's or an image's configuration and state as JSON", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			format := fs.StringP("format", "f", "", "print each through this Go template ({{.State.Pid}}, {{json .Config}}), as docker inspect")
			return func(_ context.Context, a *app, args []string) error {
				s, err := a.Store()
				if err != nil {
					return err
				}
				out := []any{}
				var errs []error
				for _, name := range args {
					if c, ok := a.inspectContainer(name); ok {
						out = append(out, c)
						continue
					}
					rec, err := s.Lookup(name)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					in, err := s.Inspect(rec)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					out = append(out, in)
				}
				if *format != "" {
					t, err := outputTemplate(*format)
					if err != nil {
						return err
					}
					for _, o := range out {
						if err := printTemplate(a.stdout, t, o); err != nil {
							return err
						}
					}
					return errors.Join(errs...)
				}
				b, err := json.MarshalIndent(out, "", "    ")
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, string(b))
				return errors.Join(errs...)
			}
		}}
}

func unpackVerb() *verb {
	return &verb{name: "unpack", args: "IMAGE DIR", summary: "Write an image's flattened root filesystem into a directory", minArgs: 2, maxArgs: 2,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				s, err := a.Store()
				if err != nil {
					return err
				}
				rec, err := s.Lookup(args[0])
				if err != nil {
					return fmt.Errorf("%w (pull it first: strata pull %s)", err, args[0])
				}
				return s.Unpack(ctx, rec, args[1])
			}
		}}
}

func humanSize(n int64) string {
	const unit = 1000 // docker prints SI sizes
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	f := float64(n)
	for _, u := range []string{"kB", "MB", "GB", "TB"} {
		f /= unit
		if f < unit {
			return fmt.Sprintf("%.3g%s", f, u)
		}
	}
	return fmt.Sprintf("%.3gPB", f/unit)
}

func humanAgo(t time.Time) string {
	if t.IsZero() {
		return "N/A"
	}
	return humanDuration(time.Since(t)) + " ago"
}

// humanDuration is docker's way of saying how long: "Less than a
// second", "5 seconds", "About a minute", "3 hours", "2 weeks".
func humanDuration(d time.Duration) string {
	switch s := int(d.Seconds()); {
	case s < 1:
		return "Less than a second"
	case s == 1:
		return "1 second"
	case s < 60:
		return fmt.Sprintf("%d seconds", s)
	}
	switch m := int(d.Minutes()); {
	case m == 1:
		return "About a minute"
	case m < 60:
		return fmt.Sprintf("%d minutes", m)
	}
	switch h := int(d.Hours() + 0.5); {
	case h == 1:
		return "About an hour"
	case h < 48:
		return fmt.Sprintf("%d hours", h)
	case h < 24*7*2:
		return fmt.Sprintf("%d days", h/24)
	case h < 24*30*2:
		return fmt.Sprintf("%d weeks", h/24/7)
	case h < 24*365*2:
		return fmt.Sprintf("%d months", h/24/30)
	default:
		return fmt.Sprintf("%d years", int(d.Hours())/24/365)
	}
}
