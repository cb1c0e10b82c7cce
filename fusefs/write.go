package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/layertree"
	"github.com/stratafs/strata/whiteout"
)

// upperFormat is how the upper directory records whiteouts, opaque and
// renamed directories: the kernel overlayfs's own format, so a stack can
// be handed between strata and the kernel.
type upperFormat struct {
	prefix string // "trusted.overlay." (root) or "user.overlay."
	// noCharWhiteout: the upper's file system refused a char 0/0
	// whiteout (a kernel overlayfs does, and kernels before 5.8 without
	// CAP_MKNOD), so whiteouts are ".wh." files. Found out at the first
	// whiteout, not by a probe at every mount: a file made and removed
	// costs a container's start.
	noCharWhiteout atomic.Bool
}

func (u *Union) openUpper(upper, work string) error {
	for _, d := range []struct{ name, path string }{{"upperdir", upper}, {"workdir", work}} {
		if err := os.MkdirAll(d.path, 0o755); err != nil {
			return fmt.Errorf("union: %s %s: %w", d.name, d.path, errors.Unwrap(err))
		}
	}
	var a, b unix.Stat_t
	if err := unix.Stat(upper, &a); err != nil {
		return err
	}
	if err := unix.Stat(work, &b); err != nil {
		return err
	}
	if a.Dev != b.Dev {
		return fmt.Errorf("union: workdir %s must be on the same filesystem as upperdir %s", work, upper)
	}
	// strata stages copy-ups in a directory of its own inside the work
	// directory, leaving what the kernel overlayfs keeps there (its
	// index) alone, made at the first copy-up (most containers make
	// none). What a crash left in it was never visible: drop it.
	staging := filepath.Join(work, "strata")
	if err := os.RemoveAll(staging); err != nil {
		return fmt.Errorf("union: clearing %s: %w", staging, err)
	}
	u.upperDir, u.workDir = filepath.Clean(upper), staging
	u.format.prefix = "user.overlay."
	if unix.Lsetxattr(work, "trusted.overlay.strata-probe", []byte("y"), 0) == nil {
		unix.Lremovexattr(work, "trusted.overlay.strata-probe")
		u.format.prefix = "trusted.overlay."
	}
	d, err := layertree.NewDir(upper)
	if err != nil {
		return err
	}
	u.upper = d
	return nil
}

func (u *Union) readOnly() bool { return u.upper == nil }

// validName refuses names longer than the layers' file systems take
// (NAME_MAX), and names the union reserves.
func validName(name string) syscall.Errno {
	if len(name) > nameMax {
		return syscall.ENAMETOOLONG
	}
	if strings.HasPrefix(name, whiteout.Prefix) {
		return syscall.EINVAL
	}
	return 0
}

// nameMax is the longest name the union takes, as Linux's file systems.
const nameMax = 255

// copyUp makes n exist in the upper: its parents first, then n itself,
// built in the work directory and renamed into place whole, so a crash
// never leaves a half-copied file visible. Call with wmu held.
func (n *node) copyUp(ctx context.Context) syscall.Errno {
	return n.copyUpWith(ctx, true)
}

// copyUpWith is copyUp; without data, a regular file is copied up empty
// (an open with O_TRUNC is about to empty it, as the kernel overlayfs
// then copies no data either).
func (n *node) copyUpWith(ctx context.Context, data bool) syscall.Errno {
	c := n.u.snapshot(n.c)
	if c.upper {
		return 0
	}
	parent := n.parentNode()
	// A file whose name went (unlinked, or replaced by a rename) after it
	// was opened or looked up is copied to a file of no name: a change
	// through a descriptor still open on it (fchmod, ftruncate, a write)
	// applies to the file, as on a local filesystem, and shows nowhere.
	detached := parent == nil
	if detached && c.attrs.typ() != layertree.ModeRegular {
		return syscall.ENOENT
	}
	if !detached {
		if errno := parent.copyUp(ctx); errno != 0 {
			return errno
		}
	}
	src := c.lowers[0]
	tree := n.u.layers[src.idx]
	e := c.attrs.entry()
	tmp, ready := n.u.takeStaged(n.c)
	var err error
	if !ready {
		if tmp, err = n.u.stagingDir(); err != nil {
			return fs.ToErrno(err)
		}
	}
	defer os.RemoveAll(tmp)
	staged := filepath.Join(tmp, "x")
	switch e.Type() {
	case layertree.ModeDir:
		err = os.Mkdir(staged, 0o700)
	case layertree.ModeRegular:
		switch {
		case !data:
			var f *os.File
			if f, err = os.OpenFile(staged, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err == nil {
				err = f.Close()
			}
		case !ready:
			err = copyFile(ctx, tree, src.path, staged, !n.u.noSync)
		}
	case layertree.ModeSymlink:
		err = os.Symlink(e.Target, staged)
	default:
		err = unix.Mknod(staged, e.Mode, int(e.Rdev))
	}
	if err != nil {
		return fs.ToErrno(err)
	}
	if err := unix.Lchown(staged, int(e.UID), int(e.GID)); err != nil {
		return fs.ToErrno(err)
	}
	if e.Type() != layertree.ModeSymlink {
		if err := unix.Chmod(staged, e.Mode&0o7777); err != nil {
			return fs.ToErrno(err)
		}
	}
	xs, _ := tree.Xattrs(ctx, src.path)
	for k, v := range xs {
		k, _ = layertree.Stored(k) // escaped again
		if err := unix.Lsetxattr(staged, k, v, 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return fs.ToErrno(err)
		}
	}
	// The copy keeps the inode number it had, as overlayfs's origin does.
	unix.Lsetxattr(staged, n.u.inoKey(), putUint64(c.ino), 0)
	ts := []unix.Timespec{unix.NsecToTimespec(e.Mtime.UnixNano()), unix.NsecToTimespec(e.Mtime.UnixNano())}
	unix.UtimesNanoAt(unix.AT_FDCWD, staged, ts, unix.AT_SYMLINK_NOFOLLOW)
	if detached {
		fd, err := unix.Open(staged, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fs.ToErrno(err)
		}
		n.u.mu.Lock()
		n.c.upper, n.c.anonFd = true, int32(fd)
		n.u.mu.Unlock()
		return 0 // the staged name goes with tmp
	}
	dst := n.upperPath()
	// A copy-up changes nothing of the directory in the union: its times
	// stay as they were, as the kernel overlayfs keeps them.
	defer keepTimes(parent.upperPath())()
	if err := unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fs.ToErrno(err)
		}
		// A whiteout or stale entry holds the name: replace it.
		if err := os.Rename(staged, dst); err != nil {
			return fs.ToErrno(err)
		}
	}
	// The rename is not synced, as the kernel overlayfs does not: a
	// crash may undo it, leaving the lower file, never a partial one
	// (the copy's data was synced before).
	if e.Type() == layertree.ModeRegular && e.Nlink > 1 {
		// Before the record says upper: the merges this makes must
		// still give the other names this record (shareLowerLink).
		n.linkOtherNames(ctx, c, dst)
	}
	n.u.mu.Lock()
	n.c.upper = true
	n.u.mu.Unlock()
	return 0
}

// stagingDir makes a directory of its own in the work directory for one
// copy-up.
func (u *Union) stagingDir() (string, error) {
	tmp, err := os.MkdirTemp(u.workDir, "copyup-")
	if errors.Is(err, os.ErrNotExist) {
		if err = os.Mkdir(u.workDir, 0o700); err == nil || errors.Is(err, os.ErrExist) {
			tmp, err = os.MkdirTemp(u.workDir, "copyup-")
		}
	}
	return tmp, err
}

// stageMin is the size from which a file's data is copied for its
// copy-up before the union's write lock is taken.
const stageMin = 256 << 10

// stageData copies the data of a lower file about to be copied up (a
// change is coming) into the work directory, before the caller takes the
// union's write lock: copying a large file takes seconds, and every
// lookup, stat and open in the union waits while that lock is held.
// Layers never change, so the copy stays good however long the change
// waits; copyUp takes it (takeStaged). Failures are left to copyUp.
func (n *node) stageData(ctx context.Context) {
	c := n.u.snapshot(n.c)
	if c.upper || c.attrs.typ() != layertree.ModeRegular || c.attrs.size < stageMin || len(c.lowers) == 0 {
		return
	}
	n.u.stageMu.Lock()
	defer n.u.stageMu.Unlock()
	n.u.mu.Lock()
	_, staged := n.u.staged[n.c]
	upper := n.c.upper
	n.u.mu.Unlock()
	if staged || upper {
		return
	}
	tmp, err := n.u.stagingDir()
	if err != nil {
		return
	}
	src := c.lowers[0]
	if err := copyFile(ctx, n.u.layers[src.idx], src.path, filepath.Join(tmp, "x"), !n.u.noSync); err != nil {
		os.RemoveAll(tmp)
		return
	}
	n.u.mu.Lock()
	if upper = n.c.upper; !upper { // else copied up meanwhile
		n.u.staged[n.c] = tmp
	}
	n.u.mu.Unlock()
	if upper {
		os.RemoveAll(tmp)
	}
}

// takeStaged hands out the data staged for c, if any: the directory
// holding it as "x".
func (u *Union) takeStaged(c *child) (string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	tmp, ok := u.staged[c]
	delete(u.staged, c)
	return tmp, ok
}

// linkOtherNames keeps a lower hardlink set together across copy-up: every
// other name the union still shows for the same lower file becomes a link
// to the new upper copy.
func (n *node) linkOtherNames(ctx context.Context, c child, upperFile string) {
	src := c.lowers[0]
	me := n.path()
	for _, p := range n.u.linkedPaths(ctx, src.idx, c.attrs.ino) {
		if p == me || p == src.path {
			if p != me && p == src.path {
				// The name the file was found under, if it was renamed.
			} else {
				continue
			}
		}
		dir, name := filepath.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		pn := n.u.showing(ctx, layerRef{idx: src.idx, path: dir}, name, n.c)
		if pn == nil || pn.copyUp(ctx) != 0 {
			continue
		}
		target := pn.upperChild(name)
		if _, err := os.Lstat(target); err == nil {
			continue
		}
		restore := keepTimes(pn.upperPath())
		if err := os.Link(upperFile, target); err != nil {
			n.u.log.Warn("keeping a hardlink set together failed", "name", p, "err", err)
		}
		restore()
	}
}

// showing finds the directory of the union that shows the lower
// directory dir with its entry name as the record c: the directory at the
// same path, or, when that one is another (a directory renamed in the
// union shows its lower content at its new path), one the kernel holds
// whose lower layers include dir. nil when none is in memory.
func (u *Union) showing(ctx context.Context, dir layerRef, name string, c *child) *node {
	shows := func(pn *node) bool {
		children, errno := pn.merge(ctx)
		if errno != 0 {
			return false
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		return children[name] == c
	}
	if pn, errno := u.walk(ctx, dir.path); errno == 0 && shows(pn) {
		return pn
	}
	var found *node
	var visit func(in *fs.Inode)
	visit = func(in *fs.Inode) {
		for _, ch := range in.Children() {
			cn, ok := ch.Operations().(*node)
			if found != nil || !ok || !ch.IsDir() {
				continue
			}
			u.mu.Lock()
			has := slices.Contains(cn.c.lowers, dir)
			u.mu.Unlock()
			if has && shows(cn) {
				found = cn
				return
			}
			visit(ch)
		}
	}
	visit(u.root.EmbeddedInode())
	return found
}

// linkedPaths lists the paths of a layer that are the hardlinked inode
// ino, walking the layer once and caching the answer.
func (u *Union) linkedPaths(ctx context.Context, idx int, ino uint64) []string {
	u.mu.Lock()
	m, ok := u.layerLinks[idx]
	u.mu.Unlock()
	if !ok {
		m = map[uint64][]string{}
		var walk func(dir string)
		walk = func(dir string) {
			ents, err := u.layers[idx].ReadDir(ctx, dir)
			if err != nil {
				return
			}
			for _, e := range ents {
				switch {
				case e.IsDir():
					walk(join(dir, e.Name))
				case e.Nlink > 1 && e.Ino != 0:
					m[e.Ino] = append(m[e.Ino], join(dir, e.Name))
				}
			}
		}
		walk("")
		u.mu.Lock()
		u.layerLinks[idx] = m
		u.mu.Unlock()
	}
	return m[ino]
}

// walk finds the node of a directory path, looking names up as needed.
func (u *Union) walk(ctx context.Context, path string) (*node, syscall.Errno) {
	n := u.root
	if path == "" {
		return n, 0
	}
	for _, name := range strings.Split(path, "/") {
		c, errno := n.childNode(ctx, name)
		if errno != 0 {
			return nil, errno
		}
		n = c
	}
	return n, 0
}

// keepTimes notes the access and modification times of an upper
// directory; the function it returns puts them back.
func keepTimes(dir string) func() {
	var st unix.Stat_t
	if unix.Lstat(dir, &st) != nil {
		return func() {}
	}
	return func() {
		unix.UtimesNanoAt(unix.AT_FDCWD, dir, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
	}
}

func (n *node) parentNode() *node {
	_, p := n.Parent()
	if p == nil {
		return nil
	}
	pn, _ := p.Operations().(*node)
	return pn
}

// copyFile copies a layer file's bytes and makes them durable before the
// rename that publishes them.
func copyFile(ctx context.Context, tree layertree.Tree, path, dst string, sync bool) error {
	src, err := tree.Open(ctx, path)
	if err != nil {
		return err
	}
	defer src.Close()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if lf, ok := src.(layertree.LocalFile); ok {
		err = copySparse(int(f.Fd()), lf.Fd(), src)
	} else {
		_, err = io.Copy(f, io.NewSectionReader(src, 0, 1<<62))
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// copySparse copies the data of src to the same offsets of dst and
// leaves src's holes as holes, as the kernel overlayfs's copy-up does (a
// sparse file stays sparse), the data with copy_file_range (a reflink
// where the filesystem can).
func copySparse(dst, src int, srcReader io.ReaderAt) error {
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return err
	}
	for off := int64(0); off < st.Size; {
		data, err := unix.Seek(src, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // a hole to the end
		}
		if err != nil {
			data = off // no word of holes: all of it is data
		}
		end, err := unix.Seek(src, data, unix.SEEK_HOLE)
		if err != nil || end > st.Size {
			end = st.Size
		}
		if err := copyRange(dst, src, srcReader, data, end); err != nil {
			return err
		}
		off = end
	}
	return unix.Ftruncate(dst, st.Size)
}

// copyRange copies bytes [off, end) of src to the same offsets of dst
// with copy_file_range, falling back to reads where the kernel refuses.
func copyRange(dst, src int, srcReader io.ReaderAt, off, end int64) error {
	out := off
	for off < end {
		n, err := unix.CopyFileRange(src, &off, dst, &out, int(min(end-off, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
				_, err := io.Copy(io.NewOffsetWriter(fdWriterAt(dst), out), io.NewSectionReader(srcReader, off, end-off))
				return err
			}
			return err
		}
		if n == 0 {
			return nil // the file ended early
		}
	}
	return nil
}

// fdWriterAt writes to a descriptor it does not own.
type fdWriterAt int

func (w fdWriterAt) WriteAt(b []byte, off int64) (int, error) { return unix.Pwrite(int(w), b, off) }

// caller is who asked, for the ownership of what they create.
func caller(ctx context.Context) (uint32, uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

// prepareName makes room for a new name in the upper copy of directory n:
// a whiteout there is removed (reporting whether one was), and the name
// must not exist in the merged view.
func (n *node) prepareName(ctx context.Context, name string) (hadWhiteout bool, errno syscall.Errno) {
	if errno := validName(name); errno != 0 {
		return false, errno
	}
	children, errno := n.merge(ctx)
	if errno != 0 {
		return false, errno
	}
	n.u.mu.Lock()
	_, exists := children[name]
	n.u.mu.Unlock()
	if exists {
		return false, syscall.EEXIST
	}
	if errno := n.copyUp(ctx); errno != 0 {
		return false, errno
	}
	p := n.upperChild(name)
	var st unix.Stat_t
	if unix.Lstat(p, &st) == nil {
		if err := unix.Unlink(p); err != nil {
			return false, fs.ToErrno(err)
		}
		hadWhiteout = true
	}
	if marker := n.upperChild(whiteout.Prefix + name); unix.Lstat(marker, &st) == nil {
		unix.Unlink(marker)
		hadWhiteout = true
	}
	// A name whited out in the upper may still exist below it.
	if !hadWhiteout {
		for _, ref := range n.u.snapshot(n.c).lowers {
			if _, err := n.u.layers[ref.idx].Stat(ctx, join(ref.path, name)); err == nil {
				hadWhiteout = true
				break
			}
		}
	}
	return hadWhiteout, 0
}

// created records a new upper entry in n's listing and returns its inode.
// A new entry gets an inode number never used before in this upper, kept
// in an xattr: the upper filesystem reuses the numbers of deleted files,
// and a file still open under its old number must not be confused with a
// new one.
func (n *node) created(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	p := n.upperChild(name)
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, fs.ToErrno(err)
	}
	c := &child{attrs: attrs{mode: st.Mode, nlink: uint32(st.Nlink)}, upper: true}
	c.ino, c.inoKept = n.u.newIno(st.Ino, func(key string, v []byte) error { return unix.Lsetxattr(p, key, v, 0) })
	n.u.mu.Lock()
	if n.merged {
		n.children[name] = c
	}
	n.u.mu.Unlock()
	fillFromStat(&out.Attr, &st, c.ino)
	n.u.setTimeouts(out)
	return n.NewInode(ctx, &node{u: n.u, c: c}, fs.StableAttr{Mode: st.Mode & syscall.S_IFMT, Ino: c.ino}), 0
}

// newIno gives an entry just made in the upper (its upper inode number
// upperIno) a fresh number, recorded through record; if that fails it
// keeps the upper's own number.
func (u *Union) newIno(upperIno uint64, record func(key string, v []byte) error) (ino uint64, kept bool) {
	if ino, errno := u.allocIno(); errno == 0 && record(u.inoKey(), putUint64(ino)) == nil {
		return ino, true
	}
	return u.ino(-1, "", layertree.Entry{Ino: upperIno}), false
}

// inoKey is the xattr that keeps an upper entry's inode number.
func (u *Union) inoKey() string { return u.format.prefix + "strata.ino" }

// createdInoBase starts the inode numbers of entries made through the
// union, above those of the upper (high bits 0) and of the layers
// (layer index + 1 in the high bits, at most 1<<15).
const createdInoBase = uint64(0xC000) << 48

// inoReserve is how many numbers are reserved in the upper's xattr at a
// time, so a crash never hands out a number twice.
const inoReserve = 4096

// allocIno hands out the next inode number for a new entry. Call with
// wmu held.
func (u *Union) allocIno() (uint64, syscall.Errno) {
	key := u.format.prefix + "strata.ino-next"
	if u.nextIno == 0 {
		u.nextIno = createdInoBase
		if v, err := getxattr(u.upperDir, key); err == nil && len(v) == 8 && leUint64(v) > createdInoBase {
			u.nextIno = leUint64(v)
		}
		u.inoLimit = u.nextIno
	}
	if u.nextIno >= u.inoLimit {
		limit := u.nextIno + inoReserve
		if err := unix.Lsetxattr(u.upperDir, key, putUint64(limit), 0); err != nil {
			return 0, fs.ToErrno(err)
		}
		u.inoLimit = limit
	}
	ino := u.nextIno
	u.nextIno++
	return ino, 0
}

// own gives a new upper entry to the caller, with the group of a setgid
// directory as the kernel would, and then the mode the caller asked for
// (mode's permission bits, the caller's umask applied by the kernel):
// this process's own umask took bits off at creation, and the chown took
// the set-user- and set-group-ID bits. A directory in a setgid one is
// setgid too; a file there keeps set-group-ID only for a member of the
// group (as far as the request tells: its primary group) or root. A
// symlink has no mode of its own.
func (n *node) own(ctx context.Context, path string, mode uint32) syscall.Errno {
	uid, gid := caller(ctx)
	var pst unix.Stat_t
	inherit := unix.Stat(n.upperPath(), &pst) == nil && pst.Mode&unix.S_ISGID != 0
	if inherit {
		gid = pst.Gid
	}
	if err := unix.Lchown(path, int(uid), int(gid)); err != nil {
		return fs.ToErrno(err)
	}
	perm := mode & 0o7777
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return 0
	case unix.S_IFDIR:
		if inherit {
			perm |= unix.S_ISGID
		}
	default:
		if inherit && uid != 0 && gid != pst.Gid {
			perm &^= unix.S_ISGID
		}
	}
	return fs.ToErrno(unix.Chmod(path, perm))
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.u.readOnly() {
		return nil, syscall.EROFS
	}
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	hadWhiteout, errno := n.prepareName(ctx, name)
	if errno != 0 {
		return nil, errno
	}
	p := n.upperChild(name)
	if err := unix.Mkdir(p, mode&0o7777); err != nil {
		return nil, fs.ToErrno(err)
	}
	if errno := n.own(ctx, p, unix.S_IFDIR|mode); errno != 0 {
		os.Remove(p)
		return nil, errno
	}
	if hadWhiteout {
		// A new directory where one was deleted must not show the old
		// content from below.
		if err := unix.Lsetxattr(p, n.u.format.prefix+"opaque", []byte("y"), 0); err != nil {
			return nil, fs.ToErrno(err)
		}
	}
	return n.created(ctx, name, out)
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.u.readOnly() {
		return nil, nil, 0, syscall.EROFS
	}
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	_, errno := n.prepareName(ctx, name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	p := n.upperChild(name)
	fd, err := unix.Open(p, int(flags)|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode&0o7777)
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	if errno := n.own(ctx, p, unix.S_IFREG|mode&0o7777); errno != 0 {
		unix.Close(fd)
		unix.Unlink(p)
		return nil, nil, 0, errno
	}
	inode, errno := n.created(ctx, name, out)
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, 0, errno
	}
	return inode, n.u.openedUpper(inode, inode.Operations().(*node).c, fd, flags, out.Attr.Mode), fuse.FOPEN_NOFLUSH, 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.u.readOnly() {
		return nil, syscall.EROFS
	}
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	_, errno := n.prepareName(ctx, name)
	if errno != 0 {
		return nil, errno
	}
	p := n.upperChild(name)
	if err := unix.Symlink(target, p); err != nil {
		return nil, fs.ToErrno(err)
	}
	if errno := n.own(ctx, p, unix.S_IFLNK); errno != 0 {
		unix.Unlink(p)
		return nil, errno
	}
	return n.created(ctx, name, out)
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.u.readOnly() {
		return nil, syscall.EROFS
	}
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	if mode&unix.S_IFMT == unix.S_IFCHR && dev == 0 {
		return nil, syscall.EPERM // that is a whiteout
	}
	_, errno := n.prepareName(ctx, name)
	if errno != 0 {
		return nil, errno
	}
	p := n.upperChild(name)
	if err := unix.Mknod(p, mode, int(dev)); err != nil {
		return nil, fs.ToErrno(err)
	}
	if errno := n.own(ctx, p, mode); errno != 0 {
		unix.Unlink(p)
		return nil, errno
	}
	return n.created(ctx, name, out)
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.u.readOnly() {
		return nil, syscall.EROFS
	}
	tn, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	tn.stageData(ctx)
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	_, errno := n.prepareName(ctx, name)
	if errno != 0 {
		return nil, errno
	}
	if errno := tn.copyUp(ctx); errno != 0 {
		return nil, errno
	}
	p := n.upperChild(name)
	if anon := n.u.snapshot(tn.c).anonFd; anon != 0 {
		// An O_TMPFILE file gets its first name.
		if err := unix.Linkat(unix.AT_FDCWD, fdPath(int(anon)), unix.AT_FDCWD, p, unix.AT_SYMLINK_FOLLOW); err != nil {
			return nil, fs.ToErrno(err)
		}
		n.u.mu.Lock()
		tn.c.anonFd = 0
		n.u.mu.Unlock()
		unix.Close(int(anon))
	} else if err := unix.Link(tn.upperPath(), p); err != nil {
		return nil, fs.ToErrno(err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, fs.ToErrno(err)
	}
	n.u.mu.Lock()
	if n.merged {
		n.children[name] = tn.c // one file, two names
	}
	ino := tn.c.ino
	n.u.mu.Unlock()
	fillFromStat(&out.Attr, &st, ino)
	n.u.setTimeouts(out)
	return tn.EmbeddedInode(), 0
}

// whiteoutName hides name of directory n's lower layers.
func (n *node) whiteoutName(name string) syscall.Errno {
	p := n.upperChild(name)
	if !n.u.format.noCharWhiteout.Load() {
		err := unix.Mknod(p, unix.S_IFCHR, 0)
		if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
			return fs.ToErrno(err)
		}
		n.u.format.noCharWhiteout.Store(true)
	}
	f, err := os.OpenFile(n.upperChild(whiteout.Prefix+name), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fs.ToErrno(err)
	}
	return fs.ToErrno(f.Close())
}

// removeName takes name out of directory n: out of the upper if it is
// there, and behind a whiteout if a lower layer has it.
func (n *node) removeName(ctx context.Context, name string, dir bool) syscall.Errno {
	children, errno := n.merge(ctx)
	if errno != 0 {
		return errno
	}
	n.u.mu.Lock()
	c, ok := children[name]
	var cs child
	if ok {
		cs = *c
	}
	n.u.mu.Unlock()
	if !ok {
		return syscall.ENOENT
	}
	isDir := cs.attrs.typ() == layertree.ModeDir
	if cs.upper {
		if e, err := n.u.upper.Stat(ctx, join(n.path(), name)); err == nil {
			isDir = e.IsDir()
		}
	}
	switch {
	case dir && !isDir:
		return syscall.ENOTDIR
	case !dir && isDir:
		return syscall.EISDIR
	}
	if dir {
		if errno := n.checkEmpty(ctx, name); errno != 0 {
			return errno
		}
	}
	if errno := n.copyUp(ctx); errno != 0 {
		return errno
	}
	if !dir && !cs.upper && cs.attrs.nlink > 1 {
		// One name of a lower hardlink set goes: the others' link count
		// must fall, so the set moves to the upper where it is real.
		cn, errno := n.childNode(ctx, name)
		if errno != 0 {
			return errno
		}
		if errno := cn.copyUp(ctx); errno != 0 {
			return errno
		}
		cs.upper = true
	}
	p := n.upperChild(name)
	if cs.upper {
		gone := n.reachGone(name, p)
		var err error
		if dir {
			err = removeUpperDir(p)
		} else {
			err = unix.Unlink(p)
		}
		gone.done(err == nil)
		if err != nil {
			return fs.ToErrno(err)
		}
	}
	if !cs.upper && len(cs.lowers) > 0 || n.lowerShows(ctx, name) {
		if errno := n.whiteoutName(name); errno != 0 {
			return errno
		}
	}
	n.u.mu.Lock()
	delete(n.children, name)
	n.u.mu.Unlock()
	return 0
}

// checkEmpty fails with ENOTEMPTY when the merged directory name shows
// any entry.
func (n *node) checkEmpty(ctx context.Context, name string) syscall.Errno {
	ch := n.GetChild(name)
	var cn *node
	if ch != nil {
		cn, _ = ch.Operations().(*node)
	}
	if cn == nil {
		n.u.mu.Lock()
		c := n.children[name]
		n.u.mu.Unlock()
		cn = &node{u: n.u, c: c}
		n.AddChild(name, n.NewInode(ctx, cn, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: c.ino}), false)
	}
	children, errno := cn.merge(ctx)
	if errno != 0 {
		return errno
	}
	n.u.mu.Lock()
	defer n.u.mu.Unlock()
	if len(children) > 0 {
		return syscall.ENOTEMPTY
	}
	return 0
}

// removeUpperDir removes an upper directory that shows nothing: what it
// may still hold are whiteouts.
func removeUpperDir(p string) error {
	ents, err := os.ReadDir(p)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Remove(filepath.Join(p, e.Name())); err != nil {
			return err
		}
	}
	return unix.Rmdir(p)
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if n.u.readOnly() {
		return syscall.EROFS
	}
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	return n.removeName(ctx, name, false)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if n.u.readOnly() {
		return syscall.EROFS
	}
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	return n.removeName(ctx, name, true)
}

// Rename moves name to newParent/newName. A directory that has lower
// content moves as the kernel overlayfs's redirect_dir does: its upper
// copy moves and records where its lower content lies.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.u.readOnly() {
		return syscall.EROFS
	}
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if errno := validName(newName); errno != 0 {
		return errno
	}
	if ch := n.GetChild(name); ch != nil {
		if sn, ok := ch.Operations().(*node); ok {
			sn.stageData(ctx) // a lower file moves by a copy-up
		}
	}
	n.u.lockNames(ctx)
	defer n.u.unlockNames(ctx)
	n.u.renames.Add(1) // paths may change: merges under way start over
	// Changes keep the records of merged directories.
	if _, errno := n.merge(ctx); errno != 0 {
		return errno
	}
	src, errno := n.childNode(ctx, name)
	if errno != 0 {
		return errno
	}
	dstChildren, errno := np.merge(ctx)
	if errno != 0 {
		return errno
	}
	n.u.mu.Lock()
	dst, dstExists := dstChildren[newName]
	n.u.mu.Unlock()
	if flags&unix.RENAME_NOREPLACE != 0 && dstExists {
		return syscall.EEXIST
	}
	if flags&unix.RENAME_EXCHANGE != 0 {
		if !dstExists {
			return syscall.ENOENT
		}
		return n.exchange(ctx, name, src, np, newName)
	}
	srcEntry, _, errno := src.attr()
	if errno != 0 {
		return errno
	}
	if dstExists {
		dn, errno := np.childNode(ctx, newName)
		if errno != 0 {
			return errno
		}
		if dn == src {
			return 0
		}
		de, deUpper, errno := dn.attr()
		if errno != 0 {
			return errno
		}
		switch {
		case srcEntry.IsDir() && !de.IsDir():
			return syscall.ENOTDIR
		case !srcEntry.IsDir() && de.IsDir():
			return syscall.EISDIR
		case de.IsDir():
			if errno := np.checkEmpty(ctx, newName); errno != 0 {
				return errno
			}
		case de.Nlink > 1 && !deUpper:
			// The target is one name of a lower hardlink set: as when
			// one is unlinked, the set moves to the upper, where
			// replacing the name makes the others' link count fall.
			if errno := dn.copyUp(ctx); errno != 0 {
				return errno
			}
		}
	}
	sc := n.u.snapshot(src.c)
	if errno := src.copyUp(ctx); errno != 0 {
		return errno
	}
	if errno := np.copyUp(ctx); errno != 0 {
		return errno
	}
	from := n.upperChild(name)
	to := np.upperChild(newName)
	covered := np.lowerShows(ctx, newName)
	if srcEntry.IsDir() && len(sc.lowers) == 0 && covered {
		// A directory of the upper alone, moved where a lower directory
		// was (shown or deleted), must hide that one's content.
		if err := unix.Lsetxattr(from, n.u.format.prefix+"opaque", []byte("y"), 0); err != nil {
			return fs.ToErrno(err)
		}
	}
	if srcEntry.IsDir() && len(sc.lowers) > 0 {
		redirect := "/" + sc.lowers[0].path
		if err := unix.Lsetxattr(from, n.u.format.prefix+"redirect", []byte(redirect), 0); err != nil {
			return fs.ToErrno(err)
		}
	}
	gone := goneFile{fd: -1}
	if dstExists {
		gone = np.reachGone(newName, to)
		dc := n.u.snapshot(dst)
		if dc.upper {
			if de, err := n.u.upper.Stat(ctx, join(np.path(), newName)); err == nil && de.IsDir() {
				// Only whiteouts are left in it: clear them so the
				// rename may replace it.
				if err := removeUpperDir(to); err != nil {
					gone.done(false)
					return fs.ToErrno(err)
				}
			}
		}
	} else {
		// A whiteout may hold the target name in the upper.
		var st unix.Stat_t
		if unix.Lstat(to, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
			unix.Unlink(to)
		}
		unix.Unlink(np.upperChild(whiteout.Prefix + newName))
	}
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, 0)
	gone.done(err == nil)
	if err != nil {
		return fs.ToErrno(err)
	}
	if !sc.upper && len(sc.lowers) > 0 || n.lowerShows(ctx, name) {
		if errno := n.whiteoutName(name); errno != 0 {
			return errno
		}
	}
	n.u.mu.Lock()
	delete(n.children, name)
	if np.merged {
		np.children[newName] = src.c
	}
	n.u.mu.Unlock()
	return 0
}

// goneFile is an upper file about to lose its name, held open for the
// node the kernel has for it (see reachGone).
type goneFile struct {
	node *node
	fd   int
}

// reachGone keeps an upper file that is about to lose its name (p, name
// in n: an unlink, a rmdir, or a rename over it) reachable by the node
// the kernel has for it: an open that looked the name up before the
// change and comes after it must find the old file, as on a local
// filesystem (the writer that renames a new version over a file is a
// common pattern), and an fstat of a removed directory must work.
func (n *node) reachGone(name, p string) goneFile {
	ch := n.GetChild(name)
	if ch == nil {
		return goneFile{fd: -1}
	}
	cn, ok := ch.Operations().(*node)
	if !ok {
		return goneFile{fd: -1}
	}
	fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return goneFile{fd: -1}
	}
	return goneFile{node: cn, fd: fd}
}

// done gives the node the file once its name went (gone); else, or when
// the node holds one already, the descriptor is closed. OnForget closes
// the node's.
func (g goneFile) done(gone bool) {
	if g.fd < 0 {
		return
	}
	if gone {
		g.node.u.mu.Lock()
		if g.node.c.anonFd == 0 {
			g.node.c.anonFd, g.fd = int32(g.fd), -1
		}
		g.node.u.mu.Unlock()
	}
	if g.fd >= 0 {
		unix.Close(g.fd)
	}
}

// lowerShows reports whether a lower layer of directory n shows an entry
// name beneath the upper: removing or replacing what the upper has there
// then needs a whiteout, as the kernel overlayfs decides it (a lookup in
// the layers below). It is asked of the name, not of the file there: a
// file renamed or linked to the name brings no lower entry of its own.
func (n *node) lowerShows(ctx context.Context, name string) bool {
	for _, ref := range n.u.snapshot(n.c).lowers {
		if e, err := n.u.layers[ref.idx].Stat(ctx, join(ref.path, name)); err == nil {
			return !e.Whiteout
		}
	}
	return false
}

// exchange swaps two names (RENAME_EXCHANGE), both copied up first.
func (n *node) exchange(ctx context.Context, name string, src *node, np *node, newName string) syscall.Errno {
	dn, errno := np.childNode(ctx, newName)
	if errno != 0 {
		return errno
	}
	for _, x := range []*node{src, dn} {
		c := n.u.snapshot(x.c)
		if c.attrs.typ() == layertree.ModeDir && len(c.lowers) > 0 {
			return syscall.EXDEV // a merged directory cannot be exchanged yet
		}
		if errno := x.copyUp(ctx); errno != 0 {
			return errno
		}
	}
	if err := unix.Renameat2(unix.AT_FDCWD, n.upperChild(name), unix.AT_FDCWD, np.upperChild(newName), unix.RENAME_EXCHANGE); err != nil {
		return fs.ToErrno(err)
	}
	n.u.mu.Lock()
	a, b := n.children[name], np.children[newName]
	n.children[name], np.children[newName] = b, a
	n.u.mu.Unlock()
	return 0
}

// childNode returns the node of a child, looking it up if the kernel has
// not.
func (n *node) childNode(ctx context.Context, name string) (*node, syscall.Errno) {
	if ch := n.GetChild(name); ch != nil {
		if cn, ok := ch.Operations().(*node); ok {
			return cn, 0
		}
	}
	var out fuse.EntryOut
	in, errno := n.lookup(ctx, name, &out)
	if errno != 0 {
		return nil, errno
	}
	n.AddChild(name, in, false)
	return in.Operations().(*node), 0
}

// upperFileAt is where n's upper file is reached: through an open file of
// it when there is one, as it may have no name any more (unlinked,
// O_TMPFILE) or another file may have its name. f is fh when that is an
// upper file, else another open of n, duplicated (as that one may be
// released meanwhile; the caller closes it), or nil; p is its magic link
// (follow: syscalls must follow it), the O_TMPFILE file's, or the upper
// path. The kernel names the open file only for ftruncate.
func (n *node) upperFileAt(fh fs.FileHandle) (f *upperFile, p string, follow bool) {
	f, ok := fh.(*upperFile)
	if !ok {
		if fd := n.u.dupOpen(n.c); fd >= 0 {
			f = &upperFile{fd: fd}
		}
	}
	if f != nil {
		return f, fdPath(f.fd), true
	}
	if c := n.u.snapshot(n.c); c.anonFd != 0 {
		return nil, fdPath(int(c.anonFd)), true
	}
	return nil, n.upperPath(), false
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if n.u.readOnly() {
		return syscall.EROFS
	}
	sz, sizeSet := in.GetSize()
	emptied := sizeSet && sz == 0 // truncate(2) to nothing: no data to copy up
	if !emptied {
		n.stageData(ctx)
	}
	n.u.wmu.Lock()
	defer n.u.unlockWrite()
	if errno := n.copyUpWith(ctx, !emptied); errno != 0 {
		return errno
	}
	f, p, follow := n.upperFileAt(fh)
	if f != nil && f != fh {
		defer unix.Close(f.fd)
	}
	if m, ok := in.GetMode(); ok {
		if err := unix.Chmod(p, m&0o7777); err != nil {
			return fs.ToErrno(err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		su, sg := -1, -1
		if uok {
			su = int(uid)
		}
		if gok {
			sg = int(gid)
		}
		chown := unix.Lchown
		if follow {
			chown = unix.Chown
		}
		if err := chown(p, su, sg); err != nil {
			return fs.ToErrno(err)
		}
	}
	if sizeSet {
		var err error
		if f != nil && writable(f.fd) {
			err = unix.Ftruncate(f.fd, int64(sz))
		} else {
			// truncate(2) and O_TRUNC name no descriptor, and the one
			// borrowed may be read-only: truncate by name (through the
			// descriptor's magic link when there is one, which reaches
			// the file whatever its name now).
			err = unix.Truncate(p, int64(sz))
		}
		if err != nil {
			return fs.ToErrno(err)
		}
	}
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 {
		// A truncate by a caller without CAP_FSETID (see killPriv).
		// The reply carries the attributes after it.
		if _, errno := killSetIDAt(ctx, p, follow); errno != 0 {
			return errno
		}
	}
	atime, aok := in.GetATime()
	mtime, mok := in.GetMTime()
	if aok || mok {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
		}
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
		}
		flags := unix.AT_SYMLINK_NOFOLLOW
		if follow {
			flags = 0
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, flags); err != nil {
			return fs.ToErrno(err)
		}
	}
	if f != nil {
		return n.getattr(f, out)
	}
	return n.getattr(fh, out)
}

// Fsync makes a directory's upper copy durable.
func (n *node) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	if f, ok := fh.(*upperFile); ok {
		return f.Fsync(ctx, flags)
	}
	n.u.wmu.RLock()
	defer n.u.wmu.RUnlock()
	if !n.u.snapshot(n.c).upper {
		return 0 // layers never change
	}
	fd, err := unix.Open(n.upperPath(), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fs.ToErrno(err)
	}
	defer unix.Close(fd)
	return fs.ToErrno(unix.Fsync(fd))
}

// fdPath names an open file through /proc, which reaches it whatever its
// name is now, or if it has none.
func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// Tmpfile makes a file without a name in the upper copy of directory n
// (open(2) with O_TMPFILE); linkat(2) through /proc/self/fd may name it.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.u.readOnly() {
		return nil, nil, 0, syscall.EROFS
	}
	n.u.wmu.Lock()
	defer n.u.unlockWrite()
	if errno := n.copyUp(ctx); errno != 0 {
		return nil, nil, 0, errno
	}
	open := int(flags)&^(unix.O_CREAT|unix.O_TMPFILE) | unix.O_TMPFILE | unix.O_CLOEXEC
	fd, err := unix.Open(n.upperPath(), open, mode&0o7777)
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	uid, gid := caller(ctx)
	var st syscall.Stat_t
	if err := unix.Fchown(fd, int(uid), int(gid)); err != nil {
		unix.Close(fd)
		return nil, nil, 0, fs.ToErrno(err)
	}
	// The mode asked for, as own makes it.
	if err := unix.Fchmod(fd, mode&0o7777); err != nil {
		unix.Close(fd)
		return nil, nil, 0, fs.ToErrno(err)
	}
	anon, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err == nil {
		err = syscall.Fstat(fd, &st)
	}
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, fs.ToErrno(err)
	}
	c := &child{attrs: attrs{mode: st.Mode, nlink: 1}, upper: true, anonFd: int32(anon)}
	c.ino, c.inoKept = n.u.newIno(st.Ino, func(key string, v []byte) error { return unix.Fsetxattr(fd, key, v, 0) })
	fillFromStat(&out.Attr, &st, c.ino)
	n.u.setTimeouts(out)
	inode := n.NewInode(ctx, &node{u: n.u, c: c}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: c.ino})
	return inode, n.u.openedUpper(inode, c, fd, flags, st.Mode), fuse.FOPEN_NOFLUSH, 0
}

// OnForget closes what a nameless file held once the kernel drops it.
func (n *node) OnForget() {
	n.u.mu.Lock()
	fd := n.c.anonFd
	n.c.anonFd = 0
	n.u.mu.Unlock()
	if fd != 0 {
		unix.Close(int(fd))
	}
	if tmp, ok := n.u.takeStaged(n.c); ok { // a change that never came
		os.RemoveAll(tmp)
	}
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if n.u.readOnly() {
		return syscall.EROFS
	}
	attr, ok := layertree.Stored(attr)
	if !ok {
		return syscall.EPERM
	}
	return n.changeUpper(ctx, func(p string, follow bool) error {
		if follow {
			return unix.Setxattr(p, attr, data, int(flags))
		}
		return unix.Lsetxattr(p, attr, data, int(flags))
	})
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if n.u.readOnly() {
		return syscall.EROFS
	}
	attr, ok := layertree.Stored(attr)
	if !ok {
		return syscall.ENODATA
	}
	return n.changeUpper(ctx, func(p string, follow bool) error {
		if follow {
			return unix.Removexattr(p, attr)
		}
		return unix.Lremovexattr(p, attr)
	})
}

// changeUpper copies the node up and makes change to its upper file,
// reached as upperFileAt reaches it (follow: through a magic link).
func (n *node) changeUpper(ctx context.Context, change func(p string, follow bool) error) syscall.Errno {
	n.stageData(ctx)
	n.u.wmu.Lock()
	defer n.u.unlockWrite()
	if errno := n.copyUp(ctx); errno != 0 {
		return errno
	}
	f, p, follow := n.upperFileAt(nil)
	if f != nil {
		defer unix.Close(f.fd)
	}
	return fs.ToErrno(change(p, follow))
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	write := flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0
	if write && n.u.readOnly() {
		return nil, 0, syscall.EROFS
	}
	trunc := flags&syscall.O_TRUNC != 0 // FUSE_ATOMIC_O_TRUNC: the open truncates
	if write {
		if !trunc {
			n.stageData(ctx)
		}
		n.u.wmu.Lock()
		defer n.u.unlockWrite()
		if errno := n.copyUpWith(ctx, !trunc); errno != 0 {
			return nil, 0, errno
		}
	} else {
		n.u.wmu.RLock()
		defer n.u.wmu.RUnlock()
	}
	c := n.u.snapshot(n.c)
	if c.anonFd != 0 {
		fd, err := unix.Open(fdPath(int(c.anonFd)), int(flags)&^unix.O_CREAT|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, 0, fs.ToErrno(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return nil, 0, fs.ToErrno(err)
		}
		return n.u.openedUpper(&n.Inode, n.c, fd, flags, st.Mode), fuse.FOPEN_NOFLUSH, 0
	}
	if c.upper {
		p, nofollow := n.upperPath(), unix.O_NOFOLLOW
		if !n.IsRoot() && n.parentNode() == nil {
			// Its name went (unlinked, renamed over) since the kernel
			// looked it up. Open descriptors still reach it; without
			// one, ESTALE has the kernel look the name up again and
			// open what is there now, as an open racing a rename over
			// its name must see the old file or the new one, never
			// no file at all.
			dup := n.u.dupOpen(n.c)
			if dup < 0 {
				return nil, 0, syscall.ESTALE
			}
			defer unix.Close(dup)
			p, nofollow = fdPath(dup), 0 // a magic link, followed
		}
		fd, err := unix.Open(p, int(flags)&^unix.O_CREAT|nofollow|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, 0, fs.ToErrno(err)
		}
		// The name may have been replaced since the kernel looked it up:
		// never hand out another kind of file than the one it asked for.
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != n.StableAttr().Mode&unix.S_IFMT {
			unix.Close(fd)
			return nil, 0, syscall.ESTALE
		}
		if trunc && n.u.mustKillPriv(ctx) {
			// A truncate by a caller without CAP_FSETID: the kernel
			// drops the size it knows, not the mode.
			if killed, errno := killSetIDOf(ctx, &n.Inode, fd); errno != 0 {
				unix.Close(fd)
				return nil, 0, errno
			} else if killed {
				unix.Fstat(fd, &st)
			}
		}
		return n.u.openedUpper(&n.Inode, n.c, fd, flags, st.Mode), fuse.FOPEN_NOFLUSH, 0
	}
	ref := c.lowers[0]
	if n.u.onOpen != nil {
		n.u.onOpen(n.path())
	}
	f, err := n.u.layers[ref.idx].Open(ctx, ref.path)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	// Layer files never change: the kernel keeps their pages across opens.
	return &file{f: f, size: c.attrs.size}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

// upperFile is an open file of the upper directory.
type upperFile struct {
	fd    int
	u     *Union
	c     *child
	inode *fs.Inode // the node opened, nil for a descriptor borrowed
	// setID: open for writing, with set-ID bits when opened; its writes
	// come through the union, which kills them (see killPriv).
	setID bool
}

// openedUpper registers an open upper file of the node inode (record c),
// opened with flags, whose mode the caller has just read.
func (u *Union) openedUpper(inode *fs.Inode, c *child, fd int, flags, mode uint32) *upperFile {
	f := &upperFile{fd: fd, u: u, c: c, inode: inode}
	if flags&unix.O_ACCMODE != unix.O_RDONLY {
		_, f.setID = withoutSetID(mode, true) // whoever writes
	}
	u.mu.Lock()
	if c.open == nil {
		c.open = map[*upperFile]bool{}
	}
	c.open[f] = true
	u.mu.Unlock()
	return f
}

// dupOpen duplicates the descriptor of one of c's open upper files, or
// returns -1. Under mu, which Release takes before it closes, the
// descriptor is still open.
func (u *Union) dupOpen(c *child) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	for f := range c.open {
		if fd, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 3); err == nil {
			return fd
		}
	}
	return -1
}

var (
	_ fs.FileReader          = (*upperFile)(nil)
	_ fs.FileWriter          = (*upperFile)(nil)
	_ fs.FileFsyncer         = (*upperFile)(nil)
	_ fs.FileFlusher         = (*upperFile)(nil)
	_ fs.FileReleaser        = (*upperFile)(nil)
	_ fs.FileAllocater       = (*upperFile)(nil)
	_ fs.FilePassthroughFder = (*upperFile)(nil)
	_ fs.FileGetlker         = (*upperFile)(nil)
	_ fs.FileSetlker         = (*upperFile)(nil)
	_ fs.FileSetlkwer        = (*upperFile)(nil)
	_ fs.FileLseeker         = (*upperFile)(nil)
)

func (f *upperFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := unix.Pread(f.fd, dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *upperFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if f.u.mustKillPriv(ctx) {
		if errno := f.killSetID(ctx); errno != 0 {
			return 0, errno
		}
	}
	n, err := unix.Pwrite(f.fd, data, off)
	return uint32(n), fs.ToErrno(err)
}

func (f *upperFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return fs.ToErrno(unix.Fsync(f.fd))
}

// Flush has nothing to do: writes reach the upper file as they are made,
// and locks are the descriptor's own, released with it. Opens say
// FOPEN_NOFLUSH, so that close(2) does not wait for a round trip; a kernel
// that still sends FLUSH gets this.
func (f *upperFile) Flush(ctx context.Context) syscall.Errno { return 0 }

// writable tells whether a descriptor is open for writing.
func writable(fd int) bool {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	return err == nil && fl&unix.O_ACCMODE != unix.O_RDONLY
}

func (f *upperFile) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	// A change of the file's content or size kills set-ID bits, as a
	// write does; the request does not say whether the caller has
	// CAP_FSETID, so root is taken to have it and others not.
	if mode&unix.FALLOC_FL_KEEP_SIZE == 0 || mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) != 0 {
		if uid, _ := caller(ctx); uid != 0 {
			if errno := f.killSetID(ctx); errno != 0 {
				return errno
			}
		}
	}
	return fs.ToErrno(unix.Fallocate(f.fd, mode, int64(off), int64(size)))
}

func (f *upperFile) Release(ctx context.Context) syscall.Errno {
	f.u.mu.Lock()
	delete(f.c.open, f)
	f.u.mu.Unlock()
	return fs.ToErrno(unix.Close(f.fd))
}

// PassthroughFd hands the upper file to the kernel: reads and writes cost
// what native ones cost. Not a file whose writes must kill set-ID bits.
func (f *upperFile) PassthroughFd() (int, bool) { return f.fd, !f.setID }

// Lseek answers SEEK_DATA and SEEK_HOLE (the kernel does the other
// whences) from the upper file itself: its holes are the file's, and an
// open file's answer must not depend on its name, which may be gone.
func (f *upperFile) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return lseek(f.fd, off, whence)
}

func lseek(fd int, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(fd, int64(off), int(whence))
	return uint64(n), fs.ToErrno(err)
}

// file is an open layer file.
type file struct {
	f    layertree.File
	size int64
}

var (
	_ fs.FileReader          = (*file)(nil)
	_ fs.FileReleaser        = (*file)(nil)
	_ fs.FilePassthroughFder = (*file)(nil)
	_ fs.FileGetlker         = (*file)(nil)
	_ fs.FileSetlker         = (*file)(nil)
	_ fs.FileSetlkwer        = (*file)(nil)
	_ fs.FileLseeker         = (*file)(nil)
)

// Lseek answers SEEK_DATA and SEEK_HOLE from the layer's file where it
// lies on disk, else as for a file without holes.
func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	if fd, ok := f.PassthroughFd(); ok {
		return lseek(fd, off, whence)
	}
	if int64(off) >= f.size {
		return 0, syscall.ENXIO
	}
	if whence == unix.SEEK_HOLE {
		return uint64(f.size), 0
	}
	return off, 0
}

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.f.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// PassthroughFd lets the kernel read a local layer file directly (FUSE
// passthrough, Linux 6.9+): a read costs what a native one does.
func (f *file) PassthroughFd() (int, bool) {
	if l, ok := f.f.(layertree.LocalFile); ok {
		return l.Fd(), true
	}
	return 0, false
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	return fs.ToErrno(f.f.Close())
}

func (f *upperFile) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	return getlk(f.fd, lk, out)
}

func (f *upperFile) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return setlk(f.fd, lk, flags, false)
}

func (f *upperFile) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return setlk(f.fd, lk, flags, true)
}

func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	fd, ok := f.PassthroughFd()
	if !ok {
		return syscall.ENOLCK
	}
	return getlk(fd, lk, out)
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	fd, ok := f.PassthroughFd()
	if !ok {
		return syscall.ENOLCK
	}
	return setlk(fd, lk, flags, false)
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	fd, ok := f.PassthroughFd()
	if !ok {
		return syscall.ENOLCK
	}
	return setlk(fd, lk, flags, true)
}

// Locks are taken on the descriptor strata holds for each open: open
// file description locks for POSIX locks, so each open of the union owns
// its locks as each open of a file does; flock for flock.
func getlk(fd int, lk *fuse.FileLock, out *fuse.FileLock) syscall.Errno {
	var flk syscall.Flock_t
	lk.ToFlockT(&flk)
	errno := fs.ToErrno(syscall.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &flk))
	out.FromFlockT(&flk)
	return errno
}

func setlk(fd int, lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	if flags&fuse.FUSE_LK_FLOCK != 0 {
		var op int
		switch lk.Typ {
		case syscall.F_RDLCK:
			op = syscall.LOCK_SH
		case syscall.F_WRLCK:
			op = syscall.LOCK_EX
		case syscall.F_UNLCK:
			op = syscall.LOCK_UN
		default:
			return syscall.EINVAL
		}
		if !wait {
			op |= syscall.LOCK_NB
		}
		return fs.ToErrno(syscall.Flock(fd, op))
	}
	var flk syscall.Flock_t
	lk.ToFlockT(&flk)
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	return fs.ToErrno(syscall.FcntlFlock(uintptr(fd), cmd, &flk))
}
