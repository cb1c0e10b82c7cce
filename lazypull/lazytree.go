//go:build !strata_noregistry

package lazypull

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/layertree"
	"github.com/stratafs/strata/whiteout"
)

// lazyTree is a layer whose entries come from its eStargz TOC and whose
// files' bytes are fetched from the registry chunk by chunk when read,
// checked against the TOC's digests and kept in the chunk cache.
type lazyTree struct {
	r         *estargz.Reader
	blob      *blob
	tocOffset int64
	cache     *chunkCache
	log       *slog.Logger
	// ino numbers the TOC's entries in a fixed order (hardlinks share
	// one), so numbers are the same at every mount.
	ino map[*estargz.TOCEntry]uint64
	rec LayerRecord
	// extracted is the layer once fetched whole: files are read from it.
	extracted atomic.Pointer[layertree.Dir]
	// broken: the layer, found eStargz by its footer alone, turned out
	// not to match its digest once whole; every read fails.
	broken atomic.Pointer[error]
	// servedLazily are the files opened before the layer was whole
	// (hardlinks share an entry), guarded by openMu.
	openMu       sync.Mutex
	servedLazily map[*estargz.TOCEntry]bool
	// prefetched and completed close when that work is over.
	prefetched, completed chan struct{}
}

// openLazyTree opens a lazy layer from its stored TOC.
func (s *Store) openLazyTree(l LayerRecord, remote *Remote, cache *chunkCache) (*lazyTree, error) {
	dir, err := s.LayerDir(l.DiffID)
	if err != nil {
		return nil, err
	}
	tail, err := os.ReadFile(filepath.Join(dir, tocFile))
	if err != nil {
		return nil, fmt.Errorf("lazy layer %s: %w", l.DiffID, err)
	}
	want, err := digest.Parse(l.TOCDigest)
	if err != nil {
		return nil, fmt.Errorf("lazy layer %s: %w", l.DiffID, err)
	}
	r, err := readTOC(tail, l.TOCOffset, l.Size, want)
	if err != nil {
		return nil, fmt.Errorf("lazy layer %s: %w", l.DiffID, err)
	}
	repo, err := remote.repository(l.Source)
	if err != nil {
		return nil, fmt.Errorf("lazy layer %s: %w", l.DiffID, err)
	}
	t := &lazyTree{r: r, blob: remote.blob(repo, l.Digest, l.Size), tocOffset: l.TOCOffset, cache: cache, log: remote.log,
		ino: map[*estargz.TOCEntry]uint64{}, servedLazily: map[*estargz.TOCEntry]bool{}, rec: l, prefetched: make(chan struct{}), completed: make(chan struct{})}
	root, ok := r.Lookup("")
	if !ok {
		return nil, fmt.Errorf("lazy layer %s: TOC has no root", l.DiffID)
	}
	t.number(root)
	return t, nil
}

func (t *lazyTree) number(e *estargz.TOCEntry) {
	if _, ok := t.ino[e]; ok {
		return
	}
	t.ino[e] = uint64(len(t.ino) + 1)
	var names []string
	kids := map[string]*estargz.TOCEntry{}
	e.ForeachChild(func(name string, c *estargz.TOCEntry) bool {
		names = append(names, name)
		kids[name] = c
		return true
	})
	sort.Strings(names)
	for _, n := range names {
		t.number(kids[n])
	}
}

func notExist(p string) error {
	return &os.PathError{Op: "stat", Path: p, Err: syscall.ENOENT}
}

// estargzFiles are the files eStargz adds at a layer's root, which are
// no part of the image's content: hidden whether the layer is read
// lazily or whole.
var estargzFiles = []string{estargz.TOCTarName, estargz.PrefetchLandmark, estargz.NoPrefetchLandmark}

func estargzInternal(p string) bool { return slices.Contains(estargzFiles, p) }

func (t *lazyTree) Stat(_ context.Context, p string) (layertree.Entry, error) {
	if estargzInternal(p) {
		return layertree.Entry{}, notExist(p)
	}
	e, ok := t.r.Lookup(p)
	if ok {
		return t.entry(path.Base("/"+p), e), nil
	}
	dir, name := path.Split(p)
	if parent, ok := t.r.Lookup(path.Clean("/" + dir)[1:]); ok {
		if _, wh := parent.LookupChild(whiteout.Prefix + name); wh {
			return layertree.Entry{Name: name, Whiteout: true, Mode: layertree.ModeChar}, nil
		}
	}
	return layertree.Entry{}, notExist(p)
}

func (t *lazyTree) ReadDir(_ context.Context, p string) ([]layertree.Entry, error) {
	e, ok := t.r.Lookup(p)
	if !ok {
		return nil, notExist(p)
	}
	if e.Type != "dir" {
		return nil, &os.PathError{Op: "readdir", Path: p, Err: syscall.ENOTDIR}
	}
	var out []layertree.Entry
	e.ForeachChild(func(name string, c *estargz.TOCEntry) bool {
		switch kind, target, err := whiteout.ClassifyName(name); {
		case err != nil, kind == whiteout.Opaque, p == "" && estargzInternal(name):
		case kind == whiteout.Whiteout:
			out = append(out, layertree.Entry{Name: target, Whiteout: true, Mode: layertree.ModeChar})
		default:
			out = append(out, t.entry(name, c))
		}
		return true
	})
	return out, nil
}

func (t *lazyTree) entry(name string, e *estargz.TOCEntry) layertree.Entry {
	out := layertree.Entry{
		Name: name, Mode: typeBits(e.Type) | uint32(e.Mode)&0o7777, UID: uint32(e.UID), GID: uint32(e.GID),
		Mtime: e.ModTime(), Nlink: uint32(max(e.NumLink, 1)), Ino: t.ino[e],
	}
	switch e.Type {
	case "reg":
		out.Size = e.Size
	case "symlink":
		out.Target, out.Size = e.LinkName, int64(len(e.LinkName))
	case "char", "block":
		out.Rdev = unix.Mkdev(uint32(e.DevMajor), uint32(e.DevMinor))
	case "dir":
		// What an extracted layer's small directory has (as stargz-store
		// shows too): the TOC does not say.
		out.Size, out.Blocks = 4096, 8
		_, out.Opaque = e.LookupChild(whiteout.OpaqueMarker)
		out.Opaque = out.Opaque || string(e.Xattrs["trusted.overlay.opaque"]) == "y"
		// Parents the tar never listed (estargz makes them 0755 root,
		// without a time): their attributes come from the layers below.
		out.Implied = e.ModTime3339 == "" && name != "" && e.Mode == 0o755 && e.UID == 0 && e.GID == 0 && len(e.Xattrs) == 0
	}
	return out
}

func typeBits(t string) uint32 {
	switch t {
	case "dir":
		return layertree.ModeDir
	case "symlink":
		return layertree.ModeSymlink
	case "char":
		return layertree.ModeChar
	case "block":
		return layertree.ModeBlock
	case "fifo":
		return layertree.ModeFIFO
	}
	return layertree.ModeRegular
}

func (t *lazyTree) Xattrs(_ context.Context, p string) (map[string][]byte, error) {
	e, ok := t.r.Lookup(p)
	if !ok {
		return nil, notExist(p)
	}
	out := map[string][]byte{}
	for k, v := range e.Xattrs {
		if shown, ok := layertree.Shown(k); ok {
			out[shown] = v
		}
	}
	return out, nil
}

func (t *lazyTree) Open(ctx context.Context, p string) (layertree.File, error) {
	e, ok := t.r.Lookup(p)
	if !ok {
		return nil, notExist(p)
	}
	if e.Type != "reg" {
		return nil, &os.PathError{Op: "open", Path: p, Err: syscall.EINVAL}
	}
	t.openMu.Lock()
	defer t.openMu.Unlock()
	if d := t.extracted.Load(); d != nil {
		// Whole now: read from the disk, handed to the kernel
		// (passthrough) unless this mount has served the file itself
		// before, which the kernel refuses to mix with passthrough.
		f, err := d.Open(ctx, e.Name)
		if err != nil || !t.servedLazily[e] {
			return f, err
		}
		return servedFile{f}, nil
	}
	t.servedLazily[e] = true
	return &lazyFile{t: t, e: e}, nil
}

// servedFile hides that a file is local, so the union serves its reads.
type servedFile struct{ f layertree.File }

func (s servedFile) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }
func (s servedFile) Close() error                            { return s.f.Close() }

// lazyFile reads a file of a lazy layer.
type lazyFile struct {
	t     *lazyTree
	e     *estargz.TOCEntry
	local localReader
}

func (f *lazyFile) Close() error {
	if f.local.f != nil {
		return f.local.f.Close()
	}
	return nil
}

// ReadAt reads through the chunks the range covers. Any failure (the
// registry unreachable after retries, a chunk whose bytes do not match
// its digest) is EIO: never wrong bytes.
func (f *lazyFile) ReadAt(p []byte, off int64) (int, error) {
	ctx := context.Background()
	if d := f.t.extracted.Load(); d != nil {
		f.local.once.Do(func() { f.local.f, f.local.err = d.Open(ctx, f.e.Name) })
		if f.local.err == nil {
			return f.local.f.ReadAt(p, off)
		}
	}
	if broken := f.t.broken.Load(); broken != nil {
		return 0, f.fail(*broken)
	}
	f.fetchMissing(ctx, off, int64(len(p)))
	n := 0
	for n < len(p) && off < f.e.Size {
		ce, ok := f.t.r.ChunkEntryForOffset(f.e.Name, off)
		if !ok {
			return n, f.fail(fmt.Errorf("no chunk at offset %d", off))
		}
		d := chunkDigest(ce)
		if d == "" {
			return n, f.fail(errNoChunkDigest)
		}
		want := min(int64(len(p)-n), ce.ChunkOffset+ce.ChunkSize-off)
		got, err := f.t.cache.readAt(ctx, d, p[n:n+int(want)], off-ce.ChunkOffset, func(ctx context.Context) ([]byte, error) {
			return f.t.fetchChunk(ctx, ce)
		})
		n += got
		off += int64(got)
		if err != nil {
			return n, f.fail(err)
		}
		if int64(got) < want {
			return n, f.fail(fmt.Errorf("short chunk at offset %d", off))
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fetchMissing fetches the chunks of [off, off+n) that are not cached:
// neighbours in the blob as one span, all spans in one multi-range
// request where the registry allows. A lone chunk is left to the read.
func (f *lazyFile) fetchMissing(ctx context.Context, off, n int64) {
	if first, ok := f.t.r.ChunkEntryForOffset(f.e.Name, off); !ok || off+n <= first.ChunkOffset+first.ChunkSize {
		return // within one chunk: the read fetches it as it would anyway
	}
	var runs [][]pendingChunk
	for pos := off; pos < min(off+n, f.e.Size); {
		ce, ok := f.t.r.ChunkEntryForOffset(f.e.Name, pos)
		if !ok || ce.ChunkSize <= 0 {
			break
		}
		pos = ce.ChunkOffset + ce.ChunkSize
		d := chunkDigest(ce)
		if d == "" || f.t.cache.has(d) {
			continue
		}
		fl, owner := f.t.cache.begin(d)
		if !owner {
			continue // someone fetches it already
		}
		p := pendingChunk{ce, d, fl}
		if last := len(runs) - 1; last >= 0 && runs[last][len(runs[last])-1].ce.NextOffset() == ce.Offset {
			runs[last] = append(runs[last], p)
		} else {
			runs = append(runs, []pendingChunk{p})
		}
	}
	if len(runs) == 1 && len(runs[0]) == 1 {
		f.t.cache.abandon(runs[0][0].digest, runs[0][0].flight)
		return
	}
	if len(runs) == 0 {
		return
	}
	end := func(ce *estargz.TOCEntry) int64 { return min(ce.NextOffset(), f.t.tocOffset) }
	spans := make([]span, len(runs))
	for i, run := range runs {
		spans[i] = span{run[0].ce.Offset, end(run[len(run)-1].ce) - run[0].ce.Offset}
	}
	f.t.blob.r.onDemand.Add(1)
	raws, err := f.t.blob.readSpans(ctx, spans)
	f.t.blob.r.onDemand.Add(-1)
	for i, run := range runs {
		for _, p := range run {
			var raw []byte
			if err == nil {
				start := spans[i].off
				raw = raws[i][p.ce.Offset-start : end(p.ce)-start]
			}
			// The reads waiting get the outcome, a failure too: the
			// registry was retried for as long as a read waits.
			f.t.cache.deliver(p, raw, err)
		}
		if err == nil {
			raws[i] = nil // done with: let it go
		}
	}
}

func (f *lazyFile) fail(err error) error {
	f.t.log.Error("lazy read failed", "file", f.e.Name, "layer", f.t.blob.digest, "err", err)
	return &os.PathError{Op: "read", Path: f.e.Name, Err: syscall.EIO}
}

// fetchChunk fetches one chunk's compressed bytes and decompresses them.
func (t *lazyTree) fetchChunk(ctx context.Context, ce *estargz.TOCEntry) ([]byte, error) {
	t.blob.r.onDemand.Add(1)
	defer t.blob.r.onDemand.Add(-1)
	end := min(ce.NextOffset(), t.tocOffset)
	if end <= ce.Offset {
		return nil, fmt.Errorf("chunk at %d has no bytes before %d", ce.Offset, end)
	}
	raw, err := t.blob.readRangeWaiting(ctx, ce.Offset, end-ce.Offset)
	if err != nil {
		return nil, err
	}
	return decompressChunk(raw, ce)
}

// Trees are an image's layer trees, top first: extracted layers as
// directories, lazy ones read through remote and the chunk cache, on
// demand only (Puller.Trees also prefetches).
func (s *Store) Trees(rec *ImageRecord, remote *Remote) ([]layertree.Tree, error) {
	trees, _, err := s.trees(rec, remote)
	return trees, err
}

func (s *Store) trees(rec *ImageRecord, remote *Remote) ([]layertree.Tree, []*lazyTree, error) {
	var cache *chunkCache
	var lazy []*lazyTree
	out := make([]layertree.Tree, 0, len(rec.Layers))
	for i := len(rec.Layers) - 1; i >= 0; i-- {
		stored, err := s.storedLayer(rec, rec.Layers[i].DiffID)
		if err != nil {
			return nil, nil, err
		}
		if !stored.Lazy {
			t, err := s.layerDir(stored)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, t)
			continue
		}
		if cache == nil {
			if cache, err = newChunkCache(s, remote.opts.CacheMax); err != nil {
				return nil, nil, err
			}
		}
		t, err := s.openLazyTree(stored, remote, cache)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, t)
		lazy = append(lazy, t)
	}
	return out, lazy, nil
}
