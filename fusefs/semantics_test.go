package fusefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/layertree"
)

// twoLayers makes a small stack: bottom has etc/conf and data/big, top
// has etc/top.
func twoLayers(t *testing.T) []string {
	t.Helper()
	base := t.TempDir()
	top, bottom := filepath.Join(base, "top"), filepath.Join(base, "bottom")
	for _, d := range []string{top + "/etc", bottom + "/etc", bottom + "/data"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(bottom+"/etc/conf", []byte("conf\n"), 0o644)
	os.WriteFile(bottom+"/data/big", bytes.Repeat([]byte("x"), 1<<20), 0o644)
	os.WriteFile(top+"/etc/top", []byte("top\n"), 0o644)
	return []string{top, bottom}
}

func TestTmpfile(t *testing.T) {
	mnt, upper := mountWritable(t, twoLayers(t))
	dir := filepath.Join(mnt, "etc") // a lower directory: copied up first
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("O_TMPFILE: %v", err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte("anonymous\n")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fchmod(fd, 0o640); err != nil {
		t.Fatalf("fchmod of a nameless file: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("the nameless file shows in the directory: %v", ents)
	}
	named := filepath.Join(dir, "named")
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, named, unix.AT_SYMLINK_FOLLOW); err != nil {
		t.Fatalf("linkat of an O_TMPFILE file: %v", err)
	}
	b, err := os.ReadFile(named)
	if err != nil || string(b) != "anonymous\n" {
		t.Fatalf("named = %q, %v", b, err)
	}
	var st, fst unix.Stat_t
	unix.Stat(named, &st)
	unix.Fstat(fd, &fst)
	if st.Mode&0o777 != 0o640 || st.Ino != fst.Ino || st.Nlink != 1 {
		t.Errorf("named: mode %o ino %d nlink %d; the open file: ino %d", st.Mode&0o777, st.Ino, st.Nlink, fst.Ino)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "etc/named")); err != nil || string(b) != "anonymous\n" {
		t.Errorf("upper etc/named = %q, %v", b, err)
	}
	// O_EXCL: it may never be linked.
	fd2, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd2)
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd2), unix.AT_FDCWD, filepath.Join(dir, "never"), unix.AT_SYMLINK_FOLLOW); err == nil {
		t.Error("linked an O_TMPFILE|O_EXCL file")
	}
}

func TestUnixSocketInUnion(t *testing.T) {
	mnt, upper := mountWritable(t, twoLayers(t))
	sock := filepath.Join(mnt, "etc/sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("bind a unix socket in the union: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket shows as %v, %v", fi, err)
	}
	if fi, err := os.Lstat(filepath.Join(upper, "etc/sock")); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("upper etc/sock: %v, %v", fi, err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("connect through the union: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
		t.Errorf("read %q, %v", buf, err)
	}
}

func TestDeviceNodes(t *testing.T) {
	mnt, _ := mountWritable(t, twoLayers(t))
	p := filepath.Join(mnt, "etc/null")
	if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatalf("mknod as root: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("device node: mode %o rdev %x, %v", st.Mode, st.Rdev, err)
	}
	// A char 0/0 device is a whiteout: refused, as the kernel overlayfs does.
	if err := unix.Mknod(filepath.Join(mnt, "etc/wh"), unix.S_IFCHR|0o666, 0); err == nil {
		t.Error("made a char 0/0 device, which would be a whiteout")
	}
}

func TestStatfsFsyncFallocate(t *testing.T) {
	mnt, upper := mountWritable(t, twoLayers(t))
	var got, want unix.Statfs_t
	if err := unix.Statfs(mnt, &got); err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(upper, &want); err != nil {
		t.Fatal(err)
	}
	if got.Blocks != want.Blocks || got.Bsize != want.Bsize || got.Namelen != want.Namelen {
		t.Errorf("statfs: blocks %d bsize %d namelen %d; the upper's filesystem: %d %d %d", got.Blocks, got.Bsize, got.Namelen, want.Blocks, want.Bsize, want.Namelen)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "data/big"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 4<<20); err != nil {
		t.Fatalf("fallocate: %v", err)
	}
	if fi, _ := f.Stat(); fi.Size() != 4<<20 {
		t.Errorf("size after fallocate = %d", fi.Size())
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
		t.Fatalf("punch hole: %v", err)
	}
	b := make([]byte, 8)
	f.ReadAt(b, 0)
	if !bytes.Equal(b, make([]byte, 8)) {
		t.Errorf("punched range reads %q", b)
	}
	if err := f.Sync(); err != nil {
		t.Errorf("fsync: %v", err)
	}
	d, err := os.Open(filepath.Join(mnt, "etc"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && err.(*os.PathError).Err != syscall.ENOSYS {
		t.Errorf("fsync of a directory: %v", err)
	}
}

// TestChmodOfUnlinkedOpenFile: fchmod/ftruncate/futimens reach an open
// file whose name is gone, as on a local filesystem.
func TestChmodOfUnlinkedOpenFile(t *testing.T) {
	mnt, _ := mountWritable(t, twoLayers(t))
	p := filepath.Join(mnt, "etc/conf")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod(0o600); err != nil {
		t.Fatalf("fchmod after unlink: %v", err)
	}
	if err := f.Truncate(2); err != nil {
		t.Fatalf("ftruncate after unlink: %v", err)
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 2 {
		t.Errorf("fstat after unlink: %v, %v", fi, err)
	}
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("etc/conf still shows: %v", err)
	}
}

// A lower file opened read-only whose name then goes (unlinked, or
// replaced by a rename) can still be changed through the descriptor, as
// on a local filesystem; its name stays gone and the new file at the
// name is untouched.
func TestChmodOfLowerFileWhoseNameWent(t *testing.T) {
	mnt, _ := mountWritable(t, twoLayers(t))
	for _, how := range []string{"unlink", "rename over"} {
		p := filepath.Join(mnt, "etc/conf")
		if how == "rename over" {
			p = filepath.Join(mnt, "data/big")
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if how == "unlink" {
			err = os.Remove(p)
		} else {
			if err = os.WriteFile(filepath.Join(mnt, "tmp-new"), []byte("new"), 0o644); err == nil {
				err = os.Rename(filepath.Join(mnt, "tmp-new"), p)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Chmod(0o600); err != nil {
			t.Errorf("%s: fchmod: %v", how, err)
		}
		if fi, err := f.Stat(); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: fstat after fchmod: %v, %v", how, fi, err)
		}
		f.Close()
		fi, err := os.Stat(p)
		switch {
		case how == "unlink" && !os.IsNotExist(err):
			t.Errorf("unlink: the name shows again: %v", err)
		case how == "rename over" && (err != nil || fi.Mode().Perm() != 0o644 || fi.Size() != 3):
			t.Errorf("rename over: the new file changed: %v, %v", fi, err)
		}
	}
}

// TestLowerWhiteoutClosesUpperDirectory: a directory made in the union
// over a name a lower layer whites out must not show what lies below the
// whiteout, also after a remount, as with the kernel overlayfs.
func TestLowerWhiteoutClosesUpperDirectory(t *testing.T) {
	base := t.TempDir()
	top, bottom := filepath.Join(base, "top"), filepath.Join(base, "bottom")
	os.MkdirAll(filepath.Join(bottom, "x"), 0o755)
	os.WriteFile(filepath.Join(bottom, "x/old"), []byte("old"), 0o644)
	os.MkdirAll(top, 0o755)
	if err := unix.Mknod(filepath.Join(top, "x"), unix.S_IFCHR, 0); err != nil {
		t.Skipf("cannot make a whiteout: %v", err)
	}
	mnt, upper := mountWritable(t, []string{top, bottom})
	if err := os.Mkdir(filepath.Join(mnt, "y"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(mnt, "y/new"), []byte("new"), 0o644)
	if err := os.Rename(filepath.Join(mnt, "y"), filepath.Join(mnt, "x")); err != nil {
		t.Fatal(err)
	}
	check := func(label, root string) {
		ents, err := os.ReadDir(filepath.Join(root, "x"))
		if err != nil || len(ents) != 1 || ents[0].Name() != "new" {
			t.Errorf("%s: x holds %v, %v; want only new", label, ents, err)
		}
	}
	check("strata", mnt)
	// A fresh union over the same upper, and the kernel's.
	layers, err := layertree.NewDirs(top, bottom)
	if err != nil {
		t.Fatal(err)
	}
	u, err := New(Options{Layers: layers, UpperDir: upper, WorkDir: filepath.Join(base, "work2")})
	if err != nil {
		t.Fatal(err)
	}
	mnt2 := filepath.Join(base, "mnt2")
	os.Mkdir(mnt2, 0o755)
	srv, err := Mount(mnt2, u, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	check("strata after remount", mnt2)
	kmnt, kwork := filepath.Join(base, "kmnt"), filepath.Join(base, "kwork")
	os.Mkdir(kmnt, 0o755)
	os.Mkdir(kwork, 0o755)
	srv.Unmount()
	mountKernel(t, []string{top, bottom}, upper, kwork, kmnt)
	check("kernel overlayfs", kmnt)
}

// A new entry gets the mode its creator asked for, the creator's umask
// applied (by the kernel) and not the server's; root keeps set-user-ID
// and set-group-ID bits, and mode 0000 stays 0000.
func TestCreatedModes(t *testing.T) {
	old := unix.Umask(0o022) // the server's, here the test's own
	defer unix.Umask(old)
	mnt, _ := mountWritable(t, twoLayers(t))
	script := `set -e; cd "$1"; umask 0
mkdir -m 0777 d777; mkdir -m 01777 sticky; mkdir -m 0 d0
python3 -c 'import os; [os.close(os.open(n, os.O_CREAT|os.O_WRONLY, m)) for n, m in (("f620", 0o620), ("f0", 0), ("suid", 0o4777), ("sgid", 0o2755))]'
mkfifo -m 0666 fifo; umask 027; python3 -c 'import os; os.mkdir("masked", 0o777)'`
	if out, err := exec.Command("sh", "-c", script, "sh", mnt).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for name, want := range map[string]uint32{"d777": 0o777, "sticky": 0o1777, "d0": 0, "f620": 0o620, "f0": 0,
		"suid": 0o4777, "sgid": 0o2755, "fifo": 0o666, "masked": 0o750} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mnt, name), &st); err != nil || st.Mode&0o7777 != want {
			t.Errorf("%s: mode %o, %v; want %o", name, st.Mode&0o7777, err, want)
		}
	}
}

// A file of mode 0000 shows as such, and the kernel's permission checks
// keep it from other users (go-fuse by default shows 0000 as 0644).
func TestNullPermissions(t *testing.T) {
	layers := twoLayers(t)
	secret := filepath.Join(layers[1], "etc/shadow")
	if err := os.WriteFile(secret, []byte("secret\n"), 0); err != nil {
		t.Fatal(err)
	}
	mnt, _ := mountWritable(t, layers)
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "etc/shadow"), &st); err != nil || st.Mode&0o7777 != 0 {
		t.Errorf("etc/shadow: mode %o, %v; want 0", st.Mode&0o7777, err)
	}
	cat := exec.Command("cat", filepath.Join(mnt, "etc/shadow"))
	cat.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cat.CombinedOutput(); err == nil || bytes.Contains(out, []byte("secret")) {
		t.Errorf("another user read a 0000 file: %q, %v", out, err)
	}
}

// A name longer than NAME_MAX is refused with ENAMETOOLONG, as by the
// layers' file systems, not reported missing.
func TestNameTooLong(t *testing.T) {
	mnt, _ := mountWritable(t, twoLayers(t))
	os.ReadDir(filepath.Join(mnt, "etc")) // merged: answered from the merge, not by the layers
	long := filepath.Join(mnt, "etc", string(bytes.Repeat([]byte("x"), 256)))
	var st unix.Stat_t
	if err := unix.Lstat(long, &st); err != unix.ENAMETOOLONG {
		t.Errorf("lstat of a 256-byte name: %v; want ENAMETOOLONG", err)
	}
	if err := os.WriteFile(long, nil, 0o644); !errors.Is(err, unix.ENAMETOOLONG) {
		t.Errorf("create of a 256-byte name: %v; want ENAMETOOLONG", err)
	}
	if err := os.WriteFile(long[:len(long)-1], nil, 0o644); err != nil {
		t.Errorf("create of a 255-byte name: %v", err)
	}
}

// TestDeepPaths makes, renames, reads and removes files whose paths below
// the mount are longer than PATH_MAX, as a process can by working
// relative to open directories: the upper has them at paths just as
// long, and a lower layer made of it shows them.
func TestDeepPaths(t *testing.T) {
	mnt, upper := mountWritable(t, twoLayers(t))
	var names []string
	for i := range 25 { // 25 × 201 bytes: past PATH_MAX
		names = append(names, fmt.Sprintf("%02d%s", i, bytes.Repeat([]byte("d"), 198)))
	}
	dir := openChain(t, mnt, nil)
	for i, name := range names {
		if err := unix.Mkdirat(dir, name, 0o755); err != nil {
			t.Fatalf("mkdir at depth %d: %v", i, err)
		}
		next := openAt(t, dir, name)
		unix.Close(dir)
		dir = next
	}
	fd, err := unix.Openat(dir, "f", unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0o640)
	if err != nil {
		t.Fatalf("create below a path longer than PATH_MAX: %v", err)
	}
	unix.Write(fd, []byte("deep"))
	unix.Close(fd)
	if err := unix.Symlinkat("f", dir, "l"); err != nil {
		t.Fatalf("symlink: %v", err)
	}
	if err := unix.Renameat(dir, "l", dir, "l2"); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if err := unix.Fchmodat(dir, "f", 0o600, 0); err != nil {
		t.Fatalf("chmod: %v", err)
	}
	unix.Close(dir)

	// Moving a shallow directory moves the deep tree; its files are then
	// found by the new path.
	if err := os.Rename(filepath.Join(mnt, names[0], names[1]), filepath.Join(mnt, names[0], "moved")); err != nil {
		t.Fatal(err)
	}
	moved := append([]string{names[0], "moved"}, names[2:]...)
	readDeep := func(root, what string) {
		t.Helper()
		dir := openChain(t, root, moved)
		defer unix.Close(dir)
		buf := make([]byte, 16)
		fd, err := unix.Openat(dir, "l2", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("%s: open through the symlink: %v", what, err)
		}
		n, _ := unix.Read(fd, buf)
		unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstatat(dir, "f", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&0o7777 != 0o600 {
			t.Errorf("%s: stat: %v, mode %o; want 600", what, err, st.Mode&0o7777)
		}
		if string(buf[:n]) != "deep" {
			t.Errorf("%s: read %q; want %q", what, buf[:n], "deep")
		}
	}
	readDeep(mnt, "the union")
	readDeep(upper, "the upper")
	readDeep(mountUnion(t, []string{upper}), "the upper as a lower layer")

	dir = openChain(t, mnt, moved)
	for _, name := range []string{"f", "l2"} {
		if err := unix.Unlinkat(dir, name, 0); err != nil {
			t.Errorf("unlink %s: %v", name, err)
		}
	}
	for i := len(moved) - 1; i >= 0; i-- {
		parent := openAt(t, dir, "..")
		unix.Close(dir)
		dir = parent
		if err := unix.Unlinkat(dir, moved[i], unix.AT_REMOVEDIR); err != nil {
			t.Fatalf("rmdir at depth %d: %v", i, err)
		}
	}
	unix.Close(dir)
	if ents, _ := os.ReadDir(upper); hasName(ents, names[0]) {
		t.Errorf("the upper still has %.10s… after the tree was removed", names[0])
	}
}

const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC

// openChain opens the directory root/names..., one name at a time.
func openChain(t *testing.T, root string, names []string) int {
	t.Helper()
	dir, err := unix.Open(root, dirFlags, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		next, err := unix.Openat(dir, name, dirFlags, 0)
		unix.Close(dir)
		if err != nil {
			t.Fatalf("open at depth %d below %s: %v", i, root, err)
		}
		dir = next
	}
	return dir
}

// openAt opens the directory name in the open directory dir.
func openAt(t *testing.T, dir int, name string) int {
	t.Helper()
	fd, err := unix.Openat(dir, name, dirFlags, 0)
	if err != nil {
		t.Fatalf("open %.10s…: %v", name, err)
	}
	return fd
}

func hasName(ents []os.DirEntry, name string) bool {
	for _, e := range ents {
		if e.Name() == name {
			return true
		}
	}
	return false
}

// lseek's SEEK_DATA and SEEK_HOLE answer as on the kernel overlayfs: from
// the file's own holes, for a lower file and an upper one, also once the
// open file's name is gone (stress-ng's seek stressor found ENOENT).
func TestSeekDataAndHoles(t *testing.T) {
	strata, kernel, _ := setup(t, multiLayerDirs(t))
	probe := func(root string) string {
		t.Helper()
		var out []string
		seek := func(f *os.File, off int64, whence int) {
			n, err := unix.Seek(int(f.Fd()), off, whence)
			out = append(out, fmt.Sprintf("%d:%d=%d,%v", whence, off, n, errnoOf(err)))
		}
		lower, err := os.Open(filepath.Join(root, "etc/motd"))
		if err != nil {
			t.Fatal(err)
		}
		defer lower.Close()
		for _, off := range []int64{0, 3, 1 << 20} {
			seek(lower, off, unix.SEEK_DATA)
			seek(lower, off, unix.SEEK_HOLE)
		}
		sparse, err := os.Create(filepath.Join(root, "sparse"))
		if err != nil {
			t.Fatal(err)
		}
		defer sparse.Close()
		if _, err := sparse.WriteAt([]byte("data"), 1<<20); err != nil {
			t.Fatal(err)
		}
		for _, gone := range []bool{false, true} {
			if gone {
				if err := os.Remove(filepath.Join(root, "sparse")); err != nil {
					t.Fatal(err)
				}
			}
			for _, off := range []int64{0, 1 << 20, 2 << 20} {
				seek(sparse, off, unix.SEEK_DATA)
				seek(sparse, off, unix.SEEK_HOLE)
			}
		}
		return strings.Join(out, " ")
	}
	if got, want := probe(strata), probe(kernel); got != want {
		t.Errorf("lseek:\n  strata %s\n  kernel %s", got, want)
	}
}

// An open file whose name is gone is still the file: what is done
// through its descriptor works as on the kernel overlayfs, xattrs too
// (which the kernel asks for by inode, not by the open file).
func TestUnlinkedOpenFile(t *testing.T) {
	strata, kernel, _ := setup(t, multiLayerDirs(t))
	probe := func(root string) string {
		t.Helper()
		var out []string
		note := func(what string, v any, err error) {
			out = append(out, fmt.Sprintf("%s=%v,%v", what, v, errnoOf(err)))
		}
		for _, name := range []string{"new-file", "etc/motd"} { // made in the union; copied up
			f, err := os.OpenFile(filepath.Join(root, name), os.O_RDWR|os.O_CREATE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := os.Remove(filepath.Join(root, name)); err != nil {
				t.Fatal(err)
			}
			fd := int(f.Fd())
			note("truncate", nil, unix.Ftruncate(fd, 3))
			note("chmod", nil, unix.Fchmod(fd, 0o600))
			note("chown", nil, unix.Fchown(fd, 7, 8))
			note("utimes", nil, unix.Futimes(fd, []unix.Timeval{{Sec: 100}, {Sec: 200}}))
			note("setxattr", nil, unix.Fsetxattr(fd, "user.k", []byte("v"), 0))
			buf := make([]byte, 64)
			n, err := unix.Fgetxattr(fd, "user.k", buf)
			note("getxattr", string(buf[:max(n, 0)]), err)
			n, err = unix.Flistxattr(fd, buf)
			note("listxattr", strings.ReplaceAll(string(buf[:max(n, 0)]), "\x00", ","), err)
			note("removexattr", nil, unix.Fremovexattr(fd, "user.k"))
			var st unix.Stat_t
			err = unix.Fstat(fd, &st)
			note("stat", fmt.Sprintf("size=%d mode=%o owner=%d:%d mtime=%d nlink=%d", st.Size, st.Mode, st.Uid, st.Gid, st.Mtim.Sec, st.Nlink), err)
		}
		return strings.Join(out, " ")
	}
	if got, want := probe(strata), probe(kernel); got != want {
		t.Errorf("through the descriptor of an unlinked file:\n  strata %s\n  kernel %s", got, want)
	}
}

// A copy-up changes nothing the union shows but the file: the directories
// it goes into keep their times (also in the upper, so after a remount),
// and a sparse file keeps its holes, as with the kernel overlayfs.
func TestCopyUpKeepsDirectoryTimesAndHoles(t *testing.T) {
	lower := t.TempDir()
	for _, d := range []string{"p/q", "s"} {
		if err := os.MkdirAll(filepath.Join(lower, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"p/q/f1", "p/q/f2"} {
		if err := os.WriteFile(filepath.Join(lower, f), []byte("lower"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sparse, err := os.Create(filepath.Join(lower, "s/sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sparse.WriteAt([]byte("tail"), 64<<20); err != nil {
		t.Fatal(err)
	}
	sparse.Close()
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, d := range []string{"p/q", "p", "s"} {
		if err := os.Chtimes(filepath.Join(lower, d), old, old); err != nil {
			t.Fatal(err)
		}
	}
	strata, kernel, strataUpper := setup(t, []string{lower})
	probe := func(root string) string {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(root, "p/q/f1"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("+")
		f.Close()
		f, err = os.OpenFile(filepath.Join(root, "s/sparse"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("x"), 0)
		f.Close()
		var out []string
		for _, p := range []string{"p", "p/q", "s", "s/sparse"} {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("%s mtime=%d", p, st.Mtim.Sec))
			if p == "s/sparse" {
				out = append(out, fmt.Sprintf("blocks=%d", st.Blocks))
			}
		}
		return strings.Join(out, " ")
	}
	got, want := probe(strata), probe(kernel)
	if got != want {
		t.Errorf("after copy-ups:\n  strata %s\n  kernel %s", got, want)
	}
	for _, d := range []string{"p", "p/q", "s"} {
		if fi, err := os.Stat(filepath.Join(strataUpper, d)); err != nil || !fi.ModTime().Equal(old) {
			t.Errorf("upper %s: modified %v (%v), want %v", d, fi.ModTime(), err, old)
		}
	}
}

// Set-ID bits go as they go on the kernel overlayfs (the union kills them
// itself, FUSE_HANDLE_KILLPRIV_V2): a write, truncate or truncating open
// by a user without CAP_FSETID clears set-user-ID, and set-group-ID where
// the group may execute; root's writes keep them; a chown clears them.
func TestWritesKillSetIDBits(t *testing.T) {
	testenv.RequireBinary(t, "busybox")
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	lower := t.TempDir()
	modes := map[string]uint32{"append": 0o4777, "trunc": 0o6777, "fallocate": 0o4777, "open-trunc": 0o2777, "sgid-no-x": 0o2767, "root-append": 0o6777, "chown": 0o6777, "plain": 0o777}
	for name, mode := range modes {
		p := filepath.Join(lower, name)
		if err := os.WriteFile(p, []byte("lower data"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, os.FileMode(mode&0o777)|modeBits(mode)); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(lower, 0o777)
	strata, kernel, _ := setup(t, []string{lower})
	probe := func(root string) string {
		t.Helper()
		// The test's temporary directories, for uid 1000 to reach.
		for d := filepath.Dir(root); strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
		user := exec.Command(busybox, "sh", "-c", "printf x >> append; busybox truncate -s 2 trunc; printf y > open-trunc; printf z >> sgid-no-x; printf w >> plain; busybox fallocate -l 8192 fallocate")
		user.Dir = root
		user.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
		if out, err := user.CombinedOutput(); err != nil {
			t.Fatalf("as uid 1000: %v: %s", err, out)
		}
		if f, err := os.OpenFile(filepath.Join(root, "root-append"), os.O_WRONLY|os.O_APPEND, 0); err == nil {
			f.WriteString("r")
			f.Close()
		}
		if err := os.Chown(filepath.Join(root, "chown"), 1, 1); err != nil {
			t.Fatal(err)
		}
		// File capabilities go with any write, root's too.
		capFile := filepath.Join(root, "caps")
		if err := os.WriteFile(capFile, []byte("bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		capNetRaw := []byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // v2, permitted cap_net_raw
		if err := unix.Setxattr(capFile, "security.capability", capNetRaw, 0); err != nil {
			t.Fatal(err)
		}
		if f, err := os.OpenFile(capFile, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			f.WriteString("!")
			f.Close()
		}
		n, err := unix.Getxattr(capFile, "security.capability", make([]byte, 64))
		var out []string
		out = append(out, fmt.Sprintf("caps=%d,%v", n, errnoOf(err)))
		for _, name := range []string{"append", "trunc", "fallocate", "open-trunc", "sgid-no-x", "root-append", "chown", "plain"} {
			// The mode alone first, as stat -c %A asks: the kernel
			// then answers from its cache unless told it changed.
			var stx unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, filepath.Join(root, name), 0, unix.STATX_MODE, &stx); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(root, name), &st); err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("%s=%o,%o/%d", name, stx.Mode&0o7777, st.Mode&0o7777, st.Size))
		}
		return strings.Join(out, " ")
	}
	got, want := probe(strata), probe(kernel)
	if got != want {
		t.Errorf("modes after writes:\n  strata %s\n  kernel %s", got, want)
	}
	if !strings.Contains(want, "append=777,777/") || !strings.Contains(want, "root-append=6777,6777/") || !strings.Contains(want, "caps=-1,no data available") {
		t.Errorf("the kernel's own reference looks wrong: %s", want)
	}
}

// modeBits turns the set-ID and sticky bits of a mode into os.FileMode's.
func modeBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// Overlay xattrs set through the union are escaped as the kernel overlayfs
// (Linux 6.7 and later) escapes them: trusted.overlay.X is stored as
// trusted.overlay.overlay.X, which never reads as a marker, and shows as
// trusted.overlay.X; an escaped xattr in a layer shows unescaped, and a
// copy-up keeps it escaped. strata's own xattrs stay refused.
func TestOverlayXattrsEscaped(t *testing.T) {
	lower := t.TempDir()
	for _, f := range []string{"escaped", "plain"} {
		if err := os.WriteFile(filepath.Join(lower, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(lower, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lower, "dir", "kept"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(lower, "escaped"), "trusted.overlay.overlay.lower", []byte("1"), 0); err != nil {
		testenv.Skip(t, fmt.Sprintf("trusted xattrs on %s: %v", lower, err))
	}
	strata, kernel, strataUpper := setup(t, []string{lower})
	if err := unix.Lsetxattr(filepath.Join(kernel, "plain"), "trusted.overlay.probe", []byte("1"), 0); err != nil {
		testenv.Skip(t, fmt.Sprintf("the kernel overlayfs does not escape its xattrs (Linux 6.7 and later do): %v", err))
	}
	unix.Lremovexattr(filepath.Join(kernel, "plain"), "trusted.overlay.probe")
	probe := func(root string) string {
		var out []string
		try := func(what string, err error) { out = append(out, fmt.Sprintf("%s=%v", what, errnoOf(err))) }
		list := func(p string) {
			b := make([]byte, 1024)
			n, err := unix.Llistxattr(filepath.Join(root, p), b)
			if err != nil {
				try("list "+p, err)
				return
			}
			names := strings.Split(strings.TrimRight(string(b[:n]), "\x00"), "\x00")
			slices.Sort(names)
			out = append(out, p+":"+strings.Join(names, ","))
		}
		get := func(p, name string) {
			b := make([]byte, 64)
			n, err := unix.Lgetxattr(filepath.Join(root, p), name, b)
			if err != nil {
				try("get "+p+" "+name, err)
				return
			}
			out = append(out, fmt.Sprintf("%s %s=%q", p, name, b[:n]))
		}
		list("escaped")
		get("escaped", "trusted.overlay.lower")
		get("escaped", "trusted.overlay.overlay.lower")
		try("set plain", unix.Lsetxattr(filepath.Join(root, "plain"), "trusted.overlay.note", []byte("n"), 0))
		try("set dir", unix.Lsetxattr(filepath.Join(root, "dir"), "trusted.overlay.opaque", []byte("y"), 0))
		try("set new", unix.Lsetxattr(filepath.Join(root, "dir", "kept"), "user.overlay.x", []byte("u"), 0))
		list("plain")
		get("plain", "trusted.overlay.note")
		list("dir")
		get("dir", "trusted.overlay.opaque")
		try("remove escaped", unix.Lremovexattr(filepath.Join(root, "escaped"), "trusted.overlay.lower"))
		list("escaped")
		// Set as a plain xattr, the directory's opaque marker is not
		// one: what lies below still shows.
		if _, err := os.Stat(filepath.Join(root, "dir", "kept")); err != nil {
			out = append(out, "dir/kept hidden")
		}
		return strings.Join(out, "\n  ")
	}
	got, want := probe(strata), probe(kernel)
	// The kernel in trusted mode treats user.overlay.* as plain xattrs;
	// strata reads both forms of marker in every layer, so it escapes
	// both namespaces: leave that one line out of the comparison.
	got = strings.Replace(got, "set new=errno 0", "", 1)
	want = strings.Replace(want, "set new=errno 0", "", 1)
	if got != want {
		t.Errorf("overlay xattrs:\n  strata %s\n  kernel %s", got, want)
	}
	kernelUpper := filepath.Join(filepath.Dir(kernel), "ku")
	for _, upper := range []string{strataUpper, kernelUpper} {
		if _, err := unix.Lgetxattr(filepath.Join(upper, "plain"), "trusted.overlay.overlay.note", nil); err != nil {
			t.Errorf("%s: trusted.overlay.note not stored escaped: %v", upper, err)
		}
	}
	if err := unix.Lsetxattr(filepath.Join(strata, "plain"), "user.strata.mine", []byte("x"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("set user.strata.mine: %v, want EPERM", err)
	}
}

// A writer that renames new versions of a file over it (the atomic
// replace of editors, package managers and config reloads) and readers
// that open and read it meanwhile: every open finds a file, the old
// version or the new one, and every read is one whole version.
func TestOpenRacingRenameOverSeesAFile(t *testing.T) {
	mnt, _ := mountWritable(t, twoLayers(t))
	target := filepath.Join(mnt, "etc/conf") // a lower file at first
	version := func(i int) []byte {
		return append([]byte(fmt.Sprintf("%08d:", i)), bytes.Repeat([]byte{byte('a' + i%26)}, 100+i%3000)...)
	}
	done := make(chan struct{})
	writerErr := make(chan error, 1)
	go func() {
		defer close(done)
		for i := 1; i <= 1500; i++ {
			tmp := filepath.Join(mnt, "etc", fmt.Sprint("tmp", i%3))
			if err := os.WriteFile(tmp, version(i), 0o644); err != nil {
				writerErr <- err
				return
			}
			if err := os.Rename(tmp, target); err != nil {
				writerErr <- err
				return
			}
		}
	}()
	var failures []string
	reads := 0
	for running := true; running; reads++ {
		select {
		case <-done:
			running = false
		default:
		}
		b, err := os.ReadFile(target)
		switch {
		case err != nil:
			failures = append(failures, err.Error())
		case bytes.HasPrefix(b, []byte("conf")):
		default:
			var i int
			fmt.Sscanf(string(b), "%08d:", &i)
			if !bytes.Equal(b, version(i)) {
				failures = append(failures, fmt.Sprintf("a read of %d bytes is not version %d", len(b), i))
			}
		}
	}
	select {
	case err := <-writerErr:
		t.Fatalf("writer: %v", err)
	default:
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d reads failed, first: %s", len(failures), reads, failures[0])
	}
}

// A name that keeps changing what it is (a file renamed away, a
// directory made and removed, a symlink made and removed) while others
// stat and open it: each sees one of those or none (ENOENT), never a
// whiteout (ENXIO) or a file of another kind than the one it looked up
// (EINVAL from a readlink of a file).
func TestNameChangingKindWhileOpened(t *testing.T) {
	mnt, _ := mountWritable(t, twoLayers(t))
	x, y := filepath.Join(mnt, "etc/conf"), filepath.Join(mnt, "etc/moved") // a lower file at first
	stop := make(chan struct{})
	failures := make(chan error, 100)
	fail := func(err error) {
		select {
		case failures <- err:
		default:
		}
	}
	var readers sync.WaitGroup
	for range 3 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var st syscall.Stat_t
				if err := syscall.Lstat(x, &st); err != nil && err != syscall.ENOENT {
					fail(fmt.Errorf("lstat: %w", err))
				}
				f, err := os.Open(x)
				if err == nil {
					if _, err := f.Stat(); err != nil {
						fail(fmt.Errorf("fstat: %w", err))
					}
					f.Close()
				} else if !errors.Is(err, syscall.ENOENT) {
					fail(err)
				}
			}
		}()
	}
	for range 100 {
		os.WriteFile(x, []byte("file"), 0o644)
		os.Rename(x, y)
		os.Mkdir(x, 0o755)
		syscall.Rmdir(x)
		os.Symlink("nowhere", x)
		os.Remove(x)
	}
	close(stop)
	readers.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
}

// heldTree holds the reads of one file until released, as a slow disk or
// a lazy layer's network would.
type heldTree struct {
	layertree.Tree
	path             string
	reading, release chan struct{}
	once             sync.Once
}

func (h *heldTree) Open(ctx context.Context, p string) (layertree.File, error) {
	f, err := h.Tree.Open(ctx, p)
	if err != nil || p != h.path {
		return f, err
	}
	return &heldFile{File: f, h: h}, nil
}

type heldFile struct {
	layertree.File
	h *heldTree
}

func (f *heldFile) ReadAt(b []byte, off int64) (int, error) {
	f.h.once.Do(func() { close(f.h.reading) })
	<-f.h.release
	return f.File.ReadAt(b, off)
}

// mountWritableTrees mounts a writable union of layers over a fresh
// upper directory.
func mountWritableTrees(t *testing.T, layers ...layertree.Tree) string {
	t.Helper()
	base := t.TempDir()
	u, err := New(Options{Layers: layers, UpperDir: filepath.Join(base, "u"), WorkDir: filepath.Join(base, "w")})
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(base, "m")
	os.Mkdir(mnt, 0o755)
	srv, err := Mount(mnt, u, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	return mnt
}

// within runs f, failing the test if it errs or takes over ten seconds
// (it then waits on something it should not).
func within(t *testing.T, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("%s: still waiting after 10 s", what)
	}
}

// mountHeld mounts a writable union of one layer holding big (1 MiB,
// data) and d/f, whose reads of big wait until release is called.
func mountHeld(t *testing.T) (mnt string, data []byte, held *heldTree, release func()) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	mem := layertree.NewMem()
	data = bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	mem.Add("big", layertree.Entry{Mode: layertree.ModeRegular | 0o644}, data, nil)
	mem.Add("d/f", layertree.Entry{Mode: layertree.ModeRegular | 0o644}, []byte("f"), nil)
	held = &heldTree{Tree: mem, path: "big", reading: make(chan struct{}), release: make(chan struct{})}
	mnt = mountWritableTrees(t, held)
	var once sync.Once
	release = func() { once.Do(func() { close(held.release) }) }
	t.Cleanup(release)
	return mnt, data, held, release
}

// Emptying a lower file, by an open with O_TRUNC or a truncate to 0,
// copies none of its data up (a lazy layer's file is not fetched for it),
// as the kernel overlayfs copies none.
func TestTruncatingCopiesNoData(t *testing.T) {
	for _, how := range []string{"open O_TRUNC", "truncate 0"} {
		t.Run(strings.ReplaceAll(how, " ", "_"), func(t *testing.T) {
			mnt, _, held, _ := mountHeld(t)
			p := filepath.Join(mnt, "big")
			done := make(chan error, 1)
			go func() {
				if how == "truncate 0" {
					done <- os.Truncate(p, 0)
					return
				}
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
				if err == nil {
					_, err = f.WriteString("new")
					f.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-held.reading:
				t.Fatal("the lower file was read to be emptied")
			case <-time.After(10 * time.Second):
				t.Fatal("emptying the file never finished")
			}
			want := map[string]string{"open O_TRUNC": "new", "truncate 0": ""}[how]
			if got, err := os.ReadFile(p); err != nil || string(got) != want {
				t.Errorf("after: %q, %v; want %q", got, err, want)
			}
		})
	}
}

// While a large file is copied up (its data still coming), the rest of
// the union goes on: a lookup, stat and listing of another file do not
// wait for the copy.
func TestCopyUpLetsOthersGoOn(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	mnt, data, held, release := mountHeld(t)

	opened := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(filepath.Join(mnt, "big"), os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		opened <- err
	}()
	select {
	case <-held.reading:
	case <-time.After(10 * time.Second):
		t.Fatal("the copy-up never read the file")
	}
	within(t, "a stat and a listing of another file, during a copy-up", func() error {
		_, err := os.Stat(filepath.Join(mnt, "d/f"))
		if err == nil {
			_, err = os.ReadDir(filepath.Join(mnt, "d"))
		}
		return err
	})
	release()
	if err := <-opened; err != nil {
		t.Fatalf("open for writing: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "big")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the copied-up file: %d bytes, %v", len(got), err)
	}
}

// heldListTree holds the listing of one directory until released, as a
// large directory on a cold disk would.
type heldListTree struct {
	layertree.Tree
	path             string
	reading, release chan struct{}
	once             sync.Once
}

func (h *heldListTree) ReadDir(ctx context.Context, p string) ([]layertree.Entry, error) {
	if p == h.path {
		h.once.Do(func() { close(h.reading) })
		<-h.release
	}
	return h.Tree.ReadDir(ctx, p)
}

// While a directory is first listed (its layers slow to list), files are
// made and renamed elsewhere in the union, and others looked up.
func TestFirstListingLetsChangesGoOn(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	mem := layertree.NewMem()
	mem.Add("big/a", layertree.Entry{Mode: layertree.ModeRegular | 0o644}, []byte("a"), nil)
	mem.Add("d/f", layertree.Entry{Mode: layertree.ModeRegular | 0o644}, []byte("f"), nil)
	held := &heldListTree{Tree: mem, path: "big", reading: make(chan struct{}), release: make(chan struct{})}
	mnt := mountWritableTrees(t, held)
	var once sync.Once
	release := func() { once.Do(func() { close(held.release) }) }
	t.Cleanup(release)

	listed := make(chan error, 1)
	go func() {
		ents, err := os.ReadDir(filepath.Join(mnt, "big"))
		if err == nil && (len(ents) != 1 || ents[0].Name() != "a") {
			err = fmt.Errorf("listed %v", ents)
		}
		listed <- err
	}()
	select {
	case <-held.reading:
	case <-time.After(10 * time.Second):
		t.Fatal("the listing never read the layer")
	}
	within(t, "a create, a rename and a stat elsewhere, during a first listing", func() error {
		err := os.WriteFile(filepath.Join(mnt, "d/new"), []byte("n"), 0o644)
		if err == nil {
			err = os.Rename(filepath.Join(mnt, "d/new"), filepath.Join(mnt, "d/moved"))
		}
		if err == nil {
			_, err = os.Stat(filepath.Join(mnt, "d/f"))
		}
		return err
	})
	// The directory itself moves while its listing is under way: the
	// listing is made again where it went, and shows its content.
	if err := os.Rename(filepath.Join(mnt, "big"), filepath.Join(mnt, "big2")); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-listed; err != nil {
		t.Fatal(err)
	}
	if got := names(t, filepath.Join(mnt, "big2")); got != "a" {
		t.Errorf("big2 lists %q", got)
	}
}
