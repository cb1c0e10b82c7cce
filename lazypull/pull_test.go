package lazypull

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
)

// fastRetry keeps fault tests quick while still exercising the retries.
var fastRetry = Retry{Attempts: 3, Initial: 10 * time.Millisecond}

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pushMultiLayer(t *testing.T, reg *testregistry.Registry, repoTag string, c testimage.Compression) {
	t.Helper()
	testenv.RequireBinary(t, "busybox")
	img, err := testimage.MultiLayer(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := testimage.Push(context.Background(), reg.Ref(repoTag), img); err != nil {
		t.Fatal(err)
	}
}

func TestPullCompressions(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{})
	for _, c := range []struct {
		name string
		c    testimage.Compression
	}{{"gzip", testimage.Gzip}, {"zstd", testimage.Zstd}, {"uncompressed", testimage.Uncompressed}, {"docker-schema2", testimage.DockerGzip}} {
		t.Run(c.name, func(t *testing.T) {
			pushMultiLayer(t, reg, "multi/"+c.name+":v1", c.c)
			s := newStore(t)
			res, err := NewPuller(s, Options{Retry: fastRetry}).Pull(context.Background(), reg.Ref("multi/"+c.name+":v1"))
			if err != nil {
				t.Fatal(err)
			}
			wantMT := "application/vnd.oci.image.manifest.v1+json"
			if c.c == testimage.DockerGzip {
				wantMT = "application/vnd.docker.distribution.manifest.v2+json"
			}
			if res.Image.MediaType != wantMT {
				t.Errorf("manifest media type %s, want %s", res.Image.MediaType, wantMT)
			}
			if res.UpToDate || res.LayersFetched != len(res.Image.Layers) {
				t.Errorf("first pull: up to date %v, fetched %d of %d layers", res.UpToDate, res.LayersFetched, len(res.Image.Layers))
			}
			for _, l := range res.Image.Layers {
				if !s.HasLayer(l.DiffID) {
					t.Errorf("layer %s missing after pull", l.DiffID)
				}
			}
			dir := filepath.Join(t.TempDir(), "rootfs")
			if err := s.Unpack(context.Background(), res.Image, dir); err != nil {
				t.Fatal(err)
			}
			checkMultiLayerTree(t, dir)
		})
	}
}

// checkMultiLayerTree compares an unpacked tree with what the harness says
// the flattened image holds.
func checkMultiLayerTree(t *testing.T, dir string) {
	t.Helper()
	if err := testimage.CheckMultiLayer(dir); err != nil {
		t.Error(err)
	}
}

func TestPullUpToDateFetchesOnlyManifest(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, reg, "multi/app:v1", testimage.Gzip)
	s := newStore(t)
	p := NewPuller(s, Options{Retry: fastRetry})
	first, err := p.Pull(context.Background(), reg.Ref("multi/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	before := reg.Requests()
	res, err := p.Pull(context.Background(), reg.Ref("multi/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if !res.UpToDate || res.Fetched != 0 {
		t.Errorf("second pull: up to date %v, fetched %d bytes", res.UpToDate, res.Fetched)
	}
	if res.Image.ConfigDigest != first.Image.ConfigDigest {
		t.Errorf("image changed between pulls")
	}
	after := reg.Requests()
	if got := after.BlobGets - before.BlobGets; got != 0 {
		t.Errorf("second pull fetched %d blobs; want only the manifest", got)
	}
	if got := after.ManifestGets - before.ManifestGets; got < 1 {
		t.Errorf("second pull did not fetch the manifest")
	}
}

func TestPullSharedLayersNotRefetched(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{})
	testenv.RequireBinary(t, "busybox")
	base, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	if err := testimage.Push(context.Background(), reg.Ref("base:v1"), base); err != nil {
		t.Fatal(err)
	}
	pushMultiLayer(t, reg, "multi/app:v1", testimage.Gzip)
	s := newStore(t)
	p := NewPuller(s, Options{Retry: fastRetry})
	if _, err := p.Pull(context.Background(), reg.Ref("base:v1")); err != nil {
		t.Fatal(err)
	}
	res, err := p.Pull(context.Background(), reg.Ref("multi/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.LayersFetched != len(res.Image.Layers)-1 {
		t.Errorf("fetched %d layers of %d; the busybox base layer is shared and must not be fetched again", res.LayersFetched, len(res.Image.Layers))
	}
	imgs, _ := s.Images()
	if len(imgs) != 2 {
		t.Errorf("store has %d images, want 2", len(imgs))
	}
	// Removing the multi-layer image frees its own layers but keeps the base.
	rm, err := s.Remove(context.Background(), reg.Ref("multi/app:v1"), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.LayersFreed) != len(res.Image.Layers)-1 {
		t.Errorf("rmi freed %d layers, want %d", len(rm.LayersFreed), len(res.Image.Layers)-1)
	}
	if !s.HasLayer(res.Image.Layers[0].DiffID) {
		t.Errorf("shared base layer was freed")
	}
	if _, err := s.Lookup(reg.Ref("multi/app:v1")); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("lookup after rmi: %v", err)
	}
}

func TestPullPlatformFromIndex(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "busybox")
	reg := testregistry.Start(t, testregistry.Options{})
	idx, err := testimage.Index()
	if err != nil {
		t.Fatal(err)
	}
	if err := testimage.PushIndex(context.Background(), reg.Ref("multiarch:v1"), idx); err != nil {
		t.Fatal(err)
	}
	platforms := testimage.IndexPlatforms()
	for _, pl := range append([]string{""}, platforms...) {
		s := newStore(t)
		res, err := NewPuller(s, Options{Platform: pl, Retry: fastRetry}).Pull(context.Background(), reg.Ref("multiarch:v1"))
		if err != nil {
			t.Fatalf("platform %q: %v", pl, err)
		}
		want := pl
		if want == "" {
			want = platforms[0] // the host's
		}
		dir := filepath.Join(t.TempDir(), "rootfs")
		if err := s.Unpack(context.Background(), res.Image, dir); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "etc/platform"))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != want {
			t.Errorf("pull --platform %q got the image for %q", pl, got)
		}
		if res.Image.Platform != want {
			t.Errorf("record says platform %q, want %q", res.Image.Platform, want)
		}
	}
	_, err = NewPuller(newStore(t), Options{Platform: "linux/s390x", Retry: fastRetry}).Pull(context.Background(), reg.Ref("multiarch:v1"))
	if err == nil || !strings.Contains(err.Error(), "linux/s390x") {
		t.Errorf("pull of a missing platform: %v; want an error naming linux/s390x", err)
	}
}

func TestPullMirrors(t *testing.T) {
	testenv.RequireRoot(t)
	origin := testregistry.Start(t, testregistry.Options{})
	mirror := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, origin, "multi/app:v1", testimage.Gzip)
	pushMultiLayer(t, mirror, "multi/app:v1", testimage.Gzip)
	m, err := ParseMirror(origin.Addr + "=http://" + mirror.Addr)
	if err != nil {
		t.Fatal(err)
	}
	down, err := ParseMirror(origin.Addr + "=http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	empty := testregistry.Start(t, testregistry.Options{})
	missing, _ := ParseMirror(origin.Addr + "=" + empty.Addr)

	t.Run("served by mirror", func(t *testing.T) {
		before := origin.Requests()
		res, err := NewPuller(newStore(t), Options{Mirrors: []Mirror{m}, Retry: fastRetry}).Pull(context.Background(), origin.Ref("multi/app:v1"))
		if err != nil {
			t.Fatal(err)
		}
		if res.Source != mirror.Addr {
			t.Errorf("served by %s, want the mirror %s", res.Source, mirror.Addr)
		}
		if after := origin.Requests(); after.BlobGets != before.BlobGets {
			t.Errorf("origin served %d blobs; the mirror had them all", after.BlobGets-before.BlobGets)
		}
	})
	t.Run("fallback past a down and an empty mirror", func(t *testing.T) {
		res, err := NewPuller(newStore(t), Options{Mirrors: []Mirror{down, missing}, Retry: fastRetry}).Pull(context.Background(), origin.Ref("multi/app:v1"))
		if err != nil {
			t.Fatal(err)
		}
		if res.Source != origin.Addr {
			t.Errorf("served by %s, want the origin %s", res.Source, origin.Addr)
		}
	})
}

func TestParseMirror(t *testing.T) {
	for in, want := range map[string]Mirror{
		"https://mirror.example":            {Registry: "docker.io", Host: "mirror.example"},
		"http://127.0.0.1:5000":             {Registry: "docker.io", Host: "127.0.0.1:5000", Insecure: true},
		"quay.io=https://m.example:8443":    {Registry: "quay.io", Host: "m.example:8443"},
		"index.docker.io=mirror.example:80": {Registry: "docker.io", Host: "mirror.example:80"},
	} {
		got, err := ParseMirror(in)
		if err != nil || got != want {
			t.Errorf("ParseMirror(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ftp://x", "https://", "http://h/path", "=http://h", "a b"} {
		if _, err := ParseMirror(bad); err == nil {
			t.Errorf("ParseMirror(%q) succeeded", bad)
		}
	}
}

func TestPullAuth(t *testing.T) {
	testenv.RequireRoot(t)
	for _, mode := range []testregistry.AuthMode{testregistry.AuthBasic, testregistry.AuthToken} {
		reg := testregistry.Start(t, testregistry.Options{Auth: mode, Username: "alice", Password: "s3cret"})
		testenv.RequireBinary(t, "busybox")
		img, err := testimage.Busybox()
		if err != nil {
			t.Fatal(err)
		}
		if err := testimage.Push(context.Background(), reg.Ref("private/app:v1"), img, testimage.WithAuth("alice", "s3cret")); err != nil {
			t.Fatal(err)
		}
		dockerConfig(t, reg.Addr, "alice", "s3cret")
		if _, err := NewPuller(newStore(t), Options{Retry: fastRetry}).Pull(context.Background(), reg.Ref("private/app:v1")); err != nil {
			t.Errorf("auth mode %v: pull with credentials: %v", mode, err)
		}
		dockerConfig(t, reg.Addr, "alice", "wrong")
		if _, err := NewPuller(newStore(t), Options{Retry: fastRetry}).Pull(context.Background(), reg.Ref("private/app:v1")); err == nil {
			t.Errorf("auth mode %v: pull with a wrong password succeeded", mode)
		}
	}
}

// dockerConfig writes a ~/.docker/config.json with credentials for host, as
// `docker login` does, and points DOCKER_CONFIG at it.
func dockerConfig(t *testing.T, host, user, pass string) {
	t.Helper()
	dir := t.TempDir()
	auth := base64(user + ":" + pass)
	data := `{"auths":{"` + host + `":{"auth":"` + auth + `"}}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

func TestPullNotFound(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	for _, ref := range []string{"nope/nothing:v1", "multi/app:missing-tag"} {
		_, err := NewPuller(newStore(t), Options{Retry: fastRetry}).Pull(context.Background(), reg.Ref(ref))
		var nf *NotFoundError
		if !errors.As(err, &nf) {
			t.Errorf("pull %s: %v; want a NotFoundError", ref, err)
			continue
		}
		if !strings.Contains(err.Error(), ref) {
			t.Errorf("error %q does not name %s", err, ref)
		}
	}
}

func TestPullRegistryDown(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	addr := reg.Addr
	reg.SetDown(true)
	start := time.Now()
	_, err := NewPuller(newStore(t), Options{Retry: Retry{Attempts: 3, Initial: 20 * time.Millisecond}}).Pull(context.Background(), addr+"/app:v1")
	if err == nil {
		t.Fatal("pull from a down registry succeeded")
	}
	if !strings.Contains(err.Error(), "3 attempts") || !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q should say it retried and name the registry", err)
	}
	if time.Since(start) < 60*time.Millisecond {
		t.Errorf("no backoff between attempts")
	}
	// And it comes back: the same puller settings succeed.
	reg.SetDown(false)
	pushMultiLayer(t, reg, "app:v1", testimage.Gzip)
	if os.Geteuid() == 0 {
		if _, err := NewPuller(newStore(t), Options{Retry: fastRetry}).Pull(context.Background(), addr+"/app:v1"); err != nil {
			t.Errorf("pull after the registry came back: %v", err)
		}
	}
}

// faulty wraps the registry so that blob GETs of the given layer digest are
// rewritten by mangle.
func faulty(digest *atomic.Value, mangle func([]byte) []byte) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d, _ := digest.Load().(string)
			if d == "" || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
				next.ServeHTTP(w, r)
				return
			}
			rec := &captureWriter{header: http.Header{}}
			next.ServeHTTP(rec, r)
			body := mangle(rec.body)
			for k, v := range rec.header {
				if k != "Content-Length" {
					w.Header()[k] = v
				}
			}
			w.WriteHeader(rec.status)
			w.Write(body)
		})
	}
}

type captureWriter struct {
	header http.Header
	status int
	body   []byte
}

func (c *captureWriter) Header() http.Header { return c.header }
func (c *captureWriter) WriteHeader(s int)   { c.status = s }
func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	c.body = append(c.body, b...)
	return len(b), nil
}

func TestPullBadBlobs(t *testing.T) {
	testenv.RequireRoot(t)
	cases := map[string]struct {
		mangle func([]byte) []byte
		want   string
	}{
		"wrong bytes": {func(b []byte) []byte { c := append([]byte{}, b...); c[len(c)/2] ^= 0xff; return c }, "mismatch"},
		"truncated":   {func(b []byte) []byte { return b[:len(b)/2] }, "truncated"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var target atomic.Value
			reg := testregistry.Start(t, testregistry.Options{Middleware: faulty(&target, c.mangle)})
			pushMultiLayer(t, reg, "multi/app:v1", testimage.Gzip)
			img, _ := testimage.MultiLayer(testimage.Gzip)
			layers, _ := img.Layers()
			d, _ := layers[len(layers)-1].Digest()
			target.Store(d.String())
			s := newStore(t)
			_, err := NewPuller(s, Options{Retry: fastRetry}).Pull(context.Background(), reg.Ref("multi/app:v1"))
			if err == nil {
				t.Fatal("pull of a bad blob succeeded")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), d.String()) {
				t.Errorf("error %q should say %q and name the blob %s", err, c.want, d)
			}
			imgs, _ := s.Images()
			if len(imgs) != 0 {
				t.Errorf("an image was recorded despite the bad blob")
			}
			ents, _ := os.ReadDir(filepath.Join(s.Root(), "layers"))
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".tmp-") {
					t.Errorf("temporary layer directory %s left behind", e.Name())
				}
				if rec, err := s.Layer("sha256:" + e.Name()); err == nil && rec.Digest == d.String() {
					t.Errorf("the bad layer was stored")
				}
			}
		})
	}
}

func TestPullManifestNotJSON(t *testing.T) {
	mw := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Write([]byte("<html>this is not a manifest</html>"))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	reg := testregistry.Start(t, testregistry.Options{Middleware: mw})
	s := newStore(t)
	_, err := NewPuller(s, Options{Retry: fastRetry}).Pull(context.Background(), reg.Ref("app:v1"))
	if err == nil || !strings.Contains(err.Error(), "manifest") || !strings.Contains(err.Error(), "JSON") {
		t.Errorf("pull of a non-JSON manifest: %v; want an error saying the manifest is not JSON", err)
	}
	if imgs, _ := s.Images(); len(imgs) != 0 {
		t.Errorf("an image was recorded")
	}
}

func TestConcurrentPullsOfOneImage(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, reg, "multi/app:v1", testimage.Gzip)
	s := newStore(t)
	before := reg.Requests()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Separate Store values: the sharing is through the filesystem,
			// as between two strata processes.
			s2, err := OpenStore(s.Root())
			if err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = NewPuller(s2, Options{Retry: fastRetry}).Pull(context.Background(), reg.Ref("multi/app:v1"))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	img, _ := testimage.MultiLayer(testimage.Gzip)
	layers, _ := img.Layers()
	// Each pull may fetch the small config itself; each layer is fetched once.
	if got := reg.Requests().BlobGets - before.BlobGets; got < int64(len(layers))+1 || got > int64(len(layers))+4 {
		t.Errorf("4 concurrent pulls made %d blob GETs; want each of the %d layers once plus up to 4 configs", got, len(layers))
	}
	rec, err := s.Lookup(reg.Ref("multi/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := s.Unpack(context.Background(), rec, dir); err != nil {
		t.Fatal(err)
	}
	checkMultiLayerTree(t, dir)
}
