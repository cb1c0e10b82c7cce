//go:build !strata_noregistry

package lazypull

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// ConvertOptions say how layers are rewritten as eStargz.
type ConvertOptions struct {
	// ChunkSize splits larger files in chunks fetched separately; 0 is
	// estargz's default (4 MiB).
	ChunkSize int
	// Prioritized files go first in each layer, before the prefetch
	// landmark; nil puts a landmark saying "prefetch nothing".
	Prioritized []string
	// MinChunkSize packs small files together in one gzip stream (as
	// ctr-remote's --estargz-min-chunk-size); such layers are pulled whole.
	MinChunkSize int
}

// EstargzLayer rewrites a layer as eStargz: the same files in a gzip tar
// whose files are compressed in independently readable chunks, with a
// table of contents at the end. It returns the layer and its TOC digest.
func EstargzLayer(l v1.Layer, o ConvertOptions) (v1.Layer, string, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, "", err
	}
	tarBytes, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, "", err
	}
	opts := []estargz.Option{}
	if o.ChunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(o.ChunkSize))
	}
	if o.MinChunkSize > 0 {
		opts = append(opts, estargz.WithMinChunkSize(o.MinChunkSize))
	}
	if o.Prioritized != nil {
		var missed []string
		opts = append(opts, estargz.WithPrioritizedFiles(o.Prioritized), estargz.WithAllowPrioritizeNotFound(&missed))
	}
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarBytes), 0, int64(len(tarBytes))), opts...)
	if err != nil {
		return nil, "", fmt.Errorf("eStargz: %w", err)
	}
	defer blob.Close()
	compressed, err := io.ReadAll(blob)
	if err != nil {
		return nil, "", fmt.Errorf("eStargz: %w", err)
	}
	diffID, err := v1.NewHash(blob.DiffID().String())
	if err != nil {
		return nil, "", err
	}
	return &memLayer{compressed: compressed, digest: sha256Hash(compressed), diffID: diffID}, blob.TOCDigest().String(), nil
}

// EstargzImage rewrites every layer of an image as eStargz, annotating
// each with its TOC digest; the config is kept but for the diff IDs.
func EstargzImage(img v1.Image, o ConvertOptions) (v1.Image, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	history := cfg.History
	cfg.RootFS.DiffIDs, cfg.History = nil, nil
	out, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, err
	}
	out = mutate.MediaType(out, types.OCIManifestSchema1)
	out = mutate.ConfigMediaType(out, types.OCIConfigJSON)
	var nonEmpty []v1.History
	for _, h := range history {
		if !h.EmptyLayer {
			nonEmpty = append(nonEmpty, h)
		}
	}
	for i, l := range layers {
		el, toc, err := EstargzLayer(l, o)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		add := mutate.Addendum{Layer: el, Annotations: map[string]string{TOCDigestAnnotation: toc}}
		if i < len(nonEmpty) {
			add.History = nonEmpty[i]
		}
		if out, err = mutate.Append(out, add); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// memLayer is a gzip layer held in memory.
type memLayer struct {
	compressed     []byte
	digest, diffID v1.Hash
}

func (l *memLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *memLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.compressed)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	return gzip.NewReader(bytes.NewReader(l.compressed))
}
func (l *memLayer) Size() (int64, error)                { return int64(len(l.compressed)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

func sha256Hash(b []byte) v1.Hash {
	h, _ := v1.NewHash(sha256Digest(b))
	return h
}

// ConvertResult says what Convert pushed.
type ConvertResult struct {
	Digest string // of the pushed manifest
	Layers int
	// Before and After are the images' compressed layer bytes.
	Before, After int64
}

// Convert reads the image src — from the local store when it is there
// (see Image), else from its registry for this puller's platform —
// rewrites its layers as eStargz and pushes it as dst.
func (p *Puller) Convert(ctx context.Context, src, dst string, o ConvertOptions) (*ConvertResult, error) {
	dref, err := ParseReference(dst, p.opts.Insecure...)
	if err != nil {
		return nil, err
	}
	if dref.Digest != "" {
		return nil, fmt.Errorf("convert: the destination %s cannot name a digest: the converted image has a new one", dst)
	}
	img, err := p.sourceImage(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("convert: read %s: %w", src, err)
	}
	res := &ConvertResult{}
	if layers, err := img.Layers(); err == nil {
		res.Layers = len(layers)
		for _, l := range layers {
			n, _ := l.Size()
			res.Before += n
		}
	}
	out, err := EstargzImage(img, o)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", src, err)
	}
	if layers, err := out.Layers(); err == nil {
		for _, l := range layers {
			n, _ := l.Size()
			res.After += n
		}
	}
	tag := dref.name.Tag(dref.Tag)
	err = p.opts.Retry.do(ctx, "push "+dst, p.log.Debug, func() error {
		return remote.Write(tag, out, p.remoteOptions(ctx)...)
	})
	if err != nil {
		return nil, fmt.Errorf("convert: push %s: %w", dst, err)
	}
	d, err := out.Digest()
	if err != nil {
		return nil, err
	}
	res.Digest = d.String()
	return res, nil
}

// sourceImage is src from the local store, else from its registry.
func (p *Puller) sourceImage(ctx context.Context, src string) (v1.Image, error) {
	if rec, err := p.store.Lookup(src); err == nil {
		return p.Image(ctx, rec)
	}
	sref, err := ParseReference(src, p.opts.Insecure...)
	if err != nil {
		return nil, err
	}
	platform, err := p.platform()
	if err != nil {
		return nil, err
	}
	var r name.Reference = sref.name.Tag(sref.Tag)
	if sref.Digest != "" {
		r = sref.name.Digest(sref.Digest)
	}
	var img v1.Image
	err = p.opts.Retry.do(ctx, "image "+src, p.log.Debug, func() error {
		var err error
		img, err = remote.Image(r, append(p.remoteOptions(ctx), remote.WithPlatform(platform))...)
		return err
	})
	return img, err
}
