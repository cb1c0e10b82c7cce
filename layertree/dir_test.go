package layertree

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func names(es []Entry) map[string]Entry {
	m := map[string]Entry{}
	for _, e := range es {
		m[e.Name] = e
	}
	return m
}

func TestDirReadsBothWhiteoutForms(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "oci-opaque"), 0o755))
	must(os.WriteFile(filepath.Join(root, "oci-opaque", whOpaque), nil, 0o644))
	must(os.WriteFile(filepath.Join(root, whPrefix+"gone-oci"), nil, 0o644))
	must(os.WriteFile(filepath.Join(root, "file"), []byte("hello"), 0o640))
	must(os.Symlink("file", filepath.Join(root, "link")))
	must(os.Link(filepath.Join(root, "file"), filepath.Join(root, "hard")))
	must(os.MkdirAll(filepath.Join(root, "user-opaque"), 0o755))
	if err := unix.Setxattr(filepath.Join(root, "user-opaque"), "user.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("user xattrs not supported here: %v", err)
	}
	must(unix.Setxattr(filepath.Join(root, "file"), "user.test", []byte("v"), 0))
	privileged := unix.Mknod(filepath.Join(root, "gone-overlay"), unix.S_IFCHR, 0) == nil

	d, err := NewDir(root)
	must(err)
	ctx := context.Background()
	es, err := d.ReadDir(ctx, "")
	must(err)
	got := names(es)
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !got["gone-oci"].Whiteout || got["file"].Whiteout || got["link"].Target != "file" {
		t.Errorf("entries: %+v", got)
	}
	if privileged && !got["gone-overlay"].Whiteout {
		t.Errorf("char 0/0 not read as a whiteout")
	}
	// The xattr form shows in the parent's listing; the OCI marker file
	// in the directory's own listing, and to Stat.
	if !got["user-opaque"].Opaque {
		t.Errorf("opaque xattr not read: %+v", got["user-opaque"])
	}
	if st, err := d.Stat(ctx, "oci-opaque"); err != nil || !st.Opaque {
		t.Errorf("Stat of an OCI-opaque directory: %+v, %v", st, err)
	}
	if got["file"].Ino != got["hard"].Ino || got["file"].Nlink != 2 {
		t.Errorf("hardlinks: %+v %+v", got["file"], got["hard"])
	}
	inner, err := d.ReadDir(ctx, "oci-opaque")
	must(err)
	if len(inner) != 1 || inner[0].Name != OpaqueMarker || !inner[0].Opaque {
		t.Errorf("listing of an OCI-opaque directory: %+v, want only the opaque marker", inner)
	}
	e, err := d.Stat(ctx, "gone-oci")
	must(err)
	if !e.Whiteout {
		t.Errorf("Stat of an OCI-whited-out name: %+v", e)
	}
	x, err := d.Xattrs(ctx, "file")
	must(err)
	if string(x["user.test"]) != "v" {
		t.Errorf("xattrs: %v", x)
	}
	if x, _ := d.Xattrs(ctx, "user-opaque"); len(x) != 0 {
		t.Errorf("overlay-internal xattrs shown: %v", x)
	}
	f, err := d.Open(ctx, "file")
	must(err)
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 100))
	must(err)
	if string(b) != "hello" {
		t.Errorf("content %q", b)
	}
	if _, ok := f.(LocalFile); !ok {
		t.Errorf("Dir files must be LocalFile for passthrough")
	}
}

func TestMem(t *testing.T) {
	m := NewMem()
	m.Add("a/b/c", Entry{Mode: ModeRegular | 0o644}, []byte("xyz"), nil)
	m.Add("a/.x", Entry{Whiteout: true, Mode: ModeChar}, nil, nil)
	ctx := context.Background()
	es, _ := m.ReadDir(ctx, "a")
	if g := names(es); !g["b"].IsDir() || !g[".x"].Whiteout {
		t.Errorf("ReadDir a: %+v", es)
	}
	e, err := m.Stat(ctx, "a/b/c")
	if err != nil || e.Size != 3 {
		t.Errorf("Stat: %+v %v", e, err)
	}
}

// Ownership and mode kept in user.containers.override_stat (an
// unprivileged extraction's) are what a Dir reports by default, and not
// when told to ignore them as fuse-overlayfs does without xattr_permissions.
func TestDirOverrideStat(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "file")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, overrideStat, []byte("1000:1001:0755"), 0); err != nil {
		t.Skipf("user xattrs not supported here: %v", err)
	}
	for _, tc := range []struct {
		opts           DirOptions
		uid, gid, perm uint32
	}{
		{DirOptions{}, 1000, 1001, 0o755},
		{DirOptions{IgnoreOverrideStat: true}, uint32(os.Getuid()), uint32(os.Getgid()), 0o600},
	} {
		d, err := NewDirWith(root, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		es, err := d.ReadDir(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		st, err := d.Stat(context.Background(), "file")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range []Entry{names(es)["file"], st} {
			if e.UID != tc.uid || e.GID != tc.gid || e.Mode&0o7777 != tc.perm || e.Type() != ModeRegular {
				t.Errorf("%+v: file is %d:%d %o, want %d:%d %o", tc.opts, e.UID, e.GID, e.Mode, tc.uid, tc.gid, tc.perm)
			}
		}
	}
}

// A tree in the overlay form (as strata extracts layers) reads char 0/0
// whiteouts and opaque xattrs, and takes no file for an OCI marker: a
// missing name is just missing.
func TestDirInOverlayForm(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "opaque"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(root, "opaque"), "user.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("user xattrs not supported here: %v", err)
	}
	privileged := unix.Mknod(filepath.Join(root, "gone"), unix.S_IFCHR, 0) == nil
	d, err := NewDirWith(root, DirOptions{OverlayForm: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if e, err := d.Stat(ctx, "opaque"); err != nil || !e.Opaque {
		t.Errorf("Stat of an opaque directory: %+v, %v", e, err)
	}
	if e, err := d.Stat(ctx, "gone"); privileged && (err != nil || !e.Whiteout) {
		t.Errorf("Stat of a char 0/0 whiteout: %+v, %v", e, err)
	}
	for _, p := range []string{"missing", "opaque/" + OpaqueMarker, whPrefix + "x"} {
		if _, err := d.Stat(ctx, p); !os.IsNotExist(err) {
			t.Errorf("Stat(%q) = %v, want not found", p, err)
		}
	}
}

// TestDirDeepPaths reads entries whose paths are longer than PATH_MAX,
// and the descriptors it keeps for them go with Forget.
func TestDirDeepPaths(t *testing.T) {
	root := t.TempDir()
	var rel []string
	dir, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 { // 30 × 201 bytes
		name := string(rune('a'+i%26)) + strings.Repeat("x", 199)
		if err := unix.Mkdirat(dir, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(dir)
		if err != nil {
			t.Fatal(err)
		}
		dir, rel = next, append(rel, name)
	}
	fd, err := unix.Openat(dir, "f", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, []byte("deep"))
	unix.Close(fd)
	unix.Close(dir)

	d, err := NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deep := strings.Join(rel, "/")
	ents, err := d.ReadDir(ctx, deep)
	if err != nil || len(ents) != 1 || ents[0].Name != "f" || ents[0].Size != 4 {
		t.Fatalf("ReadDir of a %d-byte path: %v, %v; want f of 4 bytes", len(deep), ents, err)
	}
	if e, err := d.Stat(ctx, deep+"/f"); err != nil || e.Size != 4 {
		t.Fatalf("Stat: %v, %v", e, err)
	}
	if _, err := d.Stat(ctx, deep+"/missing"); !os.IsNotExist(err) {
		t.Errorf("Stat of a missing deep name: %v; want not exist", err)
	}
	f, err := d.Open(ctx, deep+"/f")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	n, _ := f.ReadAt(buf, 0)
	f.Close()
	if string(buf[:n]) != "deep" {
		t.Errorf("read %q; want %q", buf[:n], "deep")
	}
	// After Forget the path is opened afresh: a directory moved meanwhile
	// is found at its new path, not through a stale descriptor.
	d.Forget()
	if len(d.deep.fds) != 0 {
		t.Errorf("Forget left %d descriptors", len(d.deep.fds))
	}
	parent := filepath.Join(root, rel[0])
	if err := os.Rename(filepath.Join(parent, rel[1]), filepath.Join(parent, "moved")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Stat(ctx, deep+"/f"); !os.IsNotExist(err) {
		t.Errorf("Stat by the old path after the move and Forget: %v; want not exist", err)
	}
	moved := strings.Join(append([]string{rel[0], "moved"}, rel[2:]...), "/")
	if _, err := d.Stat(ctx, moved+"/f"); err != nil {
		t.Errorf("Stat by the new path: %v", err)
	}
}
