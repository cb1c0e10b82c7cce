//go:build !strata_noregistry

package lazypull

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// CacheUsage is what the chunk cache holds.
type CacheUsage struct {
	Chunks int
	Bytes  int64
	// Reclaimable is what eviction may free: chunks no layer in use needs.
	Reclaimable int64
}

type cachedChunk struct {
	path   string
	digest string
	size   int64
	used   int64 // mtime: when it was fetched, or last read
}

func (s *Store) listChunks() []cachedChunk {
	dir := filepath.Join(s.root, "chunks", "sha256")
	ents, _ := os.ReadDir(dir)
	out := make([]cachedChunk, 0, len(ents))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		out = append(out, cachedChunk{path: filepath.Join(dir, e.Name()), digest: "sha256:" + e.Name(), size: fi.Size(), used: fi.ModTime().UnixNano()})
	}
	return out
}

// neededChunks are the chunk digests of the lazy layers of images in use
// (pinned by a mount or a container): eviction keeps them.
func (s *Store) neededChunks() map[string]bool {
	need := map[string]bool{}
	imgs, err := s.Images()
	if err != nil {
		return need
	}
	seen := map[string]bool{}
	for _, rec := range imgs {
		if s.pinsOf(rec) == 0 {
			continue
		}
		for _, l := range rec.Layers {
			if seen[l.DiffID] {
				continue
			}
			seen[l.DiffID] = true
			stored, err := s.Layer(l.DiffID)
			if err != nil || !stored.Lazy {
				continue
			}
			dir, _ := s.LayerDir(l.DiffID)
			toc, err := storedTOC(filepath.Join(dir, tocFile))
			if err != nil {
				continue
			}
			for _, e := range toc.Entries {
				if e.ChunkDigest != "" {
					need[e.ChunkDigest] = true
				} else if e.Type == "reg" && e.Digest != "" {
					need[e.Digest] = true
				}
			}
		}
	}
	return need
}

// CacheUsage measures the chunk cache.
func (s *Store) CacheUsage() CacheUsage {
	need := s.neededChunks()
	var u CacheUsage
	for _, c := range s.listChunks() {
		u.Chunks++
		u.Bytes += c.size
		if !need[c.digest] {
			u.Reclaimable += c.size
		}
	}
	return u
}

// PruneCache evicts chunks, least recently used first, until the cache
// holds at most max bytes, keeping those of lazy layers in use. It
// returns the bytes freed.
func (s *Store) PruneCache(ctx context.Context, max int64) int64 {
	chunks := s.listChunks()
	var total int64
	for _, c := range chunks {
		total += c.size
	}
	if total <= max {
		return 0
	}
	need := s.neededChunks()
	sort.Slice(chunks, func(i, j int) bool { return chunks[i].used < chunks[j].used })
	var freed int64
	for _, c := range chunks {
		if total <= max || ctx.Err() != nil {
			break
		}
		if need[c.digest] {
			continue
		}
		if os.Remove(c.path) == nil {
			total -= c.size
			freed += c.size
		}
	}
	return freed
}

// PrefetchBytes sums, over the lazy layers of the store at root, the
// compressed bytes before each layer's prefetch landmark: what an
// optimized image says its workload reads.
func PrefetchBytes(root string) (int64, error) {
	tocs, err := filepath.Glob(filepath.Join(root, "layers", "*", tocFile))
	if err != nil {
		return 0, err
	}
	var total int64
	for _, p := range tocs {
		toc, err := storedTOC(p)
		if err != nil {
			return 0, err
		}
		var first int64 = -1
		for _, e := range toc.Entries {
			if (e.Type == "reg" || e.Type == "chunk") && e.Offset > 0 && first < 0 {
				first = e.Offset
			}
			if e.Name == estargz.PrefetchLandmark && first >= 0 {
				total += e.Offset - first
				break
			}
		}
	}
	return total, nil
}

// storedTOC parses the TOC a lazy layer keeps at path.
func storedTOC(path string) (*estargz.JTOC, error) {
	tail, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	toc, _, err := new(estargz.GzipDecompressor).ParseTOC(bytes.NewReader(tail))
	return toc, err
}
