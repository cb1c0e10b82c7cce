package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/layertree"
)

// diffVerb is docker diff: what the container changed in its image's
// files, read from its container layer (the union's upper directory).
func diffVerb() *verb {
	return &verb{name: "diff", args: "CONTAINER", summary: "List the files a container added (A), changed (C) or deleted (D)", minArgs: 1, maxArgs: 1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				cs, c, err := a.containerArg(args[0])
				if err != nil {
					return err
				}
				if err := a.servableID(c.ImageID); err != nil {
					return err
				}
				s, err := a.Store()
				if err != nil {
					return err
				}
				rec, err := s.Lookup(c.ImageID)
				if err != nil {
					return err
				}
				ctx, cancel := context.WithCancel(ctx)
				defer cancel() // a lazy layer's prefetch
				lowers, err := a.layerTrees(ctx, rec, false)
				if err != nil {
					return err
				}
				dir := filepath.Join(cs.Dir(c.ID), "upper")
				if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
					return nil // created, never started: nothing changed
				}
				upper, err := layertree.NewDir(dir)
				if err != nil {
					return fmt.Errorf("the container layer of %s: %w", args[0], err)
				}
				changes, err := containerChanges(ctx, upper, lowers)
				if err != nil {
					return err
				}
				for _, ch := range changes {
					fmt.Fprintf(a.stdout, "%c %s\n", ch.kind, ch.path)
				}
				return nil
			}
		}}
}

type change struct {
	kind byte // 'A', 'C' or 'D'
	path string
}

// containerChanges walks the container layer: a whiteout is a deletion;
// any other entry a change of what the image has there, or an addition.
// Sorted by path, as docker prints them.
func containerChanges(ctx context.Context, upper layertree.Tree, lowers []layertree.Tree) ([]change, error) {
	inImage := func(p string) bool {
		for _, l := range lowers {
			if e, err := l.Stat(ctx, p); err == nil {
				return !e.Whiteout
			}
		}
		return false
	}
	var out []change
	var walk func(dir string) error
	walk = func(dir string) error {
		entries, err := upper.ReadDir(ctx, dir)
		if err != nil {
			return fmt.Errorf("read the container layer at /%s: %w", dir, err)
		}
		for _, e := range entries {
			if e.Name == layertree.OpaqueMarker {
				continue
			}
			p := path.Join(dir, e.Name)
			switch {
			case e.Whiteout:
				out = append(out, change{'D', "/" + p})
				continue
			case inImage(p):
				out = append(out, change{'C', "/" + p})
			default:
				out = append(out, change{'A', "/" + p})
			}
			if e.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(""); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b change) int { return strings.Compare(a.path, b.path) })
	return out, nil
}
