package whiteout

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/testenv"
)

var mtime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// ent builds a tar entry: "name" a file, "name/" a dir, "name -> t" a
// symlink, "name => t" a hardlink.
type ent struct {
	name   string
	data   string
	mode   int64
	uid    int
	typ    byte
	link   string
	xattrs map[string]string
	size   int64 // overrides len(data) in the header when non-zero
}

func file(name, data string) ent { return ent{name: name, data: data, typ: tar.TypeReg, mode: 0o644} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: to, mode: 0o777}
}
func hardlink(name, to string) ent {
	return ent{name: name, typ: tar.TypeLink, link: to, mode: 0o644}
}

func mktar(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Uid: e.uid, Gid: e.uid, ModTime: mtime, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.data))
			if e.size != 0 {
				h.Size = e.size
			}
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg && e.size == 0 {
			tw.Write([]byte(e.data))
		}
	}
	if err := tw.Close(); err != nil && !strings.Contains(err.Error(), "missed writing") {
		t.Fatal(err)
	}
	return b.Bytes()
}

func apply(t testing.TB, dir string, o Options, ents ...ent) error {
	t.Helper()
	_, err := Apply(context.Background(), bytes.NewReader(mktar(t, ents...)), dir, o)
	return err
}

// tree describes a directory: path → type, mode, owner, content or target.
func tree(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		unix.Lstat(p, &st)
		s := fmt.Sprintf("%o %d:%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, _ := os.ReadFile(p)
			s += fmt.Sprintf(" %q n%d", b, st.Nlink)
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			s += " -> " + l
		case unix.S_IFCHR:
			s += fmt.Sprintf(" dev %d", st.Rdev)
		}
		out[rel] = s
		return nil
	})
	return out
}

func keys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

func TestClassifyName(t *testing.T) {
	for in, want := range map[string]Kind{"a": Regular, ".wh.a": Whiteout, ".wh..wh..opq": Opaque, ".whx": Regular, ".wh..a": Whiteout} {
		k, _, err := ClassifyName(in)
		if err != nil || k != want {
			t.Errorf("ClassifyName(%q) = %v, %v; want %v", in, k, err, want)
		}
	}
	for _, bad := range []string{".wh.", ".wh..", ".wh...", ".wh..wh.x"} {
		if _, _, err := ClassifyName(bad); err == nil {
			t.Errorf("ClassifyName(%q) accepted", bad)
		}
	}
	if _, _, err := ClassifyName(".wh."); !errors.Is(err, ErrBareWhiteout) {
		t.Errorf("bare .wh.: %v", err)
	}
}

func TestFlattenChangesets(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	o := Options{Mode: Flatten, Privileged: true}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(apply(t, root, o,
		dir("etc/"), file("etc/passwd", "root"), file("etc/keep", "k"),
		dir("opq/"), file("opq/old", "o"), dir("opq/sub/"), file("opq/sub/deep", "d"),
		file("gone", "g"), dir("gonedir/"), file("gonedir/x", "x"),
		file("f2d", "file"), dir("d2f/"), file("d2f/in", "i"),
		symlink("ln", "etc/passwd"),
	))
	must(apply(t, root, o,
		file("etc/passwd", "root2"),
		file("opq/new", "n"), file("opq/.wh..wh..opq", ""), // marker after a sibling of the same layer
		file(".wh.gone", ""), file(".wh.gonedir", ""), file(".wh.never-existed", ""),
		dir("f2d/"), file("f2d/now", "dir"), file("d2f", "now a file"),
		file("ln", "replaced symlink"),
	))
	got := tree(t, root)
	for _, p := range []string{"gone", "gonedir", "gonedir/x", "opq/old", "opq/sub", "opq/sub/deep", "d2f/in", ".wh.gone", "opq/.wh..wh..opq"} {
		if _, ok := got[p]; ok {
			t.Errorf("%s should be gone; tree: %v", p, keys(got))
		}
	}
	for p, want := range map[string]string{
		"etc/passwd": `"root2"`, "etc/keep": `"k"`, "opq/new": `"n"`, "f2d/now": `"dir"`, "d2f": `"now a file"`, "ln": `"replaced symlink"`,
	} {
		if !strings.Contains(got[p], want) {
			t.Errorf("%s = %q; want content %s", p, got[p], want)
		}
	}
}

func TestKeepsMetadata(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	capV3 := "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" // cap_net_bind_service, v2
	ents := []ent{
		{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "bin/su", typ: tar.TypeReg, mode: 0o4755, data: "suid"},
		{name: "bin/sg", typ: tar.TypeReg, mode: 0o2755, uid: 1000, data: "sgid"},
		{name: "bin/cap", typ: tar.TypeReg, mode: 0o755, data: "cap", xattrs: map[string]string{"security.capability": capV3, "user.note": "hi"}},
		{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		{name: "ro/", typ: tar.TypeDir, mode: 0o555},
		{name: "ro/inside", typ: tar.TypeReg, mode: 0o444, data: "x"},
		{name: "fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: "null", typ: tar.TypeChar, mode: 0o666},
		hardlink("bin/su2", "bin/su"),
		symlink("abs", "/etc/passwd"),
		symlink("dangling", "../../nowhere"),
	}
	ents[8].link = ""
	if err := apply(t, root, Options{Mode: Layer, Privileged: true}, ents...); err != nil {
		t.Fatal(err)
	}
	check := func(p string, mode uint32, uid uint32) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
			t.Errorf("%s: %v", p, err)
			return
		}
		if st.Mode != mode || st.Uid != uid {
			t.Errorf("%s: mode %o uid %d; want %o %d", p, st.Mode, st.Uid, mode, uid)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK && st.Mtim.Sec != mtime.Unix() {
			t.Errorf("%s: mtime %d; want %d", p, st.Mtim.Sec, mtime.Unix())
		}
	}
	check("bin/su", unix.S_IFREG|0o4755, 0)
	check("bin/sg", unix.S_IFREG|0o2755, 1000)
	check("tmp", unix.S_IFDIR|0o1777, 0)
	check("ro", unix.S_IFDIR|0o555, 0)
	check("fifo", unix.S_IFIFO|0o600, 0)
	check("null", unix.S_IFCHR|0o666, 0)
	check("bin", unix.S_IFDIR|0o755, 0)
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(root, "bin/su"), &a)
	unix.Lstat(filepath.Join(root, "bin/su2"), &b)
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hardlink not kept: ino %d/%d nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if v, err := getXattr(filepath.Join(root, "bin/cap"), "security.capability"); err != nil || string(v) != capV3 {
		t.Errorf("security.capability: %q %v", v, err)
	}
	if v, _ := getXattr(filepath.Join(root, "bin/cap"), "user.note"); string(v) != "hi" {
		t.Errorf("user.note: %q", v)
	}
	if l, _ := os.Readlink(filepath.Join(root, "abs")); l != "/etc/passwd" {
		t.Errorf("symlink target %q", l)
	}
}

func TestLayerModeFormats(t *testing.T) {
	testenv.RequireRoot(t)
	layer := []ent{dir("d/"), file("d/.wh..wh..opq", ""), file("d/new", "n"), file(".wh.gone", ""), dir("x/"), file("x/.wh.y", "")}
	for _, c := range []struct {
		f       WhiteoutFormat
		opaqueX string
	}{{FormatOverlay, OpaqueXattrTrusted}, {FormatOverlayUser, OpaqueXattrUser}, {FormatOCI, ""}} {
		root := t.TempDir()
		if err := apply(t, root, Options{Mode: Layer, Format: c.f, Privileged: true}, layer...); err != nil {
			t.Fatal(err)
		}
		got := tree(t, root)
		if c.f == FormatOCI {
			for _, p := range []string{"d/.wh..wh..opq", ".wh.gone", "x/.wh.y"} {
				if _, ok := got[p]; !ok {
					t.Errorf("OCI form: %s missing: %v", p, keys(got))
				}
			}
			continue
		}
		if got["gone"] != "20000 0:0 dev 0" || got["x/y"] != "20000 0:0 dev 0" {
			t.Errorf("format %v: whiteouts not char 0/0: %q %q", c.f, got["gone"], got["x/y"])
		}
		if v, err := getXattr(filepath.Join(root, "d"), c.opaqueX); err != nil || string(v) != "y" {
			t.Errorf("format %v: %s = %q, %v", c.f, c.opaqueX, v, err)
		}
		if _, ok := got["d/.wh..wh..opq"]; ok {
			t.Errorf("opaque marker file kept in overlay form")
		}
	}
}

// TestLayerFormReadByKernelOverlay hands extracted layers to the kernel's
// overlayfs: its view must match the flattened tree.
func TestLayerFormReadByKernelOverlay(t *testing.T) {
	testenv.RequireRoot(t)
	layers := [][]ent{
		{dir("etc/"), file("etc/a", "1"), file("etc/b", "2"), dir("opq/"), file("opq/old", "o"), file("gone", "g")},
		{file("etc/a", "1b"), file("etc/.wh.b", ""), dir("opq/"), file("opq/.wh..wh..opq", ""), file("opq/new", "n"), file(".wh.gone", "")},
	}
	base := t.TempDir()
	flat := filepath.Join(base, "flat")
	var lowers []string
	for i, l := range layers {
		ld := filepath.Join(base, fmt.Sprint("l", i))
		if err := apply(t, ld, Options{Mode: Layer, Privileged: true}, l...); err != nil {
			t.Fatal(err)
		}
		lowers = append([]string{ld}, lowers...)
		if err := apply(t, flat, Options{Mode: Flatten, Privileged: true}, l...); err != nil {
			t.Fatal(err)
		}
	}
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", "lowerdir="+strings.Join(lowers, ":"), mnt).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("kernel overlayfs unavailable: %v %s", err, out))
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	got, want := tree(t, mnt), tree(t, flat)
	// Directory mtimes and modes of implied dirs may differ; compare
	// names and file content.
	if strings.Join(keys(got), ",") != strings.Join(keys(want), ",") {
		t.Errorf("overlay view %v; flattened %v", keys(got), keys(want))
	}
	for p, w := range want {
		if strings.HasPrefix(w, "10") && got[p] != w {
			t.Errorf("%s: overlay %q, flat %q", p, got[p], w)
		}
	}
}

func TestRoundTripThroughWriteTar(t *testing.T) {
	testenv.RequireRoot(t)
	layers := [][]ent{
		{dir("etc/"), file("etc/a", "1"), file("etc/b", "2"), dir("opq/"), file("opq/old", "o"), file("gone", "g"),
			{name: "su", typ: tar.TypeReg, mode: 0o4711, data: "s", xattrs: map[string]string{"user.x": "y"}},
			hardlink("etc/a-link", "etc/a"), symlink("sl", "etc/a"), {name: "p", typ: tar.TypeFifo, mode: 0o644}},
		{file("etc/a", "1b"), file("etc/.wh.b", ""), dir("opq/"), file("opq/.wh..wh..opq", ""), file("opq/new", "n"), file(".wh.gone", ""), file("etc/d", "d"), hardlink("etc/c", "etc/d")},
	}
	base := t.TempDir()
	direct := filepath.Join(base, "direct")
	via := filepath.Join(base, "via")
	for i, l := range layers {
		if err := apply(t, direct, Options{Mode: Flatten, Privileged: true}, l...); err != nil {
			t.Fatal(err)
		}
		ld := filepath.Join(base, fmt.Sprint("layer", i))
		if err := apply(t, ld, Options{Mode: Layer, Privileged: true}, l...); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteTar(context.Background(), ld, &buf); err != nil {
			t.Fatal(err)
		}
		if _, err := Apply(context.Background(), &buf, via, Options{Mode: Flatten, Privileged: true}); err != nil {
			t.Fatal(err)
		}
	}
	got, want := tree(t, via), tree(t, direct)
	for _, k := range keys(want) {
		if got[k] != want[k] {
			t.Errorf("%s: via WriteTar %q, direct %q", k, got[k], want[k])
		}
	}
	for _, k := range keys(got) {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: extra after round trip", k)
		}
	}
	if v, _ := getXattr(filepath.Join(via, "su"), "user.x"); string(v) != "y" {
		t.Errorf("xattr lost in round trip")
	}
}

func TestHostileEntries(t *testing.T) {
	cases := map[string][]ent{
		"absolute path":            {file("/etc/evil", "x")},
		"dot dot":                  {file("../evil", "x")},
		"dot dot inside":           {file("a/../../evil", "x")},
		"symlink then beneath":     {symlink("evil", "../outside"), file("evil/pwned", "x")},
		"abs symlink then beneath": {symlink("evil", "/tmp"), file("evil/pwned", "x")},
		"hardlink escape":          {hardlink("evil", "../outside/sentinel")},
		"hardlink abs":             {hardlink("evil", "/etc/passwd")},
		"hardlink via symlink":     {symlink("s", "../outside"), hardlink("evil", "s/sentinel")},
		"whiteout dotdot":          {file(".wh..", "")},
		"whiteout bare":            {file("a/.wh.", "")},
		"duplicate file":           {file("a", "1"), file("a", "2")},
		"size too big":             {{name: "big", typ: tar.TypeReg, mode: 0o644, size: DefaultMaxEntrySize + 1}},
		"truncated data":           {{name: "short", typ: tar.TypeReg, mode: 0o644, data: "abc", size: 100}},
		"device unprivileged":      {{name: "dev", typ: tar.TypeBlock, mode: 0o600}},
	}
	for name, ents := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			target := filepath.Join(base, "target")
			outside := filepath.Join(base, "outside")
			os.MkdirAll(outside, 0o755)
			os.WriteFile(filepath.Join(outside, "sentinel"), []byte("keep"), 0o644)
			priv := name != "device unprivileged" && os.Geteuid() == 0
			err := apply(t, target, Options{Mode: Flatten, Privileged: priv}, ents...)
			if err == nil {
				t.Fatalf("accepted: %v", tree(t, target))
			}
			last := ents[len(ents)-1].name
			if !strings.Contains(err.Error(), last) && !strings.Contains(err.Error(), "short") {
				t.Errorf("error %q does not name the entry %q", err, last)
			}
			assertUntouched(t, base)
		})
	}
}

// assertUntouched checks that nothing but target/ and outside/sentinel
// exists under base, and the sentinel is intact.
func assertUntouched(t testing.TB, base string) {
	t.Helper()
	filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(base, p)
		if rel == "." || rel == "target" || strings.HasPrefix(rel, "target/") || rel == "outside" || rel == "outside/sentinel" {
			return nil
		}
		t.Errorf("written outside the target: %s", rel)
		return nil
	})
	if b, err := os.ReadFile(filepath.Join(base, "outside/sentinel")); err != nil || string(b) != "keep" {
		t.Errorf("sentinel changed: %q %v", b, err)
	}
}
