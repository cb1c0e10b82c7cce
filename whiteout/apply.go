package whiteout

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/fsutil"
)

// Mode says what Apply does with a layer.
type Mode int

// The modes of Apply.
const (
	// Flatten applies the layer as an OCI changeset onto what dir holds:
	// whiteouts delete, opaque markers clear a directory's older content,
	// non-directories replace, directories merge.
	Flatten Mode = iota
	// Layer extracts one layer alone into an empty dir, keeping whiteouts
	// and opaque markers in the form Options.Format names, for union
	// mounts.
	Layer
)

// WhiteoutFormat is how Layer mode keeps whiteouts and opaque markers.
type WhiteoutFormat int

// The formats.
const (
	// FormatOverlay: char device 0/0 whiteouts, trusted.overlay.opaque.
	FormatOverlay WhiteoutFormat = iota
	// FormatOverlayUser: char device 0/0 whiteouts (allowed unprivileged
	// since Linux 5.8), user.overlay.opaque.
	FormatOverlayUser
	// FormatOCI: ".wh.NAME" and ".wh..wh..opq" kept as empty files.
	FormatOCI
)

// DefaultMaxEntrySize bounds one file of a layer; a header claiming more
// is refused rather than filling the disk.
const DefaultMaxEntrySize = 64 << 30

// Options configure Apply.
type Options struct {
	Mode   Mode
	Format WhiteoutFormat
	// Privileged allows ownership, device nodes and trusted.* xattrs.
	// Without it device nodes are refused and ownership and modes that
	// cannot be applied are kept in OverrideStatXattr.
	Privileged   bool
	MaxEntrySize int64
	// Sync makes the result durable with one syncfs at the end.
	Sync bool
}

// Stats says what Apply wrote.
type Stats struct {
	Entries int
	Bytes   int64 // regular file content
}

// UnsafeEntryError is an entry refused because applying it could write
// outside the target or break the layer's meaning.
type UnsafeEntryError struct {
	Name   string
	Reason string
}

func (e *UnsafeEntryError) Error() string {
	return fmt.Sprintf("unsafe layer entry %q: %s", e.Name, e.Reason)
}

func unsafeEntry(name, format string, args ...any) error {
	return &UnsafeEntryError{Name: name, Reason: fmt.Sprintf(format, args...)}
}

// Apply reads a layer tar from r and applies it to dir (created if
// missing). It reads no further than the tar's end-of-archive marker, so
// a caller hashing the stream drains the rest itself. Every path is
// resolved inside dir with openat2(RESOLVE_IN_ROOT|RESOLVE_NO_SYMLINKS):
// no entry can write outside it, whatever the tar holds.
func Apply(ctx context.Context, r io.Reader, dir string, o Options) (Stats, error) {
	if o.MaxEntrySize <= 0 {
		o.MaxEntrySize = DefaultMaxEntrySize
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Stats{}, err
	}
	rootFd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("open %s: %w", dir, err)
	}
	a := &applier{o: o, root: rootFd, dirs: map[string]int{}, created: map[string]bool{}, buf: make([]byte, 1<<20)}
	defer a.close()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return a.stats, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.stats, fmt.Errorf("read layer tar after %d entries: %w", a.stats.Entries, err)
		}
		if err := a.entry(hdr, tr); err != nil {
			var ue *UnsafeEntryError
			if errors.As(err, &ue) {
				return a.stats, err
			}
			return a.stats, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	if err := a.finish(); err != nil {
		return a.stats, err
	}
	if o.Sync {
		if err := unix.Syncfs(rootFd); err != nil {
			return a.stats, fmt.Errorf("syncfs %s: %w", dir, err)
		}
	}
	return a.stats, nil
}

type applier struct {
	o     Options
	root  int
	stats Stats
	// dirs caches O_PATH fds of directories resolved inside the root.
	dirs map[string]int
	// created holds the paths this layer wrote: an opaque marker clears
	// only what lower layers left, and a path may appear once.
	created map[string]bool
	// dirMeta is applied last, since writing children changes a
	// directory's mtime and a read-only mode would block them.
	dirMeta []*tar.Header
	buf     []byte
}

func (a *applier) close() {
	for _, fd := range a.dirs {
		unix.Close(fd)
	}
	unix.Close(a.root)
}

// CleanName validates a tar name and returns it relative to the root
// ("" for the root itself).
func CleanName(name string) (string, error) {
	if name == "" {
		return "", unsafeEntry(name, "empty name")
	}
	if strings.HasPrefix(name, "/") {
		return "", unsafeEntry(name, "absolute path")
	}
	if strings.ContainsRune(name, 0) {
		return "", unsafeEntry(name, "NUL in name")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", unsafeEntry(name, "path contains ..")
		}
	}
	p := path.Clean(name)
	if p == "." {
		return "", nil
	}
	return p, nil
}

func (a *applier) entry(hdr *tar.Header, tr io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil
	}
	name, err := CleanName(hdr.Name)
	if err != nil {
		return err
	}
	a.stats.Entries++
	if name == "" {
		if hdr.Typeflag != tar.TypeDir {
			return unsafeEntry(hdr.Name, "the layer root must be a directory")
		}
		a.dirMeta = append(a.dirMeta, withName(hdr, ""))
		return nil
	}
	parent, base := path.Split(name)
	parent = strings.TrimSuffix(parent, "/")
	kind, target, err := ClassifyName(base)
	if err != nil {
		return unsafeEntry(hdr.Name, "%v", err)
	}
	pfd, err := a.dir(hdr.Name, parent)
	if err != nil {
		return err
	}
	switch kind {
	case Whiteout:
		return a.whiteout(hdr.Name, pfd, parent, target)
	case Opaque:
		return a.opaque(hdr.Name, pfd, parent)
	}
	if hdr.Typeflag != tar.TypeDir && a.created[name] {
		return unsafeEntry(hdr.Name, "duplicate path in one layer")
	}
	if hdr.Size < 0 || hdr.Size > a.o.MaxEntrySize {
		return unsafeEntry(hdr.Name, "size %d out of bounds (max %d)", hdr.Size, a.o.MaxEntrySize)
	}
	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := a.mkdir(pfd, base); err != nil {
			return err
		}
		a.created[name] = true
		a.dirMeta = append(a.dirMeta, withName(hdr, name))
		return nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if err := a.replace(pfd, base); err != nil {
			return err
		}
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		f := os.NewFile(uintptr(fd), base)
		n, err := io.CopyBuffer(fileWriter{f}, io.LimitReader(tr, hdr.Size), a.buf)
		if err == nil && n != hdr.Size {
			err = fmt.Errorf("data ends after %d of %d bytes: %w", n, hdr.Size, io.ErrUnexpectedEOF)
		}
		if err != nil {
			f.Close()
			return err
		}
		a.stats.Bytes += n
		a.created[name] = true
		err = a.meta(pfd, base, hdr, mode, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	case tar.TypeSymlink:
		if err := a.replace(pfd, base); err != nil {
			return err
		}
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		a.created[name] = true
		return a.meta(pfd, base, hdr, mode, nil)
	case tar.TypeLink:
		return a.hardlink(hdr, pfd, base, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		dev := uint64(0)
		typ := uint32(unix.S_IFIFO)
		if hdr.Typeflag != tar.TypeFifo {
			if !a.o.Privileged {
				return unsafeEntry(hdr.Name, "device node needs privilege")
			}
			typ = unix.S_IFCHR
			if hdr.Typeflag == tar.TypeBlock {
				typ = unix.S_IFBLK
			}
			dev = unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		}
		if err := a.replace(pfd, base); err != nil {
			return err
		}
		if err := unix.Mknodat(pfd, base, typ|0o600, int(dev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
		a.created[name] = true
		return a.meta(pfd, base, hdr, mode, nil)
	}
	return unsafeEntry(hdr.Name, "unsupported tar entry type %q", hdr.Typeflag)
}

// fileWriter hides os.File's ReadFrom so io.CopyBuffer uses our buffer
// rather than copy_file_range attempts on a pipe.
type fileWriter struct{ f *os.File }

func (w fileWriter) Write(b []byte) (int, error) { return w.f.Write(b) }

func withName(h *tar.Header, name string) *tar.Header {
	c := *h
	c.Name = name
	return &c
}

// dir returns an O_PATH fd of the directory at rel inside the root,
// creating missing components 0755 (tars may omit parents). A symlink
// anywhere on the way is refused: a tar that writes through a symlink it
// planted is the classic escape.
func (a *applier) dir(entry, rel string) (int, error) {
	if rel == "" {
		return a.root, nil
	}
	if fd, ok := a.dirs[rel]; ok {
		return fd, nil
	}
	fd, err := openInRoot(a.root, rel)
	if errors.Is(err, unix.ENOENT) {
		parent, base := path.Split(rel)
		pfd, perr := a.dir(entry, strings.TrimSuffix(parent, "/"))
		if perr != nil {
			return -1, perr
		}
		merr := unix.Mkdirat(pfd, base, 0o755)
		if merr != nil && !errors.Is(merr, unix.EEXIST) {
			return -1, fmt.Errorf("create parent %s: %w", rel, merr)
		}
		if merr == nil && a.o.Mode == Layer {
			if err := setXattrAt(pfd, base, ImpliedXattr, []byte("1")); err != nil {
				return -1, fmt.Errorf("mark implied parent %s: %w", rel, err)
			}
		}
		fd, err = openInRoot(a.root, rel)
	}
	switch {
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return -1, unsafeEntry(entry, "parent %q is or goes through a symlink", rel)
	case errors.Is(err, unix.ENOTDIR):
		return -1, unsafeEntry(entry, "parent %q is not a directory", rel)
	case err != nil:
		return -1, fmt.Errorf("open parent %s: %w", rel, err)
	}
	a.dirs[rel] = fd
	return fd, nil
}

func openInRoot(root int, rel string) (int, error) {
	for {
		fd, err := unix.Openat2(root, rel, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		return fd, err
	}
}

// forget drops cached fds at or under rel, after it was removed.
func (a *applier) forget(rel string) {
	for p, fd := range a.dirs {
		if p == rel || strings.HasPrefix(p, rel+"/") {
			unix.Close(fd)
			delete(a.dirs, p)
		}
	}
}

func join(parent, base string) string {
	if parent == "" {
		return base
	}
	return parent + "/" + base
}

// mkdir makes base a directory, keeping one that exists (directories
// merge) and replacing anything else.
func (a *applier) mkdir(pfd int, base string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil
		}
		if err := unix.Unlinkat(pfd, base, 0); err != nil {
			return fmt.Errorf("replace with a directory: %w", err)
		}
	}
	if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	return nil
}

// replace removes whatever is at base, a directory tree included, so a
// non-directory can take its place.
func (a *applier) replace(pfd int, base string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	return a.removeAt(pfd, base, &st)
}

func (a *applier) removeAt(pfd int, base string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.Unlinkat(pfd, base, 0)
	}
	a.forgetFd(pfd, base)
	if err := removeTree(pfd, base); err != nil {
		return fmt.Errorf("remove %s: %w", base, err)
	}
	return nil
}

// forgetFd drops cached fds under the directory base of pfd.
func (a *applier) forgetFd(pfd int, base string) {
	for p, fd := range a.dirs {
		if fd == pfd {
			a.forget(join(p, base))
			return
		}
	}
	if pfd == a.root {
		a.forget(base)
	}
}

// removeTree removes the directory base of pfd and everything in it,
// never following symlinks.
func removeTree(pfd int, base string) error {
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	unix.Fchmod(fd, 0o700)
	d := os.NewFile(uintptr(fd), base)
	names, err := d.Readdirnames(-1)
	if err != nil {
		d.Close()
		return err
	}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = removeTree(fd, n)
		} else {
			err = unix.Unlinkat(fd, n, 0)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			d.Close()
			return err
		}
	}
	d.Close()
	return unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR)
}

func (a *applier) whiteout(entry string, pfd int, parent, target string) error {
	full := join(parent, target)
	if a.o.Mode == Layer {
		if a.created[full] {
			return nil // the layer re-adds the name; the whiteout is moot
		}
		if a.o.Format == FormatOCI {
			return a.markerFile(pfd, Prefix+target)
		}
		if err := a.replace(pfd, target); err != nil {
			return err
		}
		if err := unix.Mknodat(pfd, target, unix.S_IFCHR|0o000, 0); err != nil {
			return fmt.Errorf("create whiteout: %w", err)
		}
		return nil
	}
	// Flatten: delete what lower layers left, not what this layer added.
	if a.created[full] {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, target, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	return a.removeAt(pfd, target, &st)
}

func (a *applier) markerFile(pfd int, name string) error {
	fd, err := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return unix.Close(fd)
}

func (a *applier) opaque(entry string, pfd int, parent string) error {
	if a.o.Mode == Layer {
		switch a.o.Format {
		case FormatOCI:
			return a.markerFile(pfd, OpaqueMarker)
		case FormatOverlayUser:
			return setXattrAt(pfd, "", OpaqueXattrUser, []byte("y"))
		default:
			return setXattrAt(pfd, "", OpaqueXattrTrusted, []byte("y"))
		}
	}
	names, err := fsutil.NamesAt(pfd)
	if err != nil {
		return err
	}
	for _, n := range names {
		if a.created[join(parent, n)] {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if err := a.removeAt(pfd, n, &st); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) hardlink(hdr *tar.Header, pfd int, base, name string) error {
	target, err := CleanName(hdr.Linkname)
	if err != nil || target == "" {
		return unsafeEntry(hdr.Name, "hardlink target %q is outside the layer", hdr.Linkname)
	}
	if target == name {
		return unsafeEntry(hdr.Name, "hardlink to itself")
	}
	tparent, tbase := path.Split(target)
	tfd, err := a.dir(hdr.Name, strings.TrimSuffix(tparent, "/"))
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return unsafeEntry(hdr.Name, "hardlink target %q does not exist", hdr.Linkname)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return unsafeEntry(hdr.Name, "hardlink target %q is a directory", hdr.Linkname)
	}
	if err := a.replace(pfd, base); err != nil {
		return err
	}
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("link to %s: %w", hdr.Linkname, err)
	}
	a.created[name] = true
	return nil
}

// meta applies ownership, mode, xattrs and times. f is the open file for
// regular files (cheaper fd-based calls).
func (a *applier) meta(pfd int, base string, hdr *tar.Header, mode uint32, f *os.File) error {
	if base == "" {
		// The layer root: pfd is an O_PATH fd, reached through procfs.
		rf, err := os.Open("/proc/self/fd/" + strconv.Itoa(pfd))
		if err != nil {
			return err
		}
		defer rf.Close()
		f = rf
		if a.o.Privileged {
			if err := rf.Chown(hdr.Uid, hdr.Gid); err != nil {
				return fmt.Errorf("chown: %w", err)
			}
		}
		if err := a.xattrs(pfd, "", hdr); err != nil {
			return err
		}
		if err := rf.Chmod(os.FileMode(mode&0o777) | modeBits(mode)); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
		return setTimes(pfd, "", hdr)
	}
	isLink := hdr.Typeflag == tar.TypeSymlink
	if a.o.Privileged {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	} else if hdr.Uid != os.Geteuid() || hdr.Gid != os.Getegid() || mode&0o7000 != 0 {
		if !isLink {
			v := fmt.Sprintf("%d:%d:0%o", hdr.Uid, hdr.Gid, mode)
			if err := setXattrAt(pfd, base, OverrideStatXattr, []byte(v)); err != nil && !errors.Is(err, unix.ENOTSUP) {
				return fmt.Errorf("record ownership: %w", err)
			}
		}
	}
	if err := a.xattrs(pfd, base, hdr); err != nil {
		return err
	}
	// chmod after chown, which clears setuid and setgid.
	if !isLink {
		var err error
		if f != nil {
			err = f.Chmod(os.FileMode(mode&0o777) | modeBits(mode))
		} else {
			err = unix.Fchmodat(pfd, base, mode, 0)
		}
		if err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	return setTimes(pfd, base, hdr)
}

// modeBits converts setuid, setgid and sticky to os.FileMode bits.
func modeBits(m uint32) os.FileMode {
	var fm os.FileMode
	if m&unix.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

func (a *applier) xattrs(pfd int, base string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || IsInternalXattr(name) {
			continue
		}
		if !a.o.Privileged && strings.HasPrefix(name, "trusted.") {
			continue
		}
		err := setXattrAt(pfd, base, name, []byte(v))
		if err != nil && !a.o.Privileged && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOTSUP)) {
			continue
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}

// setXattrAt sets an xattr on base inside the directory pfd (on pfd itself
// when base is ""), through /proc/self/fd so the path is never
// re-resolved from the root, and without following a final symlink.
func setXattrAt(pfd int, base, name string, value []byte) error {
	p := "/proc/self/fd/" + strconv.Itoa(pfd)
	if base != "" {
		p += "/" + base
		return unix.Lsetxattr(p, name, value, 0)
	}
	return unix.Setxattr(p, name, value, 0)
}

func setTimes(pfd int, base string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{toTimespec(atime), toTimespec(hdr.ModTime)}
	var err error
	if base == "" {
		err = unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(pfd), ts, 0)
	} else {
		err = unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func toTimespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		return unix.Timespec{Sec: 0, Nsec: 0}
	}
	return unix.NsecToTimespec(t.UnixNano())
}

// finish applies directory metadata, deepest first so a read-only parent
// is set after its children.
func (a *applier) finish() error {
	for i := len(a.dirMeta) - 1; i >= 0; i-- {
		h := a.dirMeta[i]
		parent, base := path.Split(h.Name)
		parent = strings.TrimSuffix(parent, "/")
		pfd := a.root
		if h.Name != "" {
			var err error
			if pfd, err = a.dir(h.Name, parent); err != nil {
				return err
			}
			var st unix.Stat_t
			if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
				continue // replaced later in the layer
			}
		}
		if err := a.meta(pfd, base, h, uint32(h.Mode)&0o7777, nil); err != nil {
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
		if a.o.Mode == Layer && h.Name != "" {
			// Named by the layer after all: its metadata is the layer's.
			if err := unix.Lremovexattr("/proc/self/fd/"+strconv.Itoa(pfd)+"/"+base, ImpliedXattr); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("entry %q: %w", h.Name, err)
			}
		}
	}
	return nil
}
