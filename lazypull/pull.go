//go:build !strata_noregistry

package lazypull

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/fsutil"
	"github.com/stratafs/strata/whiteout"
)

// Options configure a Puller.
type Options struct {
	// Platform is "os/arch[/variant]"; empty means the host's.
	Platform string
	Mirrors  []Mirror
	// Insecure registries are reached over plain HTTP (loopback always is).
	Insecure  []string
	Keychain  authn.Keychain
	Transport http.RoundTripper
	// Jobs is how many layers download at once (default 3, as dockerd).
	Jobs int
	// Lazy pulls eStargz layers (those with a TOC digest annotation)
	// without their body: only the TOC; files are fetched when read.
	Lazy bool
	// CacheMax bounds the chunk cache of lazy layers (0: no bound).
	CacheMax int64
	// ReadTimeout bounds how long a read of a lazy layer waits for the
	// registry (retrying with backoff) before it fails with EIO; 0 is
	// 30 seconds.
	ReadTimeout time.Duration
	Retry       Retry
	Progress    Progress
	Logger      *slog.Logger
}

// Progress receives pull events; implementations must be safe for
// concurrent use (layers download in parallel).
type Progress interface {
	Update(ProgressEvent)
}

// EventKind says what a ProgressEvent reports.
type EventKind int

// The events of a pull, in order for each layer.
const (
	EventResolved   EventKind = iota // manifest resolved; Total = number of layers
	EventLayerStart                  // Total = compressed size
	EventLayerBytes                  // Done of Total bytes received
	EventLayerDone
	EventLayerExists // already in the store
	EventLayerRetry  // a fault; the download starts over
	EventLayerLazy   // pulled lazily: Done bytes (footer and TOC) fetched
)

// ProgressEvent is one step of a pull.
type ProgressEvent struct {
	Kind        EventKind
	Layer       string // compressed digest
	Done, Total int64
	Err         error
}

// Puller pulls images into a Store.
type Puller struct {
	store  *Store
	opts   Options
	log    *slog.Logger
	remote *Remote
}

// NewPuller returns a Puller writing to store.
func NewPuller(store *Store, opts Options) *Puller {
	if opts.Jobs <= 0 {
		opts.Jobs = 3
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Puller{store: store, opts: opts, log: log, remote: NewRemote(opts)}
}

// PullResult says what a pull did.
type PullResult struct {
	Ref      Reference
	Image    *ImageRecord
	UpToDate bool   // nothing but the manifest was fetched
	Source   string // the registry or mirror that served it
	// Fetched counts layer bytes received from the network.
	Fetched       int64
	LayersFetched int
}

func (p *Puller) progress(e ProgressEvent) {
	if p.opts.Progress != nil {
		p.opts.Progress.Update(e)
	}
}

// Pull brings the image named by refStr into the store.
func (p *Puller) Pull(ctx context.Context, refStr string) (*PullResult, error) {
	ref, err := ParseReference(refStr, p.opts.Insecure...)
	if err != nil {
		return nil, err
	}
	platform, err := p.platform()
	if err != nil {
		return nil, err
	}
	srcs, err := p.sources(ref)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, src := range srcs {
		res, err := p.pullFrom(ctx, ref, src, platform)
		if err == nil {
			return res, nil
		}
		if !src.mirror || ctx.Err() != nil {
			if len(errs) > 0 {
				p.log.Debug("mirrors failed", "errors", errors.Join(errs...))
			}
			return nil, fmt.Errorf("pull %s: %w", ref.Familiar()+refSuffix(ref), err)
		}
		p.log.Warn("mirror failed, trying next source", "mirror", src.String(), "err", err)
		errs = append(errs, fmt.Errorf("mirror %s: %w", src, err))
	}
	return nil, fmt.Errorf("pull %s: no source", ref)
}

func refSuffix(r Reference) string {
	s := ""
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

func (p *Puller) platform() (v1.Platform, error) {
	if p.opts.Platform == "" {
		return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, nil
	}
	return ParsePlatform(p.opts.Platform)
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
		return v1.Platform{}, fmt.Errorf("invalid platform %q: want os/arch[/variant]", s)
	}
	pl := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		pl.Variant = parts[2]
	}
	return pl, nil
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// manifestInfo is a resolved platform manifest and its config.
type manifestInfo struct {
	digest      string
	mediaType   types.MediaType
	raw         []byte
	manifest    *v1.Manifest
	configRaw   []byte
	config      *v1.ConfigFile
	repoDigest  string // the digest the reference resolved to (index or manifest)
	platform    v1.Platform
	indexDigest string
	indexRaw    []byte
}

func (p *Puller) pullFrom(ctx context.Context, ref Reference, src source, platform v1.Platform) (*PullResult, error) {
	mi, err := p.resolve(ctx, ref, src, platform)
	if err != nil {
		return nil, err
	}
	res := &PullResult{Ref: ref, Source: src.String()}
	p.progress(ProgressEvent{Kind: EventResolved, Total: int64(len(mi.manifest.Layers))})
	layers := make([]LayerRecord, len(mi.manifest.Layers))
	for i, l := range mi.manifest.Layers {
		layers[i] = LayerRecord{Digest: l.Digest.String(), DiffID: mi.config.RootFS.DiffIDs[i].String(), MediaType: string(l.MediaType), Size: l.Size}
		if d := l.Annotations[TOCDigestAnnotation]; d != "" && lazyMediaType(string(l.MediaType)) {
			layers[i].TOCDigest = d
		}
	}
	for attempt := 0; ; attempt++ {
		fetched, n, err := p.fetchLayers(ctx, src, layers)
		res.Fetched += fetched
		res.LayersFetched += n
		if err != nil {
			return nil, err
		}
		rec, upToDate, err := p.record(ctx, ref, mi, layers)
		if errors.Is(err, errLayerVanished) && attempt < 3 {
			continue // a concurrent rmi freed a layer between fetch and record
		}
		if err != nil {
			return nil, err
		}
		res.Image, res.UpToDate = rec, upToDate && res.LayersFetched == 0
		return res, nil
	}
}

var errLayerVanished = errors.New("layer vanished from the store")

// resolve fetches the manifest (through an index if need be) and config,
// checking every byte against its digest.
func (p *Puller) resolve(ctx context.Context, ref Reference, src source, platform v1.Platform) (*manifestInfo, error) {
	nref := src.repo.Tag(ref.Tag)
	var pinned string
	if ref.Digest != "" {
		pinned = ref.Digest
	}
	get := func(r interface{ String() string }, fetch func() (*remote.Descriptor, error)) (*remote.Descriptor, error) {
		var d *remote.Descriptor
		err := p.opts.Retry.do(ctx, "manifest "+r.String(), p.log.Debug, func() error {
			var err error
			d, err = fetch()
			return err
		})
		if err != nil {
			if isNotFound(err) {
				return nil, &NotFoundError{Ref: r.String(), Err: err}
			}
			return nil, err
		}
		return d, nil
	}
	var desc *remote.Descriptor
	var err error
	if pinned != "" {
		dref := src.repo.Digest(pinned)
		desc, err = get(dref, func() (*remote.Descriptor, error) { return remote.Get(dref, p.remoteOptions(ctx)...) })
	} else {
		desc, err = get(nref, func() (*remote.Descriptor, error) { return remote.Get(nref, p.remoteOptions(ctx)...) })
	}
	if err != nil {
		return nil, err
	}
	if got := sha256Digest(desc.Manifest); pinned != "" && got != pinned {
		return nil, &DigestMismatchError{What: "manifest", Want: pinned, Got: got}
	}
	mi := &manifestInfo{repoDigest: sha256Digest(desc.Manifest), platform: platform}
	raw, mt := desc.Manifest, desc.MediaType
	if mt.IsIndex() {
		var idx v1.IndexManifest
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("image index %s is not valid JSON: %w", mi.repoDigest, err)
		}
		mi.indexDigest, mi.indexRaw = mi.repoDigest, raw
		child, err := pickPlatform(&idx, platform)
		if err != nil {
			return nil, err
		}
		mi.platform = *child.Platform
		dref := src.repo.Digest(child.Digest.String())
		cd, err := get(dref, func() (*remote.Descriptor, error) { return remote.Get(dref, p.remoteOptions(ctx)...) })
		if err != nil {
			return nil, err
		}
		if got := sha256Digest(cd.Manifest); got != child.Digest.String() {
			return nil, &DigestMismatchError{What: "manifest", Want: child.Digest.String(), Got: got}
		}
		raw, mt = cd.Manifest, cd.MediaType
	}
	if !mt.IsImage() {
		if mt == types.DockerManifestSchema1 || mt == types.DockerManifestSchema1Signed {
			return nil, fmt.Errorf("manifest of %s is Docker schema 1, which is deprecated and not supported", ref)
		}
		return nil, fmt.Errorf("manifest of %s has unsupported media type %q", ref, mt)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("manifest %s is not valid JSON: %w", sha256Digest(raw), err)
	}
	mi.raw, mi.mediaType, mi.manifest, mi.digest = raw, mt, &m, sha256Digest(raw)
	for _, l := range m.Layers {
		if !supportedLayer(l.MediaType) {
			return nil, fmt.Errorf("layer %s has unsupported media type %q", l.Digest, l.MediaType)
		}
		if l.Size < 0 {
			return nil, fmt.Errorf("layer %s has negative size", l.Digest)
		}
		if _, err := digestHex(l.Digest.String()); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	cfgDigest := m.Config.Digest.String()
	if _, err := digestHex(cfgDigest); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if b, err := p.store.Blob(cfgDigest); err == nil {
		mi.configRaw = b
	} else {
		b, err := p.fetchSmallBlob(ctx, src, cfgDigest, m.Config.Size)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", cfgDigest, err)
		}
		mi.configRaw = b
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(mi.configRaw, &cfg); err != nil {
		return nil, fmt.Errorf("config %s is not valid JSON: %w", cfgDigest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("image config %s lists %d diff IDs for %d layers", cfgDigest, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	for _, d := range cfg.RootFS.DiffIDs {
		if _, err := digestHex(d.String()); err != nil {
			return nil, fmt.Errorf("config %s: diff ID: %w", cfgDigest, err)
		}
	}
	mi.config = &cfg
	if mi.indexDigest == "" && cfg.OS != "" && (cfg.OS != platform.OS || cfg.Architecture != platform.Architecture) && p.opts.Platform != "" {
		return nil, fmt.Errorf("image %s is %s/%s, not the requested platform %s", ref, cfg.OS, cfg.Architecture, platformString(platform))
	}
	if mi.indexDigest == "" {
		mi.platform = v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	}
	return mi, nil
}

func supportedLayer(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		return true
	}
	return false
}

// pickPlatform chooses the index entry for platform: same OS and
// architecture, and the variant when one is asked for.
func pickPlatform(idx *v1.IndexManifest, want v1.Platform) (*v1.Descriptor, error) {
	var have []string
	for i := range idx.Manifests {
		d := &idx.Manifests[i]
		if d.Platform == nil || !d.MediaType.IsImage() && d.MediaType != "" {
			continue
		}
		have = append(have, platformString(*d.Platform))
		if d.Platform.OS == want.OS && d.Platform.Architecture == want.Architecture &&
			(want.Variant == "" || d.Platform.Variant == want.Variant) {
			return d, nil
		}
	}
	return nil, fmt.Errorf("no image for platform %s in the index (it has: %s)", platformString(want), strings.Join(have, ", "))
}

func (p *Puller) fetchSmallBlob(ctx context.Context, src source, digest string, size int64) ([]byte, error) {
	var out []byte
	err := p.opts.Retry.do(ctx, "blob "+digest, p.log.Debug, func() error {
		l, err := remote.Layer(src.repo.Digest(digest), p.remoteOptions(ctx)...)
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		defer rc.Close()
		const maxConfig = 64 << 20
		b, err := io.ReadAll(io.LimitReader(rc, maxConfig+1))
		if err != nil && !strings.Contains(err.Error(), "digest") {
			return err
		}
		if len(b) > maxConfig {
			return fmt.Errorf("blob %s larger than %d bytes", digest, maxConfig)
		}
		if got := sha256Digest(b); got != digest {
			return &DigestMismatchError{What: "blob", Want: digest, Got: got}
		}
		out = b
		return nil
	})
	if err != nil && isNotFound(err) {
		return nil, &NotFoundError{Ref: digest, Err: err}
	}
	return out, err
}

// fetchLayers downloads and extracts the layers missing from the store, at
// most Jobs at once.
func (p *Puller) fetchLayers(ctx context.Context, src source, layers []LayerRecord) (int64, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		fetched int64
		count   int
		first   error
		wg      sync.WaitGroup
		seen    = map[string]bool{}
		sem     = make(chan struct{}, p.opts.Jobs)
	)
	for i := range layers {
		l := &layers[i]
		if seen[l.DiffID] {
			continue
		}
		seen[l.DiffID] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			n, did, err := p.fetchLayer(ctx, src, l)
			mu.Lock()
			defer mu.Unlock()
			fetched += n
			if did {
				count++
			}
			if err != nil && first == nil {
				first = err
				cancel()
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return fetched, count, first
}

// fetchLayer makes one layer present in the store, unless it already is.
func (p *Puller) fetchLayer(ctx context.Context, src source, l *LayerRecord) (int64, bool, error) {
	lock, err := p.store.lockLayer(ctx, l.DiffID)
	if err != nil {
		return 0, false, err
	}
	defer lock.Unlock()
	// Annotated eStargz layers, and gzip layers that may be eStargz
	// without saying so (their footer tells).
	lazy := p.opts.Lazy && (l.TOCDigest != "" || lazyMediaType(l.MediaType))
	if p.store.HasLayer(l.DiffID) {
		rec, err := p.store.Layer(l.DiffID)
		// A lazy layer stays unless a full one is asked for.
		if err == nil && (!rec.Lazy || lazy) {
			l.UnpackedSize, l.Lazy, l.Source, l.TOCOffset = rec.UnpackedSize, rec.Lazy, rec.Source, rec.TOCOffset
			p.progress(ProgressEvent{Kind: EventLayerExists, Layer: l.Digest, Total: l.Size})
			return 0, false, nil
		}
		if err == nil {
			if err := p.store.removeLayer(l.DiffID); err != nil {
				return 0, false, err
			}
		}
	}
	var total int64
	err = p.opts.Retry.do(ctx, "layer "+l.Digest, p.log.Debug, func() error {
		p.progress(ProgressEvent{Kind: EventLayerStart, Layer: l.Digest, Total: l.Size})
		var n int64
		var err error
		if lazy {
			n, err = p.pullLazy(ctx, src, l)
			if errors.Is(err, errNotLazy) {
				if l.TOCDigest != "" {
					p.log.Info("eStargz layer pulled whole", "layer", l.Digest, "why", err)
				}
				lazy = false
			}
		}
		if !lazy {
			var m int64
			m, err = p.downloadLayer(ctx, src, l)
			n += m
		}
		total += n
		if err != nil && retryable(err) {
			p.progress(ProgressEvent{Kind: EventLayerRetry, Layer: l.Digest, Err: err})
		}
		return err
	})
	if err != nil {
		if isNotFound(err) {
			err = &NotFoundError{Ref: src.repo.Digest(l.Digest).String(), Err: err}
		}
		return total, true, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	if l.Lazy {
		p.progress(ProgressEvent{Kind: EventLayerLazy, Layer: l.Digest, Done: total, Total: l.Size})
	} else {
		p.progress(ProgressEvent{Kind: EventLayerDone, Layer: l.Digest, Done: l.Size, Total: l.Size})
	}
	return total, true, nil
}

// downloadLayer streams one blob from the registry through its digest
// check, the decompressor and the diff-ID check into the tar extractor, in
// a temporary directory that is renamed into place only when every check
// has passed. Nothing of a bad blob is ever stored.
func (p *Puller) downloadLayer(ctx context.Context, src source, l *LayerRecord) (int64, error) {
	final, err := p.store.LayerDir(l.DiffID)
	if err != nil {
		return 0, err
	}
	h := filepath.Base(final)
	tmp, err := os.MkdirTemp(filepath.Dir(final), ".tmp-"+h+"-")
	if err != nil {
		return 0, err
	}
	defer removeAll(tmp)

	rl, err := remote.Layer(src.repo.Digest(l.Digest), p.remoteOptions(ctx)...)
	if err != nil {
		return 0, err
	}
	rc, err := rl.Compressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()

	var body io.Reader = rc
	if m, ok := ctx.Value(backgroundKey{}).(*Remote); ok {
		body = yielding{r: rc, m: m}
	}
	counter := &countingReader{r: io.LimitReader(body, l.Size+1), onRead: func(n int64) {
		p.progress(ProgressEvent{Kind: EventLayerBytes, Layer: l.Digest, Done: n, Total: l.Size})
	}}
	blobHash := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(counter, blobHash), 1<<20)
	dec, err := decompressor(br)
	if err != nil {
		return counter.n, fmt.Errorf("blob %s: %w", l.Digest, err)
	}
	defer dec.Close()
	diffHash := sha256.New()
	tarStream := io.TeeReader(dec, diffHash)

	fsDir := filepath.Join(tmp, "fs")
	stats, applyErr := whiteout.Apply(ctx, tarStream, fsDir, whiteout.Options{
		Mode:       whiteout.Layer,
		Format:     layerFormat(),
		Privileged: os.Geteuid() == 0,
	})
	// The digests cover the whole stream: drain what the tar reader left
	// (end-of-archive padding) and the compressed trailer.
	_, drainErr := io.Copy(io.Discard, tarStream)
	// Even when decompression failed, read the rest of the blob so that the
	// error reported is about its bytes (digest, size) when they are wrong.
	if _, err := io.Copy(io.Discard, br); drainErr == nil {
		drainErr = err
	}
	if err := checkStream(counter, l, blobHash, diffHash); err != nil {
		return counter.n, err
	}
	if applyErr == nil && l.TOCDigest != "" {
		for _, n := range estargzFiles {
			os.Remove(filepath.Join(fsDir, n))
		}
	}
	if applyErr != nil {
		if retryable(applyErr) {
			return counter.n, applyErr // the stream broke under the extractor
		}
		return counter.n, &localError{fmt.Errorf("extract: %w", applyErr)}
	}
	if drainErr != nil {
		return counter.n, fmt.Errorf("blob %s: %w", l.Digest, drainErr)
	}
	l.UnpackedSize, l.Privileged = stats.Bytes, os.Geteuid() == 0
	meta, _ := json.MarshalIndent(l, "", "  ")
	if err := fsutil.WriteFileAtomic(filepath.Join(tmp, "layer.json"), meta, 0o600); err != nil {
		return counter.n, err
	}
	if err := syncfs(tmp); err != nil {
		return counter.n, err
	}
	// A lazy layer being completed is swapped for the whole one at once.
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE); errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE)
		if err != nil {
			return counter.n, fmt.Errorf("store layer %s: %w", l.DiffID, err)
		}
	} else if err != nil {
		return counter.n, fmt.Errorf("store layer %s: %w", l.DiffID, err)
	}
	return counter.n, fsutil.SyncDir(filepath.Dir(final))
}

func checkStream(c *countingReader, l *LayerRecord, blobHash, diffHash hash.Hash) error {
	if c.n > l.Size {
		return fmt.Errorf("blob %s is larger than the %d bytes the manifest declares", l.Digest, l.Size)
	}
	if c.n < l.Size {
		return &truncatedError{Digest: l.Digest, Got: c.n, Want: l.Size}
	}
	if got := "sha256:" + hex.EncodeToString(blobHash.Sum(nil)); got != l.Digest {
		return &DigestMismatchError{What: "blob", Want: l.Digest, Got: got}
	}
	if got := "sha256:" + hex.EncodeToString(diffHash.Sum(nil)); got != l.DiffID {
		return &DigestMismatchError{What: "layer diff ID (uncompressed) of " + l.Digest, Want: l.DiffID, Got: got}
	}
	return nil
}

// layerFormat is the whiteout form for extracted layers: the kernel
// overlayfs's own, with trusted.* xattrs when root and user.* otherwise.
func layerFormat() whiteout.WhiteoutFormat {
	if os.Geteuid() == 0 {
		return whiteout.FormatOverlay
	}
	return whiteout.FormatOverlayUser
}

func syncfs(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// decompressor picks gzip, zstd or none by the stream's magic bytes, not
// the media type, which registries and builders get wrong.
func decompressor(br *bufio.Reader) (io.ReadCloser, error) {
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		zr.Multistream(true)
		return zr, nil
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

type countingReader struct {
	r      io.Reader
	n      int64
	last   time.Time
	onRead func(int64)
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	if now := time.Now(); c.onRead != nil && (now.Sub(c.last) > 100*time.Millisecond || err != nil) {
		c.last = now
		c.onRead(c.n)
	}
	return n, err
}

// record writes the manifest, config and image record under the store lock,
// after checking every layer is still there.
func (p *Puller) record(ctx context.Context, ref Reference, mi *manifestInfo, layers []LayerRecord) (*ImageRecord, bool, error) {
	lock, err := p.store.lock(ctx)
	if err != nil {
		return nil, false, err
	}
	defer lock.Unlock()
	idx, err := p.store.readIndex()
	if err != nil {
		return nil, false, err
	}
	var size int64
	for i := range layers {
		if !p.store.HasLayer(layers[i].DiffID) {
			return nil, false, errLayerVanished
		}
		if layers[i].UnpackedSize == 0 {
			if rec, err := p.store.Layer(layers[i].DiffID); err == nil {
				layers[i].UnpackedSize = rec.UnpackedSize
			}
		}
		size += layers[i].UnpackedSize
	}
	_, existed := idx.Images[mi.digest]
	for _, b := range [][]byte{mi.raw, mi.configRaw, mi.indexRaw} {
		if b != nil {
			if err := p.store.PutBlob(sha256Digest(b), b); err != nil {
				return nil, false, err
			}
		}
	}
	rec := &ImageRecord{
		ManifestDigest: mi.digest,
		ConfigDigest:   mi.manifest.Config.Digest.String(),
		MediaType:      string(mi.mediaType),
		Platform:       platformString(mi.platform),
		Created:        mi.config.Created.Time,
		Pulled:         time.Now().UTC(),
		Size:           size,
		Layers:         layers,
	}
	if old, ok := idx.Images[mi.digest]; ok {
		rec.Pulled = old.Pulled
	}
	tagged := true
	if ref.Tag != "" {
		tagged = false
		if old, ok := idx.Images[mi.digest]; ok {
			for _, t := range old.Tags {
				tagged = tagged || t == ref.Repo+":"+ref.Tag
			}
		}
	}
	p.store.addImage(idx, rec, ref, ref.Repo+"@"+mi.repoDigest)
	if err := p.store.writeIndex(idx); err != nil {
		return nil, false, err
	}
	return rec, existed && tagged, nil
}
