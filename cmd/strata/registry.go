//go:build !strata_noregistry

package main

import (
	"context"
	"fmt"

	"github.com/stratafs/strata/layertree"
	"github.com/stratafs/strata/lazypull"
)

// registryVerbs are the verbs that reach registries or lazy layers'
// chunks; a strata built without registry code hands them to strata-full.
func registryVerbs() []*verb {
	return []*verb{pullVerb(), pushVerb(), convertVerb(), systemVerb(), mountVerb(), mountServerVerb()}
}

// pull fetches ref for run and create, which found it missing or were
// told --pull always.
func (a *app) pull(ctx context.Context, s *lazypull.Store, ref, platform string, lazy, missing bool) (*lazypull.ImageRecord, error) {
	opts, err := a.pullOptions(platform, nil)
	if err != nil {
		return nil, err
	}
	opts.Lazy = lazy
	if _, err := lazypull.ParseReference(ref, opts.Insecure...); err != nil {
		return nil, err
	}
	if missing {
		fmt.Fprintf(a.stderr, "Unable to find image '%s' locally\n", ref)
	}
	res, err := lazypull.NewPuller(s, opts).Pull(ctx, ref)
	if err != nil {
		return nil, err
	}
	return res.Image, nil
}

// layerTrees are rec's layers, top first. Lazy layers fetch their
// prioritized files at once and, with background, the rest after, until
// ctx ends.
func (a *app) layerTrees(ctx context.Context, rec *lazypull.ImageRecord, background bool) ([]layertree.Tree, error) {
	opts, err := a.pullOptions("", nil)
	if err != nil {
		return nil, err
	}
	return lazypull.NewPuller(a.store, opts).Trees(ctx, rec, lazypull.TreeOptions{Background: background})
}

// servable: this strata serves every image, lazy layers too.
func (a *app) servable(*lazypull.ImageRecord) error { return nil }

// servableID is servable for a container's image ID.
func (a *app) servableID(string) error { return nil }
