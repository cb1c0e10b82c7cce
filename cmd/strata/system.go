//go:build !strata_noregistry

package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/internal/fsutil"
	"github.com/stratafs/strata/lazypull"
	"github.com/stratafs/strata/runtime"
	"github.com/stratafs/strata/volumes"
)

func systemVerb() *verb {
	return &verb{name: "system", args: "df | prune [-a] [--volumes] [-f]", summary: "Show and free the space strata uses", minArgs: 1, maxArgs: -1,
		flags: func(*pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				fs := pflag.NewFlagSet("strata system "+args[0], pflag.ContinueOnError)
				fs.SetOutput(io.Discard)
				all := fs.BoolP("all", "a", false, "remove every image no container uses, not only untagged ones")
				vols := fs.Bool("volumes", false, "remove anonymous volumes no container uses too")
				force := fs.BoolP("force", "f", false, "do not ask for confirmation")
				if err := fs.Parse(args[1:]); err != nil {
					return &usageError{msg: err.Error()}
				}
				switch {
				case args[0] == "df" && len(args) == 1:
					return a.systemDF()
				case args[0] == "prune" && fs.NArg() == 0:
					return a.systemPrune(ctx, *all, *vols, *force)
				}
				return &usageError{msg: fmt.Sprintf("unknown system command %q: want df, or prune [-a] [--volumes] [-f]", strings.Join(args, " "))}
			}
		}}
}

// usage is one row of system df.
type usage struct {
	kind                string
	total, active       int
	size, reclaimable   int64
	activeNotApplicable bool
}

func (a *app) systemDF() error {
	s, err := a.Store()
	if err != nil {
		return err
	}
	cs, err := a.containers()
	if err != nil {
		return err
	}
	vs, err := volumes.Open(a.root)
	if err != nil {
		return err
	}
	imgs, err := s.Images()
	if err != nil {
		return err
	}
	ctrs, err := cs.List()
	if err != nil {
		return err
	}
	usedImages := map[string]bool{}
	ctrRow := usage{kind: "Containers"}
	for _, c := range ctrs {
		usedImages[c.ImageID] = true
		ctrRow.total++
		n := fsutil.DirSize(filepath.Join(cs.Dir(c.ID), "upper"))
		ctrRow.size += n
		if st, err := cs.State(c.ID); err == nil && (st.Status == runtime.StatusRunning || st.Status == runtime.StatusPaused) {
			ctrRow.active++
		} else {
			ctrRow.reclaimable += n
		}
	}
	imgRow := usage{kind: "Images"}
	layerSize := map[string]int64{}
	layerUsed := map[string]bool{}
	for _, rec := range imgs {
		imgRow.total++
		if usedImages[rec.ConfigDigest] {
			imgRow.active++
		}
		for _, l := range rec.Layers {
			if _, ok := layerSize[l.DiffID]; !ok {
				layerSize[l.DiffID] = l.UnpackedSize
				if stored, err := s.Layer(l.DiffID); err == nil && stored.Lazy {
					dir, _ := s.LayerDir(l.DiffID)
					layerSize[l.DiffID] = fsutil.DirSize(dir) // the TOC only
				}
			}
			layerUsed[l.DiffID] = layerUsed[l.DiffID] || usedImages[rec.ConfigDigest]
		}
	}
	for id, n := range layerSize {
		imgRow.size += n
		if !layerUsed[id] {
			imgRow.reclaimable += n
		}
	}
	volRow := usage{kind: "Local Volumes"}
	if list, err := vs.List(); err == nil {
		for _, v := range list {
			volRow.total++
			n := fsutil.DirSize(v.Mountpoint)
			volRow.size += n
			if len(a.volumeUsers(v.Name)) > 0 {
				volRow.active++
			} else {
				volRow.reclaimable += n
			}
		}
	}
	cu := s.CacheUsage()
	cacheRow := usage{kind: "Chunk cache", total: cu.Chunks, size: cu.Bytes, reclaimable: cu.Reclaimable, activeNotApplicable: true}

	tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tTOTAL\tACTIVE\tSIZE\tRECLAIMABLE")
	for _, r := range []usage{imgRow, ctrRow, volRow, cacheRow} {
		active := fmt.Sprint(r.active)
		if r.activeNotApplicable {
			active = "-"
		}
		pct := 0
		if r.size > 0 {
			pct = int(r.reclaimable * 100 / r.size)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s (%d%%)\n", r.kind, r.total, active, humanSize(r.size), humanSize(r.reclaimable), pct)
	}
	return tw.Flush()
}

func (a *app) systemPrune(ctx context.Context, all, withVolumes, force bool) error {
	if !force {
		what := "all stopped containers, all untagged images, the chunk cache of lazy layers not in use"
		if all {
			what = "all stopped containers, all images no container uses, the chunk cache of lazy layers not in use"
		}
		if withVolumes {
			what += ", all anonymous volumes no container uses"
		}
		if err := a.confirm(what); err != nil {
			return err
		}
	}
	s, err := a.Store()
	if err != nil {
		return err
	}
	cs, err := a.containers()
	if err != nil {
		return err
	}
	var freed int64
	ctrs, err := cs.List()
	if err != nil {
		return err
	}
	var deleted []string
	for _, c := range ctrs {
		st, err := cs.State(c.ID)
		if err != nil || st.Status == runtime.StatusRunning || st.Status == runtime.StatusPaused {
			continue
		}
		n := fsutil.DirSize(filepath.Join(cs.Dir(c.ID), "upper"))
		if err := a.removeContainer(ctx, c, false); err == nil {
			deleted = append(deleted, c.ID)
			freed += n
		}
	}
	if len(deleted) > 0 {
		fmt.Fprintf(a.stdout, "Deleted Containers:\n%s\n\n", strings.Join(deleted, "\n"))
	}
	remaining, _ := cs.List()
	used := map[string]bool{}
	for _, c := range remaining {
		used[c.ImageID] = true
	}
	imgs, err := s.Images()
	if err != nil {
		return err
	}
	var images []string
	for _, rec := range imgs {
		if used[rec.ConfigDigest] || (!all && len(rec.Tags) > 0) {
			continue
		}
		res, err := s.Remove(ctx, rec.ConfigDigest, true)
		if err != nil {
			a.log.Warn("prune image", "id", lazypull.ShortID(rec.ConfigDigest), "err", err)
			continue
		}
		images = append(images, res.Deleted...)
		freed += res.BytesReleased
	}
	if len(images) > 0 {
		fmt.Fprintf(a.stdout, "Deleted Images:\n%s\n\n", strings.Join(images, "\n"))
	}
	if withVolumes {
		vs, err := volumes.Open(a.root)
		if err != nil {
			return err
		}
		names, n, err := vs.Prune(ctx, false, a.volumeUsers)
		if err != nil {
			return err
		}
		if len(names) > 0 {
			fmt.Fprintf(a.stdout, "Deleted Volumes:\n%s\n\n", strings.Join(names, "\n"))
		}
		freed += n
	}
	freed += s.PruneCache(ctx, 0)
	fmt.Fprintf(a.stdout, "Total reclaimed space: %s\n", humanSize(freed))
	return nil
}
