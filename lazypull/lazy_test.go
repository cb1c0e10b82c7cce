package lazypull

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
	"github.com/stratafs/strata/layertree"
)

// blobTraffic records the blob bytes a registry serves.
type blobTraffic struct {
	mu     sync.Mutex
	bytes  int64
	ranges []string
	// mangle, when set, rewrites ranged blob responses; mangleWhole
	// the others.
	mangle, mangleWhole atomic.Pointer[func([]byte) []byte]
	down                atomic.Bool
}

func (bt *blobTraffic) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/sha256:") || r.Method != http.MethodGet {
			next.ServeHTTP(w, r)
			return
		}
		if bt.down.Load() {
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		}
		rec := &captureWriter{header: http.Header{}}
		next.ServeHTTP(rec, r)
		body := rec.body
		if m := bt.mangle.Load(); m != nil && r.Header.Get("Range") != "" {
			body = (*m)(body)
		}
		if m := bt.mangleWhole.Load(); m != nil && r.Header.Get("Range") == "" {
			body = (*m)(body)
		}
		bt.mu.Lock()
		bt.bytes += int64(len(body))
		if rg := r.Header.Get("Range"); rg != "" {
			bt.ranges = append(bt.ranges, rg)
		}
		bt.mu.Unlock()
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		w.Write(body)
	})
}

// served is the blob bytes served and the number of Range requests.
func (bt *blobTraffic) served() (int64, int) {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	return bt.bytes, len(bt.ranges)
}

// pushEstargz pushes Debian's busybox as an eStargz image in 64 KiB
// chunks and returns its reference, the original image, and the size of
// its one layer's blob.
func pushEstargz(t *testing.T, reg *testregistry.Registry, mutateImg func(v1.Image) v1.Image, prioritized ...string) (string, int64) {
	t.Helper()
	testenv.RequireBinary(t, testimage.BusyboxPath)
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	eimg, err := EstargzImage(img, ConvertOptions{ChunkSize: 64 << 10, Prioritized: prioritized})
	if err != nil {
		t.Fatal(err)
	}
	if mutateImg != nil {
		eimg = mutateImg(eimg)
	}
	ref := reg.Ref("lazy/busybox:v1")
	if err := testimage.Push(context.Background(), ref, eimg); err != nil {
		t.Fatal(err)
	}
	layers, _ := eimg.Layers()
	size, _ := layers[0].Size()
	return ref, size
}

// pullLazily pushes busybox as eStargz to a registry whose blob traffic
// bt records, and pulls it lazily into a new store; it returns the puller
// and the result, and the size of the image's one layer blob.
func pullLazily(t *testing.T, bt *blobTraffic, prioritized ...string) (*Puller, *PullResult, int64) {
	t.Helper()
	reg := testregistry.Start(t, testregistry.Options{Middleware: bt.middleware})
	ref, size := pushEstargz(t, reg, nil, prioritized...)
	p := NewPuller(newStore(t), Options{Lazy: true, Retry: fastRetry})
	res, err := p.Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return p, res, size
}

func lazyTrees(t *testing.T, s *Store, rec *ImageRecord, o Options) []layertree.Tree {
	t.Helper()
	trees, err := s.Trees(rec, NewRemote(o))
	if err != nil {
		t.Fatal(err)
	}
	return trees
}

func readFile(t *testing.T, tree layertree.Tree, p string) ([]byte, error) {
	t.Helper()
	e, err := tree.Stat(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := tree.Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, e.Size)
	n, err := f.ReadAt(buf, 0)
	if errors.Is(err, io.EOF) && int64(n) == e.Size {
		err = nil
	}
	return buf[:n], err
}

func TestLazyPullFetchesOnlyTheTOC(t *testing.T) {
	var bt blobTraffic
	p, res, blobSize := pullLazily(t, &bt)
	s := p.store
	l := res.Image.Layers[0]
	if !l.Lazy || l.TOCDigest == "" || l.UnpackedSize == 0 {
		t.Fatalf("layer record: %+v", l)
	}
	pulled, requests := bt.served()
	if pulled >= blobSize/4 || requests != 2 {
		t.Errorf("lazy pull fetched %d of %d blob bytes in %d requests, want the footer and the TOC only", pulled, blobSize, requests)
	}

	trees := lazyTrees(t, s, res.Image, Options{Retry: fastRetry, ReadTimeout: 300 * time.Millisecond})
	tree := trees[0]
	ents, err := tree.ReadDir(context.Background(), "bin")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]layertree.Entry{}
	for _, e := range ents {
		names[e.Name] = e
	}
	if names["sh"].Type() != layertree.ModeSymlink && names["sh"].Type() != layertree.ModeRegular {
		t.Errorf("bin/sh: %+v", names["sh"])
	}
	if _, err := tree.Stat(context.Background(), "stargz.index.json"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the TOC shows in the tree: %v", err)
	}
	want, err := os.ReadFile(testimage.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readFile(t, tree, "bin/busybox")
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("bin/busybox read lazily: %d bytes, %v; want the %d bytes of %s", len(got), err, len(want), testimage.BusyboxPath)
	}
	afterRead, afterRequests := bt.served()
	if afterRead-pulled > blobSize {
		t.Errorf("reading one file fetched %d bytes, more than the whole %d-byte blob", afterRead-pulled, blobSize)
	}
	// Its 64 KiB chunks lie side by side in the blob: one request.
	if n := afterRequests - requests; n != 1 {
		t.Errorf("reading a file of %d chunks at once made %d Range requests, want 1", len(want)/(64<<10)+1, n)
	}
	// Cached: a second mount reads it without the registry.
	bt.down.Store(true)
	again := lazyTrees(t, s, res.Image, Options{Retry: fastRetry, ReadTimeout: 300 * time.Millisecond})
	if got, err := readFile(t, again[0], "bin/busybox"); err != nil || !bytes.Equal(got, want) {
		t.Errorf("cached read with the registry down: %d bytes, %v", len(got), err)
	}
}

func TestLazyReadFaults(t *testing.T) {
	var bt blobTraffic
	p, res, _ := pullLazily(t, &bt)
	s := p.store
	tree := lazyTrees(t, s, res.Image, Options{Retry: fastRetry, ReadTimeout: 300 * time.Millisecond})[0]

	// Wrong bytes from the registry: EIO, and no wrong bytes cached.
	bt.mangle.Store(flipByte(2))
	if _, err := readFile(t, tree, "bin/busybox"); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of corrupted chunks: %v, want EIO", err)
	}
	// Chunks that came whole in the same response are kept, checked.
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "chunks", "sha256"))
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(s.Root(), "chunks", "sha256", e.Name()))
		if sha256Digest(b) != "sha256:"+e.Name() {
			t.Errorf("a corrupted chunk was cached: %s", e.Name())
		}
	}
	bt.mangle.Store(nil)

	// The registry away: EIO once the read timeout (300 ms here) has
	// passed in retries; back: the same tree reads.
	bt.down.Store(true)
	start := time.Now()
	if _, err := readFile(t, tree, "bin/busybox"); !errors.Is(err, syscall.EIO) {
		t.Errorf("read with the registry down: %v, want EIO", err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("a read with the registry down gave up after %v, before retrying for its timeout", waited)
	}
	bt.down.Store(false)
	want, _ := os.ReadFile(testimage.BusyboxPath)
	if got, err := readFile(t, tree, "bin/busybox"); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read once the registry is back: %d bytes, %v", len(got), err)
	}
}

func TestLazyPullRefusesALyingTOC(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	ref, _ := pushEstargz(t, reg, func(img v1.Image) v1.Image {
		out, err := replaceTOCDigest(img, "sha256:"+strings.Repeat("0", 64))
		if err != nil {
			t.Fatal(err)
		}
		return out
	})
	_, err := NewPuller(newStore(t), Options{Lazy: true, Retry: fastRetry}).Pull(context.Background(), ref)
	if err == nil || !strings.Contains(err.Error(), "eStargz TOC digest mismatch") {
		t.Errorf("pull of a layer whose TOC does not match its annotation: %v", err)
	}
}

// replaceTOCDigest rebuilds the image with another TOC digest annotation
// on its layers, or none when d is "".
func replaceTOCDigest(img v1.Image, d string) (v1.Image, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.RootFS.DiffIDs, cfg.History = nil, nil
	out, err := mutate.ConfigFile(mutate.MediaType(empty.Image, types.OCIManifestSchema1), cfg)
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		add := mutate.Addendum{Layer: l}
		if d != "" {
			add.Annotations = map[string]string{TOCDigestAnnotation: d}
		}
		if out, err = mutate.Append(out, add); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// TestChunkCacheRefusesWrongBytes: bytes that do not match the chunk's
// digest (a TOC that lies about a chunk) are an error and never cached.
func TestChunkCacheRefusesWrongBytes(t *testing.T) {
	c, err := newChunkCache(newStore(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	good := []byte("the chunk's bytes")
	d := sha256Digest(good)
	buf := make([]byte, 5)
	_, err = c.readAt(context.Background(), d, buf, 0, func(context.Context) ([]byte, error) { return []byte("other bytes here!"), nil })
	var mm *DigestMismatchError
	if !errors.As(err, &mm) || c.has(d) {
		t.Fatalf("wrong bytes: %v, cached %v", err, c.has(d))
	}
	var fetches atomic.Int32
	fetch := func(context.Context) ([]byte, error) { fetches.Add(1); return good, nil }
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 5)
			if n, err := c.readAt(context.Background(), d, b, 4, fetch); err != nil || string(b[:n]) != "chunk" {
				t.Errorf("read: %q %v", b[:n], err)
			}
		}()
	}
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches for one chunk", n)
	}
}

// TestLazyPrefetchThenBackground: the files put before the prefetch
// landmark arrive at mount in one request; then the whole layer arrives,
// is checked against its digests, replaces the lazy one, and the mount
// no longer needs the registry.
func TestLazyPrefetchThenBackground(t *testing.T) {
	testenv.RequireRoot(t) // the whole layer is extracted as a full pull does
	var bt blobTraffic
	p, res, _ := pullLazily(t, &bt, "bin/busybox")
	s := p.store
	_, before := bt.served()

	trees, err := p.Trees(context.Background(), res.Image, TreeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lt := trees[0].(*lazyTree)
	<-lt.prefetched
	prio, err := PrefetchBytes(s.Root())
	if err != nil || prio <= 0 {
		t.Fatalf("prefetch bytes of the layer: %d, %v", prio, err)
	}
	if _, n := bt.served(); n-before != 1 {
		t.Errorf("prefetch of %d bytes made %d requests, want one", prio, n-before)
	}
	want, _ := os.ReadFile(testimage.BusyboxPath)
	bt.down.Store(true)
	if got, err := readFile(t, lt, "bin/busybox"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("prefetched file with the registry down: %d bytes, %v", len(got), err)
	}
	bt.down.Store(false)

	trees, err = p.Trees(context.Background(), res.Image, TreeOptions{Background: true})
	if err != nil {
		t.Fatal(err)
	}
	lt = trees[0].(*lazyTree)
	<-lt.completed
	stored, err := s.Layer(res.Image.Layers[0].DiffID)
	if err != nil || stored.Lazy {
		t.Fatalf("after the background fetch the layer is %+v, %v", stored, err)
	}
	bt.down.Store(true)
	if got, err := readFile(t, lt, "etc/os-release"); err != nil || !strings.Contains(string(got), "strata test busybox") {
		t.Errorf("read from the completed layer with the registry down: %q, %v", got, err)
	}
	dir, _ := s.LayerTree(stored.DiffID)
	if _, err := os.Stat(filepath.Join(dir, "stargz.index.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the completed layer shows eStargz's TOC file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bin", "busybox")); err != nil {
		t.Errorf("the completed layer lacks its files: %v", err)
	}
	again, err := p.Trees(context.Background(), res.Image, TreeOptions{Background: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := again[0].(*layertree.Dir); !ok {
		t.Errorf("a new mount of the completed layer is %T, want an extracted directory", again[0])
	}
}

// TestPruneCache evicts least recently used chunks first, down to the
// bound, and never the chunks of a lazy layer an image in use needs.
func TestPruneCache(t *testing.T) {
	var bt blobTraffic
	p, res, _ := pullLazily(t, &bt)
	s := p.store
	tree := lazyTrees(t, s, res.Image, Options{Retry: fastRetry, ReadTimeout: 300 * time.Millisecond})[0]
	if _, err := readFile(t, tree, "bin/busybox"); err != nil {
		t.Fatal(err)
	}
	// Two chunks of no layer, the older one used longest ago.
	c, _ := newChunkCache(s, 0)
	old, recent := []byte("old chunk"), []byte("recent chunk")
	for i, b := range [][]byte{old, recent} {
		p, _ := c.path(sha256Digest(b))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		when := time.Now().Add(time.Duration(i-10) * time.Hour)
		os.Chtimes(p, when, when)
	}
	unpin, err := s.Pin(res.Image, "test")
	if err != nil {
		t.Fatal(err)
	}
	before := s.CacheUsage()
	if before.Reclaimable != int64(len(old)+len(recent)) {
		t.Errorf("reclaimable with the image in use: %d, want the two stray chunks", before.Reclaimable)
	}
	if freed := s.PruneCache(context.Background(), before.Bytes-int64(len(old))); freed != int64(len(old)) || c.has(sha256Digest(old)) || !c.has(sha256Digest(recent)) {
		t.Errorf("evicting one chunk's worth freed %d and left old=%v recent=%v", freed, c.has(sha256Digest(old)), c.has(sha256Digest(recent)))
	}
	s.PruneCache(context.Background(), 0)
	if u := s.CacheUsage(); u.Bytes != before.Bytes-int64(len(old)+len(recent)) {
		t.Errorf("pruning everything removed chunks an image in use needs: %d bytes left, want %d", u.Bytes, before.Bytes-int64(len(old)+len(recent)))
	}
	unpin()
	s.PruneCache(context.Background(), 0)
	if u := s.CacheUsage(); u.Chunks != 0 {
		t.Errorf("%d chunks left once nothing needs them", u.Chunks)
	}
}

// TestLazyReadRenewsExpiredToken: a registry that stops accepting the
// token a mount got (as when it expires during a long run) answers with
// a challenge; the read gets a new token and goes on.
func TestLazyReadRenewsExpiredToken(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	var revoked atomic.Bool
	expire := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok := r.Header.Get("Authorization")
			mu.Lock()
			if revoked.Load() && seen[tok] {
				r.Header.Del("Authorization")
			} else if !revoked.Load() && tok != "" {
				seen[tok] = true
			}
			mu.Unlock()
			next.ServeHTTP(w, r)
		})
	}
	reg := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthToken, Username: "alice", Password: "s3cret", Middleware: expire})
	testenv.RequireBinary(t, testimage.BusyboxPath)
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	eimg, err := EstargzImage(img, ConvertOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("private/lazy:v1")
	if err := testimage.Push(context.Background(), ref, eimg, testimage.WithAuth("alice", "s3cret")); err != nil {
		t.Fatal(err)
	}
	dockerConfig(t, reg.Addr, "alice", "s3cret")
	s := newStore(t)
	res, err := NewPuller(s, Options{Lazy: true, Retry: fastRetry}).Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	tree := lazyTrees(t, s, res.Image, Options{Retry: fastRetry, ReadTimeout: time.Second})[0]
	if _, err := readFile(t, tree, "etc/os-release"); err != nil {
		t.Fatal(err)
	}
	tokens := reg.Requests().TokenGets
	revoked.Store(true)
	if got, err := readFile(t, tree, "etc/passwd"); err != nil || !strings.Contains(string(got), "root:") {
		t.Errorf("read after the token expired: %q, %v", got, err)
	}
	if reg.Requests().TokenGets == tokens {
		t.Error("no new token was asked for")
	}
}

// TestTOCThatLies: entries no layer tar may carry, or pointing past the
// TOC, are refused with an error naming the entry.
func TestTOCThatLies(t *testing.T) {
	for _, c := range []struct {
		e    estargz.TOCEntry
		want string
	}{
		{estargz.TOCEntry{Name: "../etc/passwd", Type: "reg", Size: 1, Offset: 10}, "path contains .."},
		{estargz.TOCEntry{Name: "/etc/passwd", Type: "reg", Size: 1, Offset: 10}, "absolute"},
		{estargz.TOCEntry{Name: "link", Type: "hardlink", LinkName: "../../x"}, "hardlink"},
		{estargz.TOCEntry{Name: "big", Type: "reg", Size: 10, Offset: 5000}, "past the TOC"},
		{estargz.TOCEntry{Name: "neg", Type: "reg", Size: -1}, "negative"},
		{estargz.TOCEntry{Name: "odd", Type: "socket"}, "unknown type"},
	} {
		e := c.e
		if _, err := checkEntries([]*estargz.TOCEntry{&e}, 1000); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "eStargz TOC") {
			t.Errorf("entry %+v: %v, want an error saying %q", c.e, err, c.want)
		}
	}
	ok := estargz.TOCEntry{Name: "bin/sh", Type: "reg", Size: 3, Offset: 10}
	if n, err := checkEntries([]*estargz.TOCEntry{&ok}, 1000); err != nil || n != 3 {
		t.Errorf("a sound entry: %d, %v", n, err)
	}
}

// TestLazyMultiRange: with the middle of a file cached, the chunks missing
// on either side come in one request of two ranges.
func TestLazyMultiRange(t *testing.T) {
	var bt blobTraffic
	p, res, _ := pullLazily(t, &bt)
	s := p.store
	tree := lazyTrees(t, s, res.Image, Options{Retry: fastRetry})[0]
	f, err := tree.Open(context.Background(), "bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mid := make([]byte, 100)
	if _, err := f.ReadAt(mid, 512<<10); err != nil {
		t.Fatal(err)
	}
	_, before := bt.served()
	want, _ := os.ReadFile(testimage.BusyboxPath)
	if got, err := readFile(t, tree, "bin/busybox"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	bt.mu.Lock()
	ranges := append([]string(nil), bt.ranges[before:]...)
	bt.mu.Unlock()
	if len(ranges) != 1 || strings.Count(ranges[0], ",") != 1 {
		t.Errorf("the chunks around a cached one came in requests %q, want one of two ranges", ranges)
	}
}

// TestLazyPackedLayerPulledWhole: an eStargz layer whose small files share
// gzip streams cannot be read chunk by chunk with checks; it is pulled
// whole, and reads right.
func TestLazyPackedLayerPulledWhole(t *testing.T) {
	testenv.RequireRoot(t) // extraction
	testenv.RequireBinary(t, testimage.BusyboxPath)
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	eimg, err := EstargzImage(img, ConvertOptions{MinChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("packed/busybox:v1")
	if err := testimage.Push(context.Background(), ref, eimg); err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	res, err := NewPuller(s, Options{Lazy: true, Retry: fastRetry}).Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := s.Layer(res.Image.Layers[0].DiffID)
	if err != nil || stored.Lazy {
		t.Fatalf("packed layer: %+v, %v; want it whole", stored, err)
	}
	tree := lazyTrees(t, s, res.Image, Options{})[0]
	if got, err := readFile(t, tree, "etc/os-release"); err != nil || !strings.Contains(string(got), "strata test busybox") {
		t.Errorf("read: %q %v", got, err)
	}
}

// readsBusybox reads the tree's bin/busybox and compares it with the
// busybox the test images are built from.
func readsBusybox(t *testing.T, tree layertree.Tree) error {
	t.Helper()
	want, err := os.ReadFile(testimage.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readFile(t, tree, "bin/busybox")
	if err == nil && !bytes.Equal(got, want) {
		err = fmt.Errorf("read %d bytes, not the %d of %s", len(got), len(want), testimage.BusyboxPath)
	}
	return err
}

// flipByte is a response mangler that flips the byte at len/div.
func flipByte(div int) *func([]byte) []byte {
	f := func(b []byte) []byte { c := bytes.Clone(b); c[len(c)/div] ^= 0xff; return c }
	return &f
}

// unannotatedEstargz pushes busybox as eStargz without the TOC digest
// annotation and pulls it lazily.
func unannotatedEstargz(t *testing.T, bt *blobTraffic) (*Puller, *PullResult, int64) {
	t.Helper()
	return pullChanged(t, bt, func(img v1.Image) (v1.Image, error) { return replaceTOCDigest(img, "") })
}

// pullChanged pushes busybox as eStargz changed by change, and pulls it
// lazily into a new store.
func pullChanged(t *testing.T, bt *blobTraffic, change func(v1.Image) (v1.Image, error)) (*Puller, *PullResult, int64) {
	t.Helper()
	reg := testregistry.Start(t, testregistry.Options{Middleware: bt.middleware})
	ref, blobSize := pushEstargz(t, reg, func(img v1.Image) v1.Image {
		out, err := change(img)
		if err != nil {
			t.Fatal(err)
		}
		return out
	})
	p := NewPuller(newStore(t), Options{Lazy: true, Retry: fastRetry})
	res, err := p.Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return p, res, blobSize
}

// An eStargz layer the manifest does not annotate is found by its footer
// and pulled lazily all the same: footer and TOC only, chunks checked
// against the TOC's digests.
func TestLazyPullByFooter(t *testing.T) {
	var bt blobTraffic
	p, res, blobSize := unannotatedEstargz(t, &bt)
	l := res.Image.Layers[0]
	if !l.Lazy || !l.TOCFromFooter || l.TOCDigest == "" {
		t.Fatalf("unannotated eStargz layer: %+v, want it lazy, its TOC found by the footer", l)
	}
	if pulled, requests := bt.served(); pulled >= blobSize/4 || requests != 2 {
		t.Errorf("pull fetched %d of %d blob bytes in %d requests, want the footer and the TOC only", pulled, blobSize, requests)
	}
	tree := lazyTrees(t, p.store, res.Image, Options{Retry: fastRetry, ReadTimeout: 300 * time.Millisecond})[0]
	bt.mangle.Store(flipByte(2))
	if err := readsBusybox(t, tree); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of corrupted chunks: %v, want EIO", err)
	}
	bt.mangle.Store(nil)
	if err := readsBusybox(t, tree); err != nil {
		t.Fatalf("bin/busybox read lazily: %v", err)
	}
}

// Nothing vouches for a TOC found by the footer but the blob's digest,
// checked once the layer is whole: a blob that fails it stops every read
// of the layer.
func TestLazyByFooterBlobMismatchStopsReads(t *testing.T) {
	testenv.RequireRoot(t) // the background fetch extracts the layer
	var bt blobTraffic
	p, res, _ := unannotatedEstargz(t, &bt)
	bt.mangleWhole.Store(flipByte(3))
	trees, err := p.Trees(context.Background(), res.Image, TreeOptions{Background: true})
	if err != nil {
		t.Fatal(err)
	}
	lt := trees[0].(*lazyTree)
	<-lt.completed
	if _, err := readFile(t, lt, "etc/os-release"); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a layer whose blob failed its digest: %v, want EIO", err)
	}
	if stored, err := p.store.Layer(res.Image.Layers[0].DiffID); err != nil || !stored.Lazy {
		t.Errorf("the mismatched blob was stored: %+v, %v", stored, err)
	}
}

// A plain gzip layer costs one probe of its footer, then is pulled whole.
func TestLazyPullOfPlainGzip(t *testing.T) {
	testenv.RequireRoot(t) // extraction
	testenv.RequireBinary(t, testimage.BusyboxPath)
	var bt blobTraffic
	reg := testregistry.Start(t, testregistry.Options{Middleware: bt.middleware})
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("plain/busybox:v1")
	if err := testimage.Push(context.Background(), ref, img); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	size, _ := layers[0].Size()
	s := newStore(t)
	res, err := NewPuller(s, Options{Lazy: true, Retry: fastRetry}).Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if l := res.Image.Layers[0]; l.Lazy || l.TOCDigest != "" || l.TOCFromFooter {
		t.Errorf("plain gzip layer: %+v, want it whole", l)
	}
	if pulled, requests := bt.served(); requests != 1 || pulled > size+estargz.FooterSize+512 {
		t.Errorf("pull of a %d-byte plain layer fetched %d bytes with %d Range requests, want one footer probe and the blob once", size, pulled, requests)
	}
	tree := lazyTrees(t, s, res.Image, Options{})[0]
	if got, err := readFile(t, tree, "etc/os-release"); err != nil || !strings.Contains(string(got), "strata test busybox") {
		t.Errorf("read: %q %v", got, err)
	}
}

// Once a lazy layer is whole, the files this mount never served itself
// are handed to the kernel (passthrough: native reads); one it served
// stays served, as the kernel refuses to mix the two for one inode.
func TestCompletedLazyLayerPassesThrough(t *testing.T) {
	testenv.RequireRoot(t) // the layer is extracted as a full pull does
	var bt blobTraffic
	p, res, _ := pullLazily(t, &bt)
	ctx := context.Background()
	trees, err := p.Trees(ctx, res.Image, TreeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lt := trees[0].(*lazyTree)
	<-lt.prefetched
	if _, err := readFile(t, lt, "etc/os-release"); err != nil {
		t.Fatal(err)
	}
	p.complete(ctx, lt)
	for _, tc := range []struct {
		path  string
		local bool
	}{{"etc/os-release", false}, {"bin/busybox", true}} {
		f, err := lt.Open(ctx, tc.path)
		if err != nil {
			t.Fatal(err)
		}
		_, local := f.(layertree.LocalFile)
		f.Close()
		if local != tc.local {
			t.Errorf("%s after the layer is whole: a local file %v, want %v", tc.path, local, tc.local)
		}
	}
	if err := readsBusybox(t, lt); err != nil {
		t.Errorf("bin/busybox from the completed layer: %v", err)
	}
}

// An image whose layers are partly eStargz and partly plain gzip pulls
// the former lazily and the latter whole, and reads from both.
func TestLazyPullMixedImage(t *testing.T) {
	testenv.RequireRoot(t) // the plain layer is extracted
	var bt blobTraffic
	p, res, _ := pullChanged(t, &bt, func(img v1.Image) (v1.Image, error) {
		plain, err := testimage.LayerFromFiles([]testimage.File{
			{Path: "etc/", Type: tar.TypeDir}, {Path: "etc/plain", Data: []byte("from a plain gzip layer\n")},
		}, testimage.Gzip)
		if err != nil {
			return nil, err
		}
		return mutate.AppendLayers(img, plain)
	})
	if ls := res.Image.Layers; len(ls) != 2 || !ls[0].Lazy || ls[1].Lazy {
		t.Fatalf("layers: %+v; want the eStargz one lazy and the gzip one whole", ls)
	}
	trees := lazyTrees(t, p.store, res.Image, Options{Retry: fastRetry, ReadTimeout: 300 * time.Millisecond}) // top first
	if got, err := readFile(t, trees[0], "etc/plain"); err != nil || string(got) != "from a plain gzip layer\n" {
		t.Errorf("file of the plain layer: %q, %v", got, err)
	}
	if err := readsBusybox(t, trees[1]); err != nil {
		t.Errorf("file of the lazy layer: %v", err)
	}
}
