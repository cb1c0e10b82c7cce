package fusefs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/layertree"
	"github.com/stratafs/strata/whiteout"
)

// multiLayerDirs extracts the harness's multi-layer image, one directory
// per layer in the kernel overlayfs's form; top first.
func multiLayerDirs(t *testing.T) []string {
	t.Helper()
	return multiLayerDirsIn(t, whiteout.FormatOverlay)
}

// multiLayerDirsIn extracts the layers keeping whiteouts and opaque
// markers in the given form.
func multiLayerDirsIn(t *testing.T, format whiteout.WhiteoutFormat) []string {
	t.Helper()
	testenv.RequireBinary(t, "busybox")
	base, err := testimage.BusyboxFiles()
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	root := t.TempDir()
	for i, files := range append([][]testimage.File{base}, testimage.MultiLayerLayers()...) {
		l, err := testimage.LayerFromFiles(files, testimage.Uncompressed)
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := l.Uncompressed()
		d := filepath.Join(root, fmt.Sprint("layer", i))
		if _, err := whiteout.Apply(context.Background(), rc, d, whiteout.Options{Mode: whiteout.Layer, Format: format, Privileged: true}); err != nil {
			t.Fatal(err)
		}
		dirs = append([]string{d}, dirs...)
	}
	return dirs
}

func mountUnion(t *testing.T, dirs []string) string {
	t.Helper()
	layers, err := layertree.NewDirs(dirs...)
	if err != nil {
		t.Fatal(err)
	}
	return mountTrees(t, layers...)
}

// mountTrees mounts the union of layers (top first), read-only.
func mountTrees(t *testing.T, layers ...layertree.Tree) string {
	t.Helper()
	mnt, _ := mountTreesUnion(t, layers...)
	return mnt
}

// mountTreesUnion is mountTrees, returning the union too.
func mountTreesUnion(t *testing.T, layers ...layertree.Tree) (string, *Union) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	u, err := New(Options{Layers: layers})
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, err := Mount(mnt, u, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	return mnt, u
}

func TestUnionShowsTheFlattenedImage(t *testing.T) {
	for _, f := range []struct {
		name   string
		format whiteout.WhiteoutFormat
	}{{"overlay", whiteout.FormatOverlay}, {"oci", whiteout.FormatOCI}} {
		t.Run(f.name, func(t *testing.T) {
			mnt := mountUnion(t, multiLayerDirsIn(t, f.format))
			if err := testimage.CheckMultiLayer(mnt); err != nil {
				t.Error(err)
			}
		})
	}
}

// describe lists what the kernel overlayfs and strata must agree on.
func describe(t *testing.T, root string) (map[string]string, map[uint64][]string) {
	t.Helper()
	out := map[string]string{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		s := fmt.Sprintf("type=%o", st.Mode&unix.S_IFMT)
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// Directories' metadata differ where a layer holds a directory
			// only as a parent: the kernel shows that layer's made-up
			// attributes, strata the image's (see whiteout.ImpliedXattr).
			s += fmt.Sprintf(" mode=%o owner=%d:%d size=%d nlink=%d blocks=%d mtime=%d", st.Mode, st.Uid, st.Gid, st.Size, st.Nlink, st.Blocks, st.Mtim.Sec)
			inodes[st.Ino] = append(inodes[st.Ino], rel)
		} else {
			// 1 for a directory merged from several layers.
			s += fmt.Sprintf(" nlink=%d", st.Nlink)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s += fmt.Sprintf(" sha=%x", sha256.Sum256(b))
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			s += " -> " + l
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			buf := make([]byte, 4096)
			if n, err := unix.Llistxattr(p, buf); err == nil {
				names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
				sort.Strings(names)
				for _, x := range names {
					// The kernel shows strata's internal markers; strata hides them.
					if x == "" || whiteout.IsInternalXattr(x) {
						continue
					}
					v := make([]byte, 256)
					m, _ := unix.Lgetxattr(p, x, v)
					s += fmt.Sprintf(" %s=%q", x, v[:max(m, 0)])
				}
			}
		}
		out[rel] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, inodes
}

func TestUnionMatchesKernelOverlay(t *testing.T) {
	dirs := multiLayerDirs(t)
	mnt := mountUnion(t, dirs)
	kernel := t.TempDir()
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", "lowerdir="+strings.Join(dirs, ":"), kernel).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("kernel overlayfs: %v %s", err, out))
	}
	defer unix.Unmount(kernel, unix.MNT_DETACH)
	got, gotIno := describe(t, mnt)
	want, wantIno := describe(t, kernel)
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	bad := 0
	for _, k := range keys {
		if got[k] != want[k] {
			if bad++; bad < 15 {
				t.Errorf("%s:\n  strata %s\n  kernel %s", k, got[k], want[k])
			}
		}
	}
	// Hardlinks: the same groups of names share an inode.
	groups := func(m map[uint64][]string) []string {
		var g []string
		for _, names := range m {
			if len(names) > 1 {
				sort.Strings(names)
				g = append(g, strings.Join(names, ","))
			}
		}
		sort.Strings(g)
		return g
	}
	if a, b := groups(gotIno), groups(wantIno); strings.Join(a, ";") != strings.Join(b, ";") {
		t.Errorf("hardlink groups: strata %v, kernel %v", a, b)
	}
}

func TestUnionWithoutUpperIsReadOnly(t *testing.T) {
	mnt := mountUnion(t, multiLayerDirs(t))
	if err := os.WriteFile(filepath.Join(mnt, "etc/motd"), []byte("x"), 0o644); !isErrno(err, syscall.EROFS) {
		t.Errorf("write: %v; want EROFS", err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "newdir"), 0o755); !isErrno(err, syscall.EROFS) {
		t.Errorf("mkdir: %v; want EROFS", err)
	}
}

func isErrno(err error, e syscall.Errno) bool {
	var pe *os.PathError
	if ok := asPathError(err, &pe); ok {
		return pe.Err == e
	}
	return false
}

func asPathError(err error, pe **os.PathError) bool {
	p, ok := err.(*os.PathError)
	if ok {
		*pe = p
	}
	return ok
}

func TestInodesStableAcrossMounts(t *testing.T) {
	dirs := multiLayerDirs(t)
	ino := func() map[string]uint64 {
		mnt := mountUnion(t, dirs)
		m := map[string]uint64{}
		for _, p := range []string{"bin/busybox", "etc/motd", "opt/app/h1", "opt/app/config", "opt/app"} {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(mnt, p), &st); err != nil {
				t.Fatal(err)
			}
			m[p] = st.Ino
		}
		return m
	}
	a, b := ino(), ino()
	for p := range a {
		if a[p] != b[p] {
			t.Errorf("%s: inode %d then %d", p, a[p], b[p])
		}
	}
}

func TestUnionOfMemoryTrees(t *testing.T) {
	top, bottom := layertree.NewMem(), layertree.NewMem()
	bottom.Add("a/x", layertree.Entry{Mode: layertree.ModeRegular | 0o644}, []byte("bottom x"), nil)
	bottom.Add("a/y", layertree.Entry{Mode: layertree.ModeRegular | 0o644}, []byte("bottom y"), nil)
	bottom.Add("gone/z", layertree.Entry{Mode: layertree.ModeRegular | 0o644}, []byte("z"), nil)
	top.Add("a/x", layertree.Entry{Mode: layertree.ModeRegular | 0o600}, []byte("top x"), nil)
	top.Add("gone", layertree.Entry{Mode: layertree.ModeChar, Whiteout: true}, nil, nil)
	mnt := mountTrees(t, top, bottom)
	for p, want := range map[string]string{"a/x": "top x", "a/y": "bottom y"} {
		if b, err := os.ReadFile(filepath.Join(mnt, p)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "gone")); !os.IsNotExist(err) {
		t.Errorf("whited-out directory visible: %v", err)
	}
	ents, _ := os.ReadDir(mnt)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "a" {
		t.Errorf("root lists %v", names)
	}
}

// countingTree counts the listings asked of a layer.
type countingTree struct {
	layertree.Tree
	mu       sync.Mutex
	listings map[string]int
}

func (c *countingTree) ReadDir(ctx context.Context, p string) ([]layertree.Entry, error) {
	c.mu.Lock()
	c.listings[p]++
	c.mu.Unlock()
	return c.Tree.ReadDir(ctx, p)
}

func (c *countingTree) listed(p string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.listings[p]
}

// A lookup in a directory of a fresh union asks each layer for that name
// only; the directory is listed when it is listed, and what the lookups
// found stays what it was (same inode numbers, whiteouts honoured).
func TestLookupWithoutListing(t *testing.T) {
	top, bottom := layertree.NewMem(), layertree.NewMem()
	for i := 0; i < 200; i++ {
		bottom.Add(fmt.Sprintf("big/f%03d", i), layertree.Entry{Mode: layertree.ModeRegular | 0o644}, []byte("bottom"), nil)
	}
	top.Add("big/f007", layertree.Entry{Mode: layertree.ModeRegular | 0o600}, []byte("top"), nil)
	top.Add("big/f008", layertree.Entry{Mode: layertree.ModeChar, Whiteout: true}, nil, nil)
	ct, cb := &countingTree{Tree: top, listings: map[string]int{}}, &countingTree{Tree: bottom, listings: map[string]int{}}
	mnt := mountTrees(t, ct, cb)
	inos := map[string]uint64{}
	for name, want := range map[string]string{"f001": "bottom", "f007": "top"} {
		p := filepath.Join(mnt, "big", name)
		if b, err := os.ReadFile(p); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
		var st syscall.Stat_t
		syscall.Stat(p, &st)
		inos[name] = st.Ino
	}
	if _, err := os.Stat(filepath.Join(mnt, "big", "f008")); !os.IsNotExist(err) {
		t.Errorf("whited-out name found by a lookup: %v", err)
	}
	if n := ct.listed("big") + cb.listed("big"); n != 0 {
		t.Errorf("lookups listed the directory %d times", n)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "big"))
	if err != nil || len(ents) != 199 {
		t.Fatalf("listing: %d entries, %v; want 199", len(ents), err)
	}
	for name, ino := range inos {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(mnt, "big", name), &st); err != nil || st.Ino != ino {
			t.Errorf("%s after the listing: inode %d, %v; was %d", name, st.Ino, err, ino)
		}
	}
}

// Lookups of names a directory lacks count toward merging it too: a
// PATH search or an import path asks for many missing names, and after a
// few dozen the directory is listed once and the rest are answered from
// memory, not by asking every layer again.
func TestMissingNamesMergeTheDirectory(t *testing.T) {
	top, bottom := layertree.NewMem(), layertree.NewMem()
	bottom.Add("bin/sh", layertree.Entry{Mode: layertree.ModeRegular | 0o755}, []byte("sh"), nil)
	top.Add("bin/ls", layertree.Entry{Mode: layertree.ModeRegular | 0o755}, []byte("ls"), nil)
	ct, cb := &countingTree{Tree: top, listings: map[string]int{}}, &countingTree{Tree: bottom, listings: map[string]int{}}
	mnt := mountTrees(t, ct, cb)
	for i := 0; i < 3*lookupOneMax; i++ {
		if _, err := os.Lstat(filepath.Join(mnt, "bin", fmt.Sprintf("missing-%d", i))); !os.IsNotExist(err) {
			t.Fatalf("missing-%d: %v", i, err)
		}
	}
	if n := ct.listed("bin") + cb.listed("bin"); n != 2 {
		t.Errorf("after %d lookups of missing names the directory was listed %d times in its 2 layers, want once each", 3*lookupOneMax, n)
	}
	for _, name := range []string{"sh", "ls"} {
		if _, err := os.Lstat(filepath.Join(mnt, "bin", name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A record's packed attributes give back the entry they were made from,
// but for what a record does not keep (name, redirect, whiteout).
func TestAttrsRoundTrip(t *testing.T) {
	for _, e := range []layertree.Entry{
		{Mode: layertree.ModeRegular | 0o4755, UID: 7, GID: 8, Size: 1 << 40, Mtime: time.Unix(1700000000, 123456789), Nlink: 3, Ino: 99},
		{Mode: layertree.ModeSymlink | 0o777, Target: "../a/b", Mtime: time.Unix(-86400*365, 5)},
		{Mode: layertree.ModeChar | 0o600, Rdev: unix.Mkdev(1, 3), Mtime: time.Unix(0, 0)},
		{Mode: layertree.ModeDir | 0o755, Opaque: true, Implied: true, Mtime: time.Unix(253402300799, 999999999)},
	} {
		a := packAttrs(e)
		got := a.entry()
		if !got.Mtime.Equal(e.Mtime) {
			t.Errorf("%o: mtime %v, want %v", e.Mode, got.Mtime, e.Mtime)
		}
		got.Mtime = e.Mtime
		if !reflect.DeepEqual(got, e) {
			t.Errorf("unpacked %+v, want %+v", got, e)
		}
		var fa fuse.Attr
		fillAttr(&fa, &a, 5)
		if fa.Mode != e.Mode || int64(fa.Mtime) != e.Mtime.Unix() || fa.Mtimensec != uint32(e.Mtime.Nanosecond()) || fa.Size != uint64(e.Size) || fa.Ino != 5 {
			t.Errorf("attributes of %+v: %+v", e, fa)
		}
	}
}

// The root has a real inode number, as every other entry does: the one
// the kernel overlayfs gives it (its upper directory's), the same through
// "." and "..", across mounts, and no other entry's. Inode 0 is what
// readdir gives for no file, and ls, find and pwd treat it so.
func TestRootInode(t *testing.T) {
	dirs := multiLayerDirs(t)
	inoOf := func(p string) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	check := func(name, mnt string) uint64 {
		t.Helper()
		root := inoOf(mnt)
		if root == 0 {
			t.Fatalf("%s: the root's inode number is 0", name)
		}
		for _, p := range []string{".", "etc/..", "opt/app/../.."} {
			if got := inoOf(filepath.Join(mnt, p)); got != root {
				t.Errorf("%s: %s has inode %d, the root %d", name, p, got, root)
			}
		}
		filepath.WalkDir(mnt, func(p string, d os.DirEntry, err error) error {
			if err == nil && p != mnt && inoOf(p) == root {
				t.Errorf("%s: %s shares the root's inode %d", name, p, root)
			}
			return nil
		})
		return root
	}
	ro := check("read-only", mountUnion(t, dirs))
	if again := check("read-only again", mountUnion(t, dirs)); again != ro {
		t.Errorf("the root's inode is %d, then %d on a second mount", ro, again)
	}

	base := t.TempDir()
	upper, work, mnt, kernel := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "mnt"), filepath.Join(base, "kernel")
	for _, d := range []string{upper, work, mnt, kernel} {
		os.Mkdir(d, 0o755)
	}
	mountStrata(t, dirs, upper, work, mnt)
	got := check("writable", mnt)
	// Each reports its own upper directory's number.
	kupper := t.TempDir()
	mountKernel(t, dirs, kupper, t.TempDir(), kernel)
	if k, want := inoOf(kernel), inoOf(kupper); k != want {
		t.Fatalf("kernel overlayfs: the root's inode is %d, its upper's %d", k, want)
	}
	if want := inoOf(upper); got != want {
		t.Errorf("the root's inode is %d; its upper directory's is %d", got, want)
	}
}

// dirents lists dir as getdents(2) gives it: names and inode numbers, in
// order, "." and ".." included.
func dirents(t *testing.T, dir string) (names []string, inos []uint64) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return names, inos
		}
		for b := buf[:n]; len(b) > 0; {
			// struct linux_dirent64: ino, off, reclen, type, name.
			ino := binary.NativeEndian.Uint64(b[0:8])
			reclen := binary.NativeEndian.Uint16(b[16:18])
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			names, inos = append(names, string(name)), append(inos, ino)
			b = b[reclen:]
		}
	}
}

// A listing has "." and ".." first, as the kernel overlayfs's has, with
// the inode numbers of the directory and of its parent.
func TestListingHasDotEntries(t *testing.T) {
	mnt := mountUnion(t, multiLayerDirs(t))
	ino := func(p string) uint64 {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	for _, d := range []string{"", "etc", "opt/app"} {
		dir := filepath.Join(mnt, d)
		names, inos := dirents(t, dir)
		if len(names) < 3 || names[0] != "." || names[1] != ".." {
			t.Errorf("%s/ lists %v; want . and .. first", d, names)
			continue
		}
		parent := ino(filepath.Join(dir, ".."))
		if d == "" {
			parent = ino(dir) // the root's ".." is itself (stat leaves the mount)
		}
		if inos[0] != ino(dir) || inos[1] != parent {
			t.Errorf("%s/: . and .. have inodes %d %d; stat says %d %d", d, inos[0], inos[1], ino(dir), parent)
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != len(names)-2 {
			t.Errorf("%s/: os.ReadDir gives %d entries (%v), getdents %d names", d, len(entries), err, len(names))
		}
	}
}
