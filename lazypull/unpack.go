package lazypull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stratafs/strata/whiteout"
)

// Unpack writes the image's flattened root filesystem into dir: every
// layer applied in order as an OCI changeset, whiteouts resolved. dir must
// be missing or empty, so nothing of the user's is overwritten.
func (s *Store) Unpack(ctx context.Context, rec *ImageRecord, dir string) error {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("unpack into %s: directory is not empty", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpack into %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("unpack into %s: %w", dir, err)
	}
	for _, l := range rec.Layers {
		tree, err := s.LayerTree(l.DiffID)
		if err != nil {
			return err
		}
		if !s.HasLayer(l.DiffID) {
			return fmt.Errorf("layer %s of image %s is missing from the store (pull the image again)", l.DiffID, shortID(rec.ConfigDigest))
		}
		if stored, err := s.Layer(l.DiffID); err == nil && stored.Lazy {
			return fmt.Errorf("layer %s of image %s was pulled lazily (eStargz): pull it with --lazy=false to unpack it", l.DiffID, shortID(rec.ConfigDigest))
		}
		if err := flattenLayer(ctx, tree, dir); err != nil {
			return fmt.Errorf("unpack layer %s: %w", l.DiffID, err)
		}
	}
	return nil
}

// flattenLayer re-serialises a stored layer as an OCI tar and applies it
// onto dir, so unpack and pull share one tar applier.
func flattenLayer(ctx context.Context, tree, dir string) error {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(whiteout.WriteTar(ctx, tree, pw))
	}()
	_, err := whiteout.Apply(ctx, pr, dir, whiteout.Options{Mode: whiteout.Flatten, Privileged: os.Geteuid() == 0})
	pr.CloseWithError(errors.New("applier stopped"))
	return err
}

// Config reads and parses the image's config from the store.
func (s *Store) Config(rec *ImageRecord) (*v1.ConfigFile, error) {
	b, err := s.Blob(rec.ConfigDigest)
	if err != nil {
		return nil, err
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", rec.ConfigDigest, err)
	}
	return &cfg, nil
}

// Inspection is what `strata inspect IMAGE` prints, shaped like
// `docker image inspect` plus the manifest and its layers.
type Inspection struct {
	ID             string        `json:"Id"`
	RepoTags       []string      `json:"RepoTags"`
	RepoDigests    []string      `json:"RepoDigests"`
	ManifestDigest string        `json:"ManifestDigest"`
	MediaType      string        `json:"MediaType"`
	Created        string        `json:"Created"`
	Os             string        `json:"Os"`
	Architecture   string        `json:"Architecture"`
	Variant        string        `json:"Variant,omitempty"`
	Author         string        `json:"Author,omitempty"`
	Size           int64         `json:"Size"`
	Config         v1.Config     `json:"Config"`
	RootFS         v1.RootFS     `json:"RootFS"`
	History        []v1.History  `json:"History,omitempty"`
	Layers         []LayerRecord `json:"Layers"`
}

// Inspect gathers an image's record and config.
func (s *Store) Inspect(rec *ImageRecord) (*Inspection, error) {
	cfg, err := s.Config(rec)
	if err != nil {
		return nil, err
	}
	in := &Inspection{
		ID: rec.ConfigDigest, ManifestDigest: rec.ManifestDigest, MediaType: rec.MediaType,
		Created: cfg.Created.Time.UTC().Format("2006-01-02T15:04:05.999999999Z"),
		Os:      cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant, Author: cfg.Author,
		Size: rec.Size, Config: cfg.Config, RootFS: cfg.RootFS, History: cfg.History, Layers: rec.Layers,
		RepoTags: []string{}, RepoDigests: []string{},
	}
	for _, t := range rec.Tags {
		in.RepoTags = append(in.RepoTags, FamiliarName(t))
	}
	for _, d := range rec.RepoDigests {
		in.RepoDigests = append(in.RepoDigests, FamiliarName(d))
	}
	return in, nil
}
