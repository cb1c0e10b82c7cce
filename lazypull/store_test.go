package lazypull

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func digestOf(s string) string { return sha256Digest([]byte(s)) }

// seed records an image with one layer directory, as a pull would.
func seed(t *testing.T, s *Store, ref string, layers ...string) *ImageRecord {
	t.Helper()
	r, err := ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	rec := &ImageRecord{ManifestDigest: digestOf("manifest " + ref + strings.Join(layers, ",")), ConfigDigest: digestOf("config " + ref + strings.Join(layers, ","))}
	for _, l := range layers {
		lr := LayerRecord{Digest: digestOf("blob " + l), DiffID: digestOf(l), UnpackedSize: 10}
		rec.Layers = append(rec.Layers, lr)
		dir, _ := s.LayerDir(lr.DiffID)
		if err := os.MkdirAll(filepath.Join(dir, "fs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "layer.json"), []byte(`{"unpackedSize":10}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := s.readIndex()
	if err != nil {
		t.Fatal(err)
	}
	s.addImage(idx, rec, r, r.Repo+"@"+rec.ManifestDigest)
	if err := s.writeIndex(idx); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestStoreLookupAndRemove(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	a := seed(t, s, "busybox:1", "base", "a")
	b := seed(t, s, "example.com/app:v2", "base", "b")

	for name, want := range map[string]*ImageRecord{
		"busybox:1":                   a,
		"docker.io/library/busybox:1": a,
		"example.com/app:v2":          b,
		a.ConfigDigest:                a,
		strings.TrimPrefix(b.ConfigDigest, "sha256:")[:12]: b,
		"example.com/app@" + b.ManifestDigest:              b,
	} {
		got, err := s.Lookup(name)
		if err != nil || got.ManifestDigest != want.ManifestDigest {
			t.Errorf("Lookup(%q) = %v, %v", name, got, err)
		}
	}
	for _, name := range []string{"busybox", "busybox:2", "example.com/app", "sha256:ffff"} {
		if _, err := s.Lookup(name); !errors.Is(err, ErrImageNotFound) {
			t.Errorf("Lookup(%q): %v; want ErrImageNotFound", name, err)
		}
	}

	// A tag moves to the newest image pulled under it; the old image stays,
	// known by its digest.
	c := seed(t, s, "busybox:1", "base", "c")
	if got, _ := s.Lookup("busybox:1"); got.ManifestDigest != c.ManifestDigest {
		t.Errorf("tag did not move")
	}
	if got, _ := s.Lookup(a.ConfigDigest); len(got.Tags) != 0 || len(got.RepoDigests) != 1 {
		t.Errorf("old image after the tag moved: %+v", got)
	}

	res, err := s.Remove(ctx, "example.com/app:v2", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 1 || len(res.LayersFreed) != 1 || res.LayersFreed[0] != digestOf("b") {
		t.Errorf("remove app:v2: %+v", res)
	}
	if !s.HasLayer(digestOf("base")) {
		t.Errorf("the shared base layer was freed")
	}
	if _, err := s.Remove(ctx, "example.com/app:v2", false); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("second remove: %v", err)
	}
	// Remove by ID removes all names.
	if _, err := s.Remove(ctx, a.ConfigDigest, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Remove(ctx, "busybox:1", false); err != nil {
		t.Fatal(err)
	}
	imgs, _ := s.Images()
	if len(imgs) != 0 {
		t.Errorf("images left: %d", len(imgs))
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "layers"))
	if len(ents) != 0 {
		t.Errorf("layers left: %d", len(ents))
	}
}

func TestStoreRefusesBadDigests(t *testing.T) {
	s := newStore(t)
	for _, d := range []string{"sha256:../../etc/passwd", "md5:abc", "sha256:" + strings.Repeat("A", 64), ""} {
		if _, err := s.LayerDir(d); err == nil {
			t.Errorf("LayerDir(%q) accepted", d)
		}
		if err := s.PutBlob(d, []byte("x")); err == nil {
			t.Errorf("PutBlob(%q) accepted", d)
		}
	}
	if err := s.PutBlob(digestOf("y"), []byte("x")); err == nil {
		t.Errorf("PutBlob stored bytes that do not match their digest")
	}
}

func TestStoreCleansStaleTemporaries(t *testing.T) {
	s := newStore(t)
	stale := filepath.Join(s.Root(), "layers", ".tmp-"+strings.TrimPrefix(digestOf("x"), "sha256:")+"-123")
	if err := os.MkdirAll(filepath.Join(stale, "fs", "usr"), 0o555); err != nil {
		t.Fatal(err)
	}
	// A temporary directory whose pull still runs (it holds the lock) stays.
	busyHex := strings.TrimPrefix(digestOf("busy"), "sha256:")
	busy := filepath.Join(s.Root(), "layers", ".tmp-"+busyHex+"-1")
	os.MkdirAll(busy, 0o755)
	l, err := s.lockLayer(context.Background(), "sha256:"+busyHex)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if _, err := OpenStore(s.Root()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary layer not cleaned: %v", err)
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("a temporary layer in use was removed")
	}
}

func TestStoreRepullKeepsTags(t *testing.T) {
	s := newStore(t)
	a := seed(t, s, "busybox:1")
	seed(t, s, "busybox:1")
	got, err := s.Lookup("busybox:1")
	if err != nil || got.ManifestDigest != a.ManifestDigest || len(got.Tags) != 1 || got.Tags[0] != "docker.io/library/busybox:1" {
		t.Errorf("after pulling the same image again: %+v %v", got, err)
	}
}
