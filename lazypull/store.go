package lazypull

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/stratafs/strata/internal/fsutil"
	"github.com/stratafs/strata/layertree"
)

// Store is the local image store under one root directory:
//
//	blobs/sha256/<hex>   manifests, indexes and configs, verified by digest
//	images/images.json   image records: tags and digests → manifests
//	layers/<diffid>/     one per layer: fs/ (extracted tree) + layer.json
//	locks/               flock files; the kernel drops them when a process dies
//
// Every file is written atomically and every change to images.json happens
// under the store lock, so concurrent strata commands never corrupt it.
type Store struct {
	root string
}

// ImageRecord is what the store knows of one image (one platform manifest).
type ImageRecord struct {
	ManifestDigest string        `json:"manifestDigest"`
	ConfigDigest   string        `json:"configDigest"`
	MediaType      string        `json:"mediaType"`
	Platform       string        `json:"platform,omitempty"`
	Created        time.Time     `json:"created"`
	Pulled         time.Time     `json:"pulled"`
	Size           int64         `json:"size"`
	Layers         []LayerRecord `json:"layers"`
	// Tags are canonical "repo:tag" names; RepoDigests "repo@digest" as
	// the registry named the image (the index digest for multi-platform).
	Tags        []string `json:"tags,omitempty"`
	RepoDigests []string `json:"repoDigests,omitempty"`
}

// ID is Docker's image ID: the config digest.
func (r *ImageRecord) ID() string { return r.ConfigDigest }

// PulledLazily tells whether some of the image's layers were pulled
// lazily: a mount of it may read chunks, which eviction must then keep.
func (r *ImageRecord) PulledLazily() bool {
	return slices.ContainsFunc(r.Layers, func(l LayerRecord) bool { return l.Lazy })
}

// LayerRecord describes one layer of an image and of the store.
type LayerRecord struct {
	Digest       string `json:"digest"`
	DiffID       string `json:"diffID"`
	MediaType    string `json:"mediaType"`
	Size         int64  `json:"size"`
	UnpackedSize int64  `json:"unpackedSize,omitempty"`
	// TOCDigest is the eStargz TOC digest the manifest annotates the
	// layer with; such layers are pulled lazily (Options.Lazy).
	TOCDigest string `json:"tocDigest,omitempty"`
	// TOCFromFooter: the layer had no annotation and was found to be
	// eStargz by its footer; TOCDigest is then the digest of the TOC as
	// fetched, which nothing vouches for until the whole blob has
	// arrived and matched its digest.
	TOCFromFooter bool `json:"tocFromFooter,omitempty"`
	// Privileged: extracted by root, so ownership and modes are the
	// files' own and no user.containers.override_stat needs reading.
	Privileged bool `json:"privileged,omitempty"`
	// Lazy layers keep only their TOC (the blob from TOCOffset on); the
	// files' bytes are fetched from the repository Source when read.
	Lazy      bool   `json:"lazy,omitempty"`
	Source    string `json:"source,omitempty"`
	TOCOffset int64  `json:"tocOffset,omitempty"`
}

type storeIndex struct {
	Images map[string]*ImageRecord `json:"images"`
}

// DefaultRoot is /var/lib/strata for root, $XDG_DATA_HOME/strata otherwise;
// STRATA_ROOT overrides both.
func DefaultRoot() string {
	if r := os.Getenv("STRATA_ROOT"); r != "" {
		return r
	}
	if os.Geteuid() == 0 {
		return "/var/lib/strata"
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "strata")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "strata")
}

// OpenStore opens (creating if needed) the store at root and discards what
// killed commands left half-done.
func OpenStore(root string) (*Store, error) {
	if root == "" {
		return nil, errors.New("store root is empty")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	s := &Store{root: abs}
	for _, d := range []string{"blobs/sha256", "images", "layers", "locks", "containers", "volumes"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o700); err != nil {
			return nil, fmt.Errorf("open store %s: %w", abs, err)
		}
	}
	s.cleanStale()
	return s, nil
}

// Root is the store's root directory.
func (s *Store) Root() string { return s.root }

func (s *Store) blobPath(digest string) (string, error) {
	hexd, err := digestHex(digest)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.root, "blobs", "sha256", hexd), nil
}

// digestHex validates a "sha256:<64 hex>" digest and returns its hex part,
// so that a digest from a registry can never name a path of its choosing.
func digestHex(digest string) (string, error) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(h) != 64 {
		return "", fmt.Errorf("unsupported digest %q (want sha256:<64 hex digits>)", digest)
	}
	if _, err := hex.DecodeString(h); err != nil || strings.ToLower(h) != h {
		return "", fmt.Errorf("malformed digest %q", digest)
	}
	return h, nil
}

// PutBlob stores data under digest after checking that it matches.
func (s *Store) PutBlob(digest string, data []byte) error {
	p, err := s.blobPath(digest)
	if err != nil {
		return err
	}
	if got := sha256Digest(data); got != digest {
		return &DigestMismatchError{What: "blob", Want: digest, Got: got}
	}
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	return fsutil.WriteFileAtomic(p, data, 0o600)
}

// Blob reads a stored blob and checks it against its digest.
func (s *Store) Blob(digest string) ([]byte, error) {
	p, err := s.blobPath(digest)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", digest, err)
	}
	if got := sha256Digest(data); got != digest {
		return nil, fmt.Errorf("blob %s is corrupt in the store: %w", digest, &DigestMismatchError{What: "blob", Want: digest, Got: got})
	}
	return data, nil
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// DigestMismatchError reports bytes that do not match the digest naming them.
type DigestMismatchError struct {
	What, Want, Got string
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("%s digest mismatch: expected %s, got %s", e.What, e.Want, e.Got)
}

// LayerDir is where the layer with this diff ID lives.
func (s *Store) LayerDir(diffID string) (string, error) {
	h, err := digestHex(diffID)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.root, "layers", h), nil
}

// LayerTree is the extracted tree of a layer (overlayfs whiteout form).
func (s *Store) LayerTree(diffID string) (string, error) {
	d, err := s.LayerDir(diffID)
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "fs"), nil
}

// HasLayer reports whether the layer is complete in the store: layer.json is
// written last, inside a directory renamed into place whole.
func (s *Store) HasLayer(diffID string) bool {
	d, err := s.LayerDir(diffID)
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(d, "layer.json"))
	return err == nil
}

// Layer reads a stored layer's record.
func (s *Store) Layer(diffID string) (LayerRecord, error) {
	d, err := s.LayerDir(diffID)
	if err != nil {
		return LayerRecord{}, err
	}
	var rec LayerRecord
	b, err := os.ReadFile(filepath.Join(d, "layer.json"))
	if err != nil {
		return rec, fmt.Errorf("layer %s: %w", diffID, err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("layer %s: layer.json: %w", diffID, err)
	}
	return rec, nil
}

func (s *Store) lockPath(name string) string {
	return filepath.Join(s.root, "locks", name+".lock")
}

// lock takes the store-wide metadata lock.
func (s *Store) lock(ctx context.Context) (*fsutil.FileLock, error) {
	return fsutil.Lock(ctx, s.lockPath("store"))
}

func (s *Store) lockLayer(ctx context.Context, diffID string) (*fsutil.FileLock, error) {
	h, err := digestHex(diffID)
	if err != nil {
		return nil, err
	}
	return fsutil.Lock(ctx, s.lockPath("layer-"+h))
}

// cleanStale removes temporary layer directories left by killed pulls. A
// pull in progress holds its layer's lock, so its directory is left alone.
func (s *Store) cleanStale() {
	dir := filepath.Join(s.root, "layers")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), ".tmp-")
		if !ok {
			continue
		}
		h, _, _ := strings.Cut(rest, "-")
		l, ok := fsutil.TryLock(s.lockPath("layer-" + h))
		if !ok {
			continue
		}
		removeAll(filepath.Join(dir, e.Name()))
		l.Unlock()
	}
}

// removeAll is os.RemoveAll that first makes read-only directories (which
// images contain) writable, so a root-owned 0555 tree can be removed by
// its owner too.
func removeAll(path string) error {
	err := os.RemoveAll(path)
	if err == nil {
		return nil
	}
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

func (s *Store) indexPath() string { return filepath.Join(s.root, "images", "images.json") }

func (s *Store) readIndex() (*storeIndex, error) {
	idx := &storeIndex{Images: map[string]*ImageRecord{}}
	b, err := os.ReadFile(s.indexPath())
	if errors.Is(err, fs.ErrNotExist) {
		return idx, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, idx); err != nil {
		return nil, fmt.Errorf("image index %s is corrupt: %w", s.indexPath(), err)
	}
	if idx.Images == nil {
		idx.Images = map[string]*ImageRecord{}
	}
	return idx, nil
}

func (s *Store) writeIndex(idx *storeIndex) error {
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(s.indexPath(), b, 0o600)
}

// Images lists the images in the store, newest first.
func (s *Store) Images() ([]*ImageRecord, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	out := make([]*ImageRecord, 0, len(idx.Images))
	for _, r := range idx.Images {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *ImageRecord) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ManifestDigest, b.ManifestDigest)
	})
	return out, nil
}

// ErrImageNotFound is returned when no image in the store matches a name.
var ErrImageNotFound = errors.New("no such image")

// ErrAmbiguous is returned when an ID prefix matches several images.
var ErrAmbiguous = errors.New("ambiguous image ID prefix")

// Lookup finds an image by reference ("busybox", "repo:tag", "repo@digest"),
// by full or prefix image ID ("sha256:…" or hex), or by manifest digest.
func (s *Store) Lookup(nameOrID string) (*ImageRecord, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	return lookup(idx, nameOrID)
}

func lookup(idx *storeIndex, nameOrID string) (*ImageRecord, error) {
	if r, ok := idx.Images[nameOrID]; ok {
		return r, nil
	}
	if ref, err := ParseReference(nameOrID); err == nil {
		for _, r := range idx.Images {
			if ref.Digest != "" {
				if slices.Contains(r.RepoDigests, ref.Repo+"@"+ref.Digest) || (r.ManifestDigest == ref.Digest && hasRepo(r, ref.Repo)) {
					return r, nil
				}
				continue
			}
			if slices.Contains(r.Tags, ref.Repo+":"+ref.Tag) {
				return r, nil
			}
		}
	}
	prefix := strings.TrimPrefix(nameOrID, "sha256:")
	if len(prefix) >= 4 && isHex(prefix) {
		var found *ImageRecord
		for _, r := range idx.Images {
			if strings.HasPrefix(strings.TrimPrefix(r.ConfigDigest, "sha256:"), prefix) ||
				strings.HasPrefix(strings.TrimPrefix(r.ManifestDigest, "sha256:"), prefix) {
				if found != nil && found.ConfigDigest != r.ConfigDigest {
					return nil, fmt.Errorf("%w: %s", ErrAmbiguous, nameOrID)
				}
				found = r
			}
		}
		if found != nil {
			return found, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrImageNotFound, nameOrID)
}

func hasRepo(r *ImageRecord, repo string) bool {
	for _, t := range r.Tags {
		if strings.HasPrefix(t, repo+":") {
			return true
		}
	}
	for _, d := range r.RepoDigests {
		if strings.HasPrefix(d, repo+"@") {
			return true
		}
	}
	return false
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// addImage records rec and points ref's tag at it, moving the tag off any
// other image. The caller holds the store lock.
func (s *Store) addImage(idx *storeIndex, rec *ImageRecord, ref Reference, repoDigest string) {
	if old, ok := idx.Images[rec.ManifestDigest]; ok {
		// Clones: the loop below edits old's slices in place.
		rec.Tags, rec.RepoDigests = slices.Clone(old.Tags), slices.Clone(old.RepoDigests)
	}
	if ref.Tag != "" {
		tag := ref.Repo + ":" + ref.Tag
		for _, other := range idx.Images {
			other.Tags = slices.DeleteFunc(other.Tags, func(t string) bool { return t == tag })
		}
		if !slices.Contains(rec.Tags, tag) {
			rec.Tags = append(rec.Tags, tag)
		}
	}
	if repoDigest != "" && !slices.Contains(rec.RepoDigests, repoDigest) {
		rec.RepoDigests = append(rec.RepoDigests, repoDigest)
	}
	slices.Sort(rec.Tags)
	slices.Sort(rec.RepoDigests)
	idx.Images[rec.ManifestDigest] = rec
}

// RemoveResult says what Remove did.
type RemoveResult struct {
	Untagged      []string
	Deleted       []string // image IDs
	LayersFreed   []string // diff IDs
	BytesReleased int64
}

// Remove removes an image reference, as `docker rmi` does: a tag or digest
// reference is untagged and the image deleted once nothing names it; an ID
// deletes the image with all its names (force needed when those span
// several repositories). Layers no remaining image uses are freed.
func (s *Store) Remove(ctx context.Context, nameOrID string, force bool) (RemoveResult, error) {
	var res RemoveResult
	l, err := s.lock(ctx)
	if err != nil {
		return res, err
	}
	defer l.Unlock()
	idx, err := s.readIndex()
	if err != nil {
		return res, err
	}
	rec, err := lookup(idx, nameOrID)
	if err != nil {
		return res, err
	}
	if ref, perr := ParseReference(nameOrID); perr == nil && !looksLikeID(nameOrID) {
		name := ref.Repo + ":" + ref.Tag
		if ref.Digest != "" {
			name = ref.Repo + "@" + ref.Digest
			rec.RepoDigests = slices.DeleteFunc(rec.RepoDigests, func(d string) bool { return d == name })
		} else {
			rec.Tags = slices.DeleteFunc(rec.Tags, func(t string) bool { return t == name })
			// A tag's repo digest goes with it once the repo has no other tag.
			if !slices.ContainsFunc(rec.Tags, func(t string) bool { return strings.HasPrefix(t, ref.Repo+":") }) {
				rec.RepoDigests = slices.DeleteFunc(rec.RepoDigests, func(d string) bool {
					if strings.HasPrefix(d, ref.Repo+"@") {
						res.Untagged = append(res.Untagged, FamiliarName(d))
						return true
					}
					return false
				})
			}
		}
		res.Untagged = append([]string{FamiliarName(name)}, res.Untagged...)
		if len(rec.Tags) > 0 || len(rec.RepoDigests) > 0 {
			return res, s.writeIndex(idx)
		}
	} else {
		repos := map[string]bool{}
		for _, t := range rec.Tags {
			repos[t[:strings.LastIndex(t, ":")]] = true
		}
		if len(repos) > 1 && !force {
			return res, fmt.Errorf("image %s is referenced in multiple repositories (use -f to remove it with all its tags)", shortID(rec.ConfigDigest))
		}
		for _, t := range rec.Tags {
			res.Untagged = append(res.Untagged, FamiliarName(t))
		}
		for _, d := range rec.RepoDigests {
			res.Untagged = append(res.Untagged, FamiliarName(d))
		}
	}
	if n := s.containersUsing(rec) + s.pinsOf(rec); n > 0 {
		// Even -f cannot free layers a live mount reads from.
		return RemoveResult{}, fmt.Errorf("image %s is in use by %d container(s) or mount(s)", shortID(rec.ConfigDigest), n)
	}
	delete(idx.Images, rec.ManifestDigest)
	res.Deleted = append(res.Deleted, rec.ConfigDigest)
	if err := s.writeIndex(idx); err != nil {
		return res, err
	}
	s.removeUnusedBlobs(idx, rec)
	freed, n := s.gcLayers(idx)
	res.LayersFreed, res.BytesReleased = freed, n
	return res, nil
}

// containersUsing counts the containers made from this image: those whose
// configuration (<root>/containers/<id>/config.json, the runtime's) names
// its manifest digest as imageManifest, or, for containers made before
// that, whose file "image" holds it.
func (s *Store) containersUsing(rec *ImageRecord) int {
	dir := filepath.Join(s.root, "containers")
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		var config struct {
			ImageManifest string `json:"imageManifest"`
		}
		if b, err := os.ReadFile(filepath.Join(dir, e.Name(), "config.json")); err == nil && json.Unmarshal(b, &config) == nil && config.ImageManifest != "" {
			if config.ImageManifest == rec.ManifestDigest {
				n++
			}
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, e.Name(), "image")); err == nil && strings.TrimSpace(string(b)) == rec.ManifestDigest {
			n++
		}
	}
	return n
}

func looksLikeID(s string) bool {
	p := strings.TrimPrefix(s, "sha256:")
	return len(p) >= 4 && isHex(p) && (strings.HasPrefix(s, "sha256:") || len(p) == 12 || len(p) == 64)
}

// removeUnusedBlobs deletes rec's manifest and config unless another image
// shares them.
func (s *Store) removeUnusedBlobs(idx *storeIndex, rec *ImageRecord) {
	for _, d := range []string{rec.ManifestDigest, rec.ConfigDigest} {
		used := false
		for _, r := range idx.Images {
			if r.ManifestDigest == d || r.ConfigDigest == d {
				used = true
			}
		}
		if p, err := s.blobPath(d); err == nil && !used {
			os.Remove(p)
		}
	}
}

// gcLayers frees layers no image uses. A layer being pulled holds its lock
// and is skipped. The caller holds the store lock.
func (s *Store) gcLayers(idx *storeIndex) ([]string, int64) {
	used := map[string]bool{}
	for _, r := range idx.Images {
		for _, l := range r.Layers {
			used[l.DiffID] = true
		}
	}
	ents, _ := os.ReadDir(filepath.Join(s.root, "layers"))
	var freed []string
	var bytes int64
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || used["sha256:"+e.Name()] {
			continue
		}
		l, ok := fsutil.TryLock(s.lockPath("layer-" + e.Name()))
		if !ok {
			continue
		}
		dir := filepath.Join(s.root, "layers", e.Name())
		rec, _ := s.Layer("sha256:" + e.Name())
		// Rename first so a crash mid-delete never leaves a half layer
		// that looks complete.
		trash := filepath.Join(s.root, "layers", ".tmp-"+e.Name()+"-gc")
		if os.Rename(dir, trash) == nil {
			removeAll(trash)
			freed = append(freed, "sha256:"+e.Name())
			bytes += rec.UnpackedSize
		}
		l.Unlock()
	}
	return freed, bytes
}

// FamiliarName shortens "docker.io/library/x:tag" to "x:tag" for display.
func FamiliarName(name string) string {
	if i := strings.IndexAny(name, "@"); i >= 0 {
		return FamiliarRepo(name[:i]) + name[i:]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		return FamiliarRepo(name[:i]) + name[i:]
	}
	return FamiliarRepo(name)
}

func shortID(digest string) string {
	h := strings.TrimPrefix(digest, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

// ShortID is the 12-hex-digit form Docker prints for image IDs.
func ShortID(digest string) string { return shortID(digest) }

// equalJSON is used by tests and by pull to compare records.
func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// removeLayer deletes a stored layer, to replace it; the caller holds its
// lock. Mounts of it keep what they loaded.
func (s *Store) removeLayer(diffID string) error {
	dir, err := s.LayerDir(diffID)
	if err != nil {
		return err
	}
	trash := filepath.Join(filepath.Dir(dir), ".tmp-"+filepath.Base(dir)+"-replaced")
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("replace layer %s: %w", diffID, err)
	}
	return removeAll(trash)
}

// ErrLazyLayer is LocalLayers' answer for an image with a lazy layer.
var ErrLazyLayer = errors.New("layer pulled lazily")

// LocalLayers are the store's records of rec's layers, top first, when
// every one is extracted in the store (LayerTree is where).
func (s *Store) LocalLayers(rec *ImageRecord) ([]LayerRecord, error) {
	out := make([]LayerRecord, 0, len(rec.Layers))
	for i := len(rec.Layers) - 1; i >= 0; i-- {
		stored, err := s.storedLayer(rec, rec.Layers[i].DiffID)
		if err != nil {
			return nil, err
		}
		if stored.Lazy {
			return nil, fmt.Errorf("%w: %s of image %s", ErrLazyLayer, stored.DiffID, shortID(rec.ConfigDigest))
		}
		out = append(out, stored)
	}
	return out, nil
}

// LocalTrees are the trees of rec's layers, top first, when every one is
// extracted in the store (Puller.Trees reads lazy ones too).
func (s *Store) LocalTrees(rec *ImageRecord) ([]layertree.Tree, error) {
	layers, err := s.LocalLayers(rec)
	if err != nil {
		return nil, err
	}
	out := make([]layertree.Tree, 0, len(layers))
	for _, l := range layers {
		t, err := s.layerDir(l)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// storedLayer is the store's record of one of rec's layers.
func (s *Store) storedLayer(rec *ImageRecord, diffID string) (LayerRecord, error) {
	if !s.HasLayer(diffID) {
		return LayerRecord{}, fmt.Errorf("layer %s of image %s is missing from the store (pull the image again)", diffID, shortID(rec.ConfigDigest))
	}
	return s.Layer(diffID)
}

// layerDir opens an extracted layer's tree, reading override_stat only
// where an extraction without root may have written it. Layers are
// extracted with the kernel overlayfs's markers (layerFormat), so no OCI
// marker file is looked for.
func (s *Store) layerDir(l LayerRecord) (*layertree.Dir, error) {
	d, err := s.LayerTree(l.DiffID)
	if err != nil {
		return nil, err
	}
	return layertree.NewDirWith(d, layertree.DirOptions{IgnoreOverrideStat: l.Privileged, OverlayForm: true})
}
