//go:build !strata_noregistry

package lazypull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"

	"github.com/stratafs/strata/layertree"
)

// TreeOptions say what a mount of lazy layers does besides reading on
// demand.
type TreeOptions struct {
	// Background fetches each lazy layer whole once its prioritized files
	// are in: the blob is streamed, checked against its digest and diff
	// ID, and extracted like a full pull; the layer then reads from disk
	// and needs the network no more, in this mount and every later one.
	Background bool
}

// Trees are an image's layer trees, top first, for a mount: lazy layers
// start fetching their prioritized files (those before the eStargz
// prefetch landmark) at once in one request, and, with o.Background, the
// rest of the layer after them. ctx ends that work.
func (p *Puller) Trees(ctx context.Context, rec *ImageRecord, o TreeOptions) ([]layertree.Tree, error) {
	trees, lazy, err := p.store.trees(rec, p.remote)
	if err != nil {
		return nil, err
	}
	for _, t := range lazy {
		go func() {
			t.prefetch(ctx)
			if o.Background {
				p.complete(ctx, t)
			}
		}()
	}
	return trees, nil
}

// prefetch fetches the chunks before the prefetch landmark in one Range
// request into the cache. Failures only cost the later reads a fetch.
func (t *lazyTree) prefetch(ctx context.Context) {
	defer close(t.prefetched)
	mark, ok := t.r.Lookup(estargz.PrefetchLandmark)
	if !ok || mark.Offset <= 0 {
		return
	}
	// Readers of these chunks wait for this fetch rather than make their
	// own.
	var todo []pendingChunk
	for _, ce := range t.chunksBefore(mark.Offset) {
		d := chunkDigest(ce)
		if d == "" || t.cache.has(d) || min(ce.NextOffset(), mark.Offset) <= ce.Offset {
			continue
		}
		if f, owner := t.cache.begin(d); owner {
			todo = append(todo, pendingChunk{ce, d, f})
		}
	}
	if len(todo) == 0 {
		return
	}
	// One request, read as it arrives: each chunk is checked, cached and
	// handed to its readers before the next is read, so memory holds one.
	start := todo[0].ce.Offset
	body, err := t.blob.stream(ctx, start, mark.Offset-start)
	if err != nil {
		t.log.Warn("prefetch failed", "layer", t.blob.digest, "err", err)
		for _, p := range todo {
			t.cache.abandon(p.digest, p.flight)
		}
		return
	}
	defer body.Close()
	pos := start
	for i, p := range todo {
		end := min(p.ce.NextOffset(), mark.Offset)
		var raw []byte
		if err == nil {
			if _, err = io.CopyN(io.Discard, body, p.ce.Offset-pos); err == nil {
				raw = make([]byte, end-p.ce.Offset)
				_, err = io.ReadFull(body, raw)
				pos = end
			}
		}
		if err != nil {
			// The stream broke: the readers of the rest fetch on their own.
			t.cache.abandon(p.digest, p.flight)
			continue
		}
		if derr := t.cache.deliver(p, raw, nil); derr != nil {
			t.log.Warn("prefetch: chunk refused", "layer", t.blob.digest, "offset", p.ce.Offset, "err", derr)
		}
		// Its bytes go once its readers have them.
		todo[i] = pendingChunk{}
	}
	if err != nil {
		t.log.Warn("prefetch broke off", "layer", t.blob.digest, "err", err)
	}
}

// chunksBefore lists the data chunks that lie before offset in the blob,
// in blob order.
func (t *lazyTree) chunksBefore(offset int64) []*estargz.TOCEntry {
	var out []*estargz.TOCEntry
	seen := map[*estargz.TOCEntry]bool{}
	var walk func(e *estargz.TOCEntry)
	walk = func(e *estargz.TOCEntry) {
		e.ForeachChild(func(_ string, c *estargz.TOCEntry) bool {
			switch {
			case c.Type == "dir":
				walk(c)
			case c.Type == "reg" && c.Size > 0 && !seen[c]:
				seen[c] = true
				for off := int64(0); off < c.Size; {
					ce, ok := t.r.ChunkEntryForOffset(c.Name, off)
					if !ok || ce.ChunkSize <= 0 {
						break
					}
					if ce.Offset < offset {
						out = append(out, ce)
					}
					off = ce.ChunkOffset + ce.ChunkSize
				}
			}
			return true
		})
	}
	if root, ok := t.r.Lookup(""); ok {
		walk(root)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return out
}

// chunkDigest is the digest a chunk's bytes must have.
func chunkDigest(ce *estargz.TOCEntry) string {
	if ce.ChunkDigest != "" {
		return ce.ChunkDigest
	}
	if ce.Type == "reg" && ce.ChunkSize == ce.Size {
		return ce.Digest // a file of one chunk may carry only its own digest
	}
	return ""
}

// pendingChunk is a chunk whose fetch the caller began (chunkCache.begin).
type pendingChunk struct {
	ce     *estargz.TOCEntry
	digest string
	flight *flight
}

// deliver decompresses a pending chunk's compressed bytes (raw, or the
// error fetching them) and finishes its fetch: checked, cached and handed
// to the readers waiting.
func (c *chunkCache) deliver(p pendingChunk, raw []byte, err error) error {
	var data []byte
	if err == nil {
		data, err = decompressChunk(raw, p.ce)
	}
	_, err = c.finish(p.digest, p.flight, data, err)
	return err
}

// decompressChunk returns a chunk's bytes from its compressed ones.
func decompressChunk(raw []byte, ce *estargz.TOCEntry) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("chunk at %d: %w", ce.Offset, err)
	}
	defer zr.Close()
	if _, err := io.CopyN(io.Discard, zr, ce.InnerOffset); err != nil {
		return nil, fmt.Errorf("chunk at %d: %w", ce.Offset, err)
	}
	out := make([]byte, ce.ChunkSize)
	if _, err := io.ReadFull(zr, out); err != nil {
		return nil, fmt.Errorf("chunk at %d: %w", ce.Offset, err)
	}
	return out, nil
}

// complete fetches a lazy layer whole, as a full pull does, and swaps it
// in; the tree then reads from the extracted files.
func (p *Puller) complete(ctx context.Context, t *lazyTree) {
	defer close(t.completed)
	lock, err := p.store.lockLayer(ctx, t.rec.DiffID)
	if err != nil {
		return
	}
	defer lock.Unlock()
	if stored, err := p.store.Layer(t.rec.DiffID); err == nil && !stored.Lazy {
		t.useExtracted(p.store) // another process completed it
		return
	}
	full := t.rec
	full.Lazy, full.TOCOffset = false, 0
	ctx = inBackground(ctx, p.remote)
	src := source{repo: t.blob.repo}
	err = p.opts.Retry.do(ctx, "layer "+full.Digest, p.log.Debug, func() error {
		_, err := p.downloadLayer(ctx, src, &full)
		return err
	})
	var mismatch *DigestMismatchError
	if errors.As(err, &mismatch) && t.rec.TOCFromFooter {
		// The blob is not what the manifest names, and nothing else
		// vouched for the TOC the reads trusted: read nothing more.
		t.broken.Store(&err)
		p.log.Error("lazy layer found by its footer does not match its digest; its files now fail to read", "layer", full.Digest, "err", err)
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("background fetch of a lazy layer failed; it stays lazy", "layer", full.Digest, "err", err)
		}
		return
	}
	t.useExtracted(p.store)
	p.log.Info("lazy layer complete", "layer", full.Digest)
}

// useExtracted switches the tree's file reads to the extracted layer.
func (t *lazyTree) useExtracted(s *Store) {
	stored, err := s.Layer(t.rec.DiffID)
	if err != nil {
		return
	}
	dir, err := s.layerDir(stored)
	if err != nil {
		return
	}
	t.extracted.Store(dir)
}

// localReader is a lazy file's extracted counterpart, opened once.
type localReader struct {
	once sync.Once
	f    layertree.File
	err  error
}
