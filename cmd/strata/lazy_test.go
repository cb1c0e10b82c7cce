//go:build !strata_noregistry

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
	"github.com/stratafs/strata/lazypull"
)

// TestLazyRun runs a container from an eStargz image pulled lazily: the
// pull fetches the TOC only, the container's reads fetch the rest, and a
// registry serving wrong bytes gives the container EIO, never them.
func TestLazyRun(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, testimage.BusyboxPath)
	var blobBytes atomic.Int64
	var corrupt atomic.Bool
	reg := testregistry.Start(t, testregistry.Options{Middleware: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/sha256:") && r.Header.Get("Range") != "" {
				cw := &countingWriter{ResponseWriter: w, n: &blobBytes, corrupt: corrupt.Load()}
				next.ServeHTTP(cw, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	ref, size := pushEstargzBusybox(t, reg, 64<<10)

	root := t.TempDir()
	t.Cleanup(func() { cleanupContainers(t, root) })
	mustStrata(t, root, "pull", "-q", ref)
	if n := blobBytes.Load(); n > size/4 {
		t.Errorf("lazy pull fetched %d of the layer's %d bytes", n, size)
	}
	// strata hands containers of a lazy image to strata-full, a created
	// one at its start too.
	mustStrata(t, root, "create", "--name", "lazy-created", "--background-fetch=false", ref, "echo", "started lazily")
	if out := mustStrata(t, root, "start", "-a", "lazy-created"); out != "started lazily\n" {
		t.Errorf("start -a of a container of a lazy image: %q", out)
	}
	mustStrata(t, root, "rm", "lazy-created")
	out := mustStrata(t, root, "run", "--rm", "--background-fetch=false", ref, "sh", "-c", "echo hello from a lazy layer; ls /bin | grep -c .")
	if !strings.HasPrefix(out, "hello from a lazy layer\n") {
		t.Errorf("lazy container output: %q", out)
	}
	if n := blobBytes.Load(); n > size+size/10 {
		t.Errorf("running the container fetched %d bytes of a %d-byte layer", n, size)
	}
	// In the background the layer arrives whole while the container runs
	// (it watches the store's record of it), and stays so; a file first
	// read after that is read through passthrough.
	wait := `for i in $(seq 300); do if ! grep -q '"lazy": true' /layers/*/layer.json; then sleep 0.3; exec grep -q strata-test /etc/os-release; fi; sleep 0.05; done; exit 1`
	if r := strata(t, root, "run", "--rm", "-v", root+"/layers:/layers:ro", ref, "sh", "-c", wait); r.code != 0 {
		t.Errorf("the lazy layer did not arrive whole in the background: exit %d %s", r.code, r.stderr)
	}
	if b, _ := exec.Command("sh", "-c", "cat "+root+"/layers/*/layer.json").Output(); strings.Contains(string(b), `"lazy": true`) {
		t.Errorf("layer still lazy after the background fetch:\n%s", b)
	}

	// system df and prune: the chunk cache shows and goes; a stopped
	// container goes; nothing goes without a yes.
	mustStrata(t, root, "create", "--name", "stopped", ref, "true")
	if out := mustStrata(t, root, "system", "df"); !strings.Contains(out, "Chunk cache") || !strings.Contains(out, "Containers      1") {
		t.Errorf("system df:\n%s", out)
	}
	no := exec.Command(strataBin, "--root", root, "system", "prune")
	no.Stdin = strings.NewReader("n\n")
	if out, err := no.CombinedOutput(); err == nil || !strings.Contains(string(out), "aborted") {
		t.Errorf("system prune answered no: %v\n%s", err, out)
	}
	out = mustStrata(t, root, "system", "prune", "-f")
	if !strings.Contains(out, "Deleted Containers:") || !strings.Contains(out, "Total reclaimed space") {
		t.Errorf("system prune -f:\n%s", out)
	}
	if out := mustStrata(t, root, "system", "df"); !regexp.MustCompile(`Chunk cache\s+0 `).MatchString(out) {
		t.Errorf("system df after prune:\n%s", out)
	}

	// Wrong bytes from the registry: the container's read fails with EIO.
	root2 := t.TempDir()
	t.Cleanup(func() { cleanupContainers(t, root2) })
	mustStrata(t, root2, "pull", "-q", ref)
	corrupt.Store(true)
	r := strata(t, root2, "run", "--rm", ref, "true")
	t.Logf("run over corrupted chunks: exit %d: %s", r.code, r.stderr)
	if r.code == 0 {
		t.Errorf("a container ran from corrupted chunks: %s", r.stderr)
	}
	corrupt.Store(false)
	if out := mustStrata(t, root2, "run", "--rm", ref, "echo", "recovered"); out != "recovered\n" {
		t.Errorf("after the registry mended: %q", out)
	}

	// A running container's lazy chunks stay through a prune.
	root3 := t.TempDir()
	t.Cleanup(func() { cleanupContainers(t, root3) })
	mustStrata(t, root3, "pull", "-q", ref)
	mustStrata(t, root3, "run", "-d", "--name", "runner", "--background-fetch=false", ref, "sleep", "1000")
	chunks := filepath.Join(root3, "chunks", "sha256")
	waitFor(t, "the container's chunks", func() bool {
		e, _ := os.ReadDir(chunks)
		return slices.ContainsFunc(e, func(d os.DirEntry) bool { return !strings.HasPrefix(d.Name(), ".") })
	})
	before, _ := os.ReadDir(chunks)
	mustStrata(t, root3, "system", "prune", "-f")
	for _, c := range before {
		if strings.HasPrefix(c.Name(), ".") {
			continue // a chunk being written
		}
		if _, err := os.Stat(filepath.Join(chunks, c.Name())); err != nil {
			t.Errorf("prune with a container running removed its chunk %s", c.Name())
		}
	}
	mustStrata(t, root3, "rm", "-f", "runner")
	mustStrata(t, root3, "system", "prune", "-f")
	if after, _ := os.ReadDir(chunks); len(after) != 0 {
		t.Errorf("prune once the container is gone left %d chunks", len(after))
	}
}

// countingWriter counts the body bytes of a response and, to corrupt
// it, flips one.
type countingWriter struct {
	http.ResponseWriter
	n       *atomic.Int64
	corrupt bool
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.n.Add(int64(len(b)))
	if c.corrupt && len(b) > 100 {
		b = append([]byte(nil), b...)
		b[len(b)/2] ^= 0xff
	}
	return c.ResponseWriter.Write(b)
}

// TestConvertOptimize converts an image with --optimize: the files the
// workload opens come first in the layer, before the prefetch landmark.
func TestConvertOptimize(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, testimage.BusyboxPath)
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	src, dst := reg.Ref("plain/busybox:v1"), reg.Ref("opt/busybox:v1")
	if err := testimage.Push(context.Background(), src, img); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	t.Cleanup(func() { cleanupContainers(t, root) })
	out := mustStrata(t, root, "convert", "--optimize", "--chunk-size", "64k", "--cmd", "cat /etc/os-release", src, dst)
	if !strings.Contains(out, "files; they go first") {
		t.Errorf("convert --optimize: %s", out)
	}
	if ids := mustStrata(t, root, "ps", "-a", "-q"); ids != "" {
		t.Errorf("convert left its container: %s", ids)
	}
	root2 := t.TempDir()
	mustStrata(t, root2, "pull", "-q", dst)
	tocs, _ := filepath.Glob(filepath.Join(root2, "layers", "*", "toc"))
	if len(tocs) != 1 {
		t.Fatalf("lazy layers: %v", tocs)
	}
	tail, err := os.ReadFile(tocs[0])
	if err != nil {
		t.Fatal(err)
	}
	toc, _, err := new(estargz.GzipDecompressor).ParseTOC(bytes.NewReader(tail))
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, e := range toc.Entries {
		if _, ok := pos[e.Name]; !ok {
			pos[e.Name] = i
		}
	}
	mark, ok := pos[estargz.PrefetchLandmark]
	if !ok {
		t.Fatalf("no prefetch landmark in the optimized layer")
	}
	// --chunk-size 64k: busybox (about 1 MiB) in chunks of 64 KiB.
	chunks := 0
	for _, e := range toc.Entries {
		if e.Name == "bin/busybox" && (e.Type == "reg" || e.Type == "chunk") {
			chunks++
			if e.ChunkSize > 64<<10 {
				t.Errorf("a chunk of %d bytes with --chunk-size 64k", e.ChunkSize)
			}
		}
	}
	if chunks < 8 {
		t.Errorf("bin/busybox in %d chunks with --chunk-size 64k", chunks)
	}
	for _, p := range []string{"etc/os-release", "bin/busybox"} {
		if i, ok := pos[p]; !ok || i > mark {
			t.Errorf("%s, opened by the workload, is at %d, after the landmark at %d", p, i, mark)
		}
	}
	if out := mustStrata(t, root2, "run", "--rm", dst, "cat", "/etc/os-release"); !strings.Contains(out, "strata test busybox") {
		t.Errorf("run of the optimized image: %q", out)
	}
}

// TestLazyKilledMidFetch kills the monitor while its container reads a
// lazy layer over a slow registry: no chunk is ever kept but a whole,
// checked one, and the next container reads the right bytes.
func TestLazyKilledMidFetch(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, testimage.BusyboxPath)
	var slow atomic.Bool
	var served atomic.Int64
	reg := testregistry.Start(t, testregistry.Options{Middleware: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if slow.Load() && r.Header.Get("Range") != "" {
				next.ServeHTTP(&tricklingWriter{ResponseWriter: w, served: &served}, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	ref, _ := pushEstargzBusybox(t, reg, 256<<10)
	root := t.TempDir()
	t.Cleanup(func() { cleanupContainers(t, root) })
	mustStrata(t, root, "pull", "-q", ref)
	slow.Store(true)
	id := strings.TrimSpace(mustStrata(t, root, "run", "-d", "--background-fetch=false", ref, "sh", "-c", "cat /bin/busybox > /dev/null"))
	waitFor(t, "chunk bytes to flow", func() bool { return served.Load() > 64<<10 })
	if err := syscall.Kill(monitorPID(t, id), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	slow.Store(false)
	if out := mustStrata(t, root, "ps", "-a"); !strings.Contains(out, "Exited (137)") {
		t.Errorf("ps after the monitor was killed: %s", out)
	}
	chunks, _ := os.ReadDir(filepath.Join(root, "chunks", "sha256"))
	for _, c := range chunks {
		if strings.HasPrefix(c.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, "chunks", "sha256", c.Name()))
		sum := sha256.Sum256(b)
		if err != nil || hex.EncodeToString(sum[:]) != c.Name() {
			t.Errorf("chunk %s holds other bytes (%d)", c.Name(), len(b))
		}
	}
	want, err := os.ReadFile(testimage.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(want)
	out := mustStrata(t, root, "run", "--rm", ref, "sha256sum", "/bin/busybox")
	if !strings.HasPrefix(out, hex.EncodeToString(sum[:])) {
		t.Errorf("after the kill the container reads other bytes: %s", out)
	}
}

// tricklingWriter trickles a response.
type tricklingWriter struct {
	http.ResponseWriter
	served *atomic.Int64
}

func (s *tricklingWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), 16<<10)
		m, err := s.ResponseWriter.Write(b[:k])
		n += m
		s.served.Add(int64(m))
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		if err != nil {
			return n, err
		}
		b = b[k:]
		time.Sleep(20 * time.Millisecond)
	}
	return n, nil
}

// pushEstargzBusybox pushes the test busybox image as eStargz in chunks of
// chunkSize and returns its reference and the size of its layer's blob.
func pushEstargzBusybox(t *testing.T, reg *testregistry.Registry, chunkSize int) (string, int64) {
	t.Helper()
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	eimg, err := lazypull.EstargzImage(img, lazypull.ConvertOptions{ChunkSize: chunkSize})
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("lazy/busybox:v1")
	if err := testimage.Push(context.Background(), ref, eimg); err != nil {
		t.Fatal(err)
	}
	layers, err := eimg.Layers()
	if err != nil {
		t.Fatal(err)
	}
	size, err := layers[0].Size()
	if err != nil {
		t.Fatal(err)
	}
	return ref, size
}
