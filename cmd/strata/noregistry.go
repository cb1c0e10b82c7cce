//go:build strata_noregistry

package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/stratafs/strata/layertree"
	"github.com/stratafs/strata/lazypull"
)

// This strata is built without registry code (make build does so): half
// the binary, and its start, which every container start pays, 0.4-0.5 ms
// shorter.
// What needs a registry, or the chunks of a lazy layer, strata-full does:
// the same command line with that code, which this process becomes
// (exec) before it has changed anything.

// registryVerbs are handed whole to strata-full. Their names and
// summaries are the full build's (TestThinAndFullListTheSameVerbs).
func registryVerbs() []*verb {
	return []*verb{
		delegatedVerb("pull", "Pull an image from a registry into the local store", false),
		delegatedVerb("push", "Push a local image to a registry", false),
		delegatedVerb("convert", "Rewrite an image's layers as eStargz and push it", false),
		delegatedVerb("system", "Show and free the space strata uses", false),
		delegatedVerb("mount", "Mount an image's root filesystem at DIR, writable; returns once it is live", false),
		delegatedVerb("mount-server", "(internal) serve a mount", true),
	}
}

func (a *app) pull(context.Context, *lazypull.Store, string, string, bool, bool) (*lazypull.ImageRecord, error) {
	return nil, errNeedsRegistry
}

// layerTrees are rec's extracted layers, top first. A lazy one is an
// error, not a hand-over: the container is made by now, and servable
// sent every image with one to strata-full before.
func (a *app) layerTrees(_ context.Context, rec *lazypull.ImageRecord, _ bool) ([]layertree.Tree, error) {
	trees, err := a.store.LocalTrees(rec)
	if errors.Is(err, lazypull.ErrLazyLayer) {
		return nil, fmt.Errorf("%w, which strata-full serves, not strata", err)
	}
	return trees, err
}

// servable tells whether this strata can serve rec: whether all its
// layers are extracted (a lazy one may have been fetched whole since).
func (a *app) servable(rec *lazypull.ImageRecord) error {
	if !rec.PulledLazily() {
		return nil
	}
	if _, err := a.store.LocalLayers(rec); errors.Is(err, lazypull.ErrLazyLayer) {
		return errNeedsRegistry
	}
	return nil // a layer missing is the start's to report
}

// servableID is servable for a container's image ID.
func (a *app) servableID(id string) error {
	s, err := a.Store()
	if err != nil {
		return err
	}
	rec, err := s.Lookup(id)
	if err != nil {
		return nil // the start reports it
	}
	a.remember(rec)
	return a.servable(rec)
}
