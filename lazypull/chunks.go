//go:build !strata_noregistry

package lazypull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stratafs/strata/internal/fsutil"
)

// chunkCache keeps the uncompressed chunks of lazy layers on disk, named
// by their digest, so layers and images that share content share it. A
// chunk is written whole to a temporary file and renamed into place only
// after its digest was checked: a crash never leaves a partial chunk
// under a chunk's name.
type chunkCache struct {
	dir string
	// max bounds the cache (0: no bound): past an eighth of it written,
	// least recently used chunks of layers not in use are evicted.
	max     int64
	store   *Store
	written atomic.Int64
	pruning atomic.Bool

	mu      sync.Mutex
	flights map[string]*flight
	// touched is when a chunk's use was last recorded (its mtime).
	touched map[string]time.Time
}

type flight struct {
	done chan struct{}
	data []byte
	err  error
}

func newChunkCache(s *Store, max int64) (*chunkCache, error) {
	dir := filepath.Join(s.root, "chunks", "sha256")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &chunkCache{dir: dir, max: max, store: s, flights: map[string]*flight{}, touched: map[string]time.Time{}}, nil
}

// used records that a cached chunk was read, for least-recently-used
// eviction: its mtime, at most once a minute.
func (c *chunkCache) used(digest, path string) {
	now := time.Now()
	c.mu.Lock()
	last, ok := c.touched[digest]
	if ok && now.Sub(last) < time.Minute {
		c.mu.Unlock()
		return
	}
	c.touched[digest] = now
	c.mu.Unlock()
	os.Chtimes(path, now, now)
}

// grew accounts for n bytes written, evicting in the background when the
// cache may have passed its bound.
func (c *chunkCache) grew(n int64) {
	if c.max <= 0 || c.written.Add(n) < c.max/8 || !c.pruning.CompareAndSwap(false, true) {
		return
	}
	c.written.Store(0)
	go func() {
		defer c.pruning.Store(false)
		c.store.PruneCache(context.Background(), c.max)
	}()
}

func (c *chunkCache) path(digest string) (string, error) {
	h, err := digestHex(digest)
	if err != nil {
		return "", err
	}
	return filepath.Join(c.dir, h), nil
}

// readAt reads the chunk's bytes at off into p from the cache, fetching
// the chunk first when it is missing. Concurrent readers of a missing
// chunk wait for one fetch.
func (c *chunkCache) readAt(ctx context.Context, digest string, p []byte, off int64, fetch func(context.Context) ([]byte, error)) (int, error) {
	path, err := c.path(digest)
	if err != nil {
		return 0, err
	}
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		c.used(digest, path)
		n, err := f.ReadAt(p, off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return n, err
	}
	data, err := c.fetchOnce(ctx, digest, fetch)
	if err != nil {
		return 0, err
	}
	if off >= int64(len(data)) {
		return 0, nil
	}
	return copy(p, data[off:]), nil
}

func (c *chunkCache) fetchOnce(ctx context.Context, digest string, fetch func(context.Context) ([]byte, error)) ([]byte, error) {
	f, owner := c.begin(digest)
	if !owner {
		select {
		case <-f.done:
			if errors.Is(f.err, errAbandoned) {
				return c.fetchOnce(ctx, digest, fetch)
			}
			return f.data, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	data, err := fetch(ctx)
	return c.finish(digest, f, data, err)
}

// begin returns the fetch of a chunk under way, or starts one that the
// caller (owner) must finish.
func (c *chunkCache) begin(digest string) (f *flight, owner bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.flights[digest]; ok {
		return f, false
	}
	f = &flight{done: make(chan struct{})}
	c.flights[digest] = f
	return f, true
}

// abandon gives up a fetch begun: those waiting fetch on their own.
func (c *chunkCache) abandon(digest string, f *flight) {
	c.mu.Lock()
	delete(c.flights, digest)
	c.mu.Unlock()
	f.err = errAbandoned
	close(f.done)
}

var errAbandoned = fmt.Errorf("fetch abandoned")

// finish checks a fetched chunk against its digest, caches it and hands
// it to those waiting.
func (c *chunkCache) finish(digest string, f *flight, data []byte, err error) ([]byte, error) {
	defer func() {
		c.mu.Lock()
		delete(c.flights, digest)
		c.mu.Unlock()
		close(f.done)
	}()
	if err != nil {
		f.err = err
		return nil, err
	}
	if got := sha256Digest(data); got != digest {
		f.err = &DigestMismatchError{What: "chunk", Want: digest, Got: got}
		return nil, f.err
	}
	// A failure to cache is no failure to read.
	if path, err := c.path(digest); err == nil && fsutil.WriteFileAtomic(path, data, 0o600) == nil {
		c.grew(int64(len(data)))
	}
	f.data = data
	return data, nil
}

// has tells whether a chunk is cached.
func (c *chunkCache) has(digest string) bool {
	path, err := c.path(digest)
	if err != nil {
		return false
	}
	_, err = os.Stat(path)
	return err == nil
}

var errNoChunkDigest = fmt.Errorf("eStargz chunk without a digest")
