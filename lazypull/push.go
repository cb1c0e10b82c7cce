//go:build !strata_noregistry

package lazypull

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/whiteout"
)

// Image is a stored image as an OCI image, to push or convert. The store
// keeps layers extracted, not their tars: each is written again as a
// sorted PAX tar with OCI whiteouts and gzip-compressed, so its digest and
// diff ID, and so the image's ID, differ from the pulled image's. A lazy
// layer is its original blob, read from the repository it was pulled
// from.
func (p *Puller) Image(ctx context.Context, rec *ImageRecord) (v1.Image, error) {
	cfg, err := p.store.Config(rec)
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	history := cfg.History
	cfg.RootFS.DiffIDs, cfg.History = nil, nil
	img, err := mutate.ConfigFile(mutate.MediaType(empty.Image, types.OCIManifestSchema1), cfg)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range rec.Layers {
		stored, err := p.store.Layer(l.DiffID)
		if err != nil {
			return nil, err
		}
		var layer v1.Layer
		if stored.Lazy {
			repo, err := p.remote.repository(stored.Source)
			if err != nil {
				return nil, err
			}
			if layer, err = remote.Layer(repo.Digest(stored.Digest), p.remoteOptions(ctx)...); err != nil {
				return nil, fmt.Errorf("lazy layer %s: %w", stored.Digest, err)
			}
		} else {
			dir, err := p.store.LayerTree(l.DiffID)
			if err != nil {
				return nil, err
			}
			layer, err = tarball.LayerFromOpener(func() (io.ReadCloser, error) {
				pr, pw := io.Pipe()
				go func() { pw.CloseWithError(whiteout.WriteTar(ctx, dir, pw)) }()
				return pr, nil
			}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", l.DiffID, err)
			}
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return nil, err
		}
	}
	out, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	out = out.DeepCopy()
	out.History = history
	return mutate.ConfigFile(img, out)
}

// Push writes a stored image to dst, a registry reference, and returns
// the pushed manifest's digest.
func (p *Puller) Push(ctx context.Context, rec *ImageRecord, dst string) (string, error) {
	ref, err := ParseReference(dst, p.opts.Insecure...)
	if err != nil {
		return "", err
	}
	if ref.Digest != "" || ref.Tag == "" {
		return "", fmt.Errorf("push: %s must name a tag", dst)
	}
	img, err := p.Image(ctx, rec)
	if err != nil {
		return "", err
	}
	tag := ref.name.Tag(ref.Tag)
	err = p.opts.Retry.do(ctx, "push "+dst, p.log.Debug, func() error {
		return remote.Write(tag, img, p.remoteOptions(ctx)...)
	})
	if err != nil {
		return "", fmt.Errorf("push %s: %w", dst, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}
