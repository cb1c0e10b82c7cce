package layertree

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Markers of the OCI whiteout form, as files in a layer directory.
const (
	whPrefix = ".wh."
	whOpaque = OpaqueMarker
)

// overrideStat is the xattr where ownership and mode are kept when the
// layer was extracted without the privilege to apply them (the convention
// of containers/storage and fuse-overlayfs).
const overrideStat = "user.containers.override_stat"

// Dir is a Tree backed by a local directory in either whiteout form: the
// kernel overlayfs's (char 0/0 whiteouts, trusted./user.overlay.opaque) or
// OCI's (.wh. files). So any overlayfs lower directory can be stacked.
type Dir struct {
	root string
	opts DirOptions
	// noListxattrat: the kernel lacks listxattrat(2) (before 6.13).
	noListxattrat atomic.Bool
	deep          deepDirs
}

// direntBuffers holds getdents buffers between listings, for every Dir:
// a merge of a directory in many layers lists it in each, and a buffer
// per layer would be megabytes of fresh memory for a 500-layer stack.
var direntBuffers = sync.Pool{New: func() any {
	b := make([]byte, 8192)
	return &b
}}

// DirOptions say how a Dir reads its directory.
type DirOptions struct {
	// IgnoreOverrideStat takes ownership and mode from the files
	// themselves, not from user.containers.override_stat, as the kernel
	// overlayfs and fuse-overlayfs (without xattr_permissions) do. Layers
	// extracted with privilege have no such attribute, and not asking
	// spares a syscall per file.
	IgnoreOverrideStat bool
	// OverlayForm: the directory keeps whiteouts and opaque markers only
	// in the kernel overlayfs's form (char 0/0, xattrs), as strata
	// extracts layers, so no OCI marker file is looked for: the lookup
	// of a name the layer lacks costs one stat, not two, and asking for a
	// marker none.
	OverlayForm bool
}

// NewDir returns the Tree rooted at dir, honouring override_stat.
func NewDir(dir string) (*Dir, error) {
	return NewDirWith(dir, DirOptions{})
}

// NewDirWith returns the Tree rooted at dir, read as o says.
func NewDirWith(dir string, o DirOptions) (*Dir, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("layer %s: not a directory", dir)
	}
	return &Dir{root: dir, opts: o}, nil
}

// NewDirs returns the Trees of a stack of layer directories, in order.
func NewDirs(dirs ...string) ([]Tree, error) {
	out := make([]Tree, 0, len(dirs))
	for _, d := range dirs {
		l, err := NewDir(d)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// Root is the directory the tree reads.
func (d *Dir) Root() string { return d.root }

// Stat returns the entry at path; a missing name that an OCI marker file
// whites out is reported as a whiteout.
func (d *Dir) Stat(_ context.Context, path string) (Entry, error) {
	dir, name := splitPath(path)
	if d.opts.OverlayForm && strings.HasPrefix(name, whPrefix) {
		return Entry{}, &os.PathError{Op: "stat", Path: d.abs(path), Err: os.ErrNotExist}
	}
	p, err := d.at(path)
	var st unix.Stat_t
	if err == nil {
		err = unix.Lstat(p, &st)
	}
	if errors.Is(err, unix.ENOENT) && path != "" && !d.opts.OverlayForm {
		if m, err := d.at(joinPath(dir, whPrefix+name)); err == nil && unix.Lstat(m, &st) == nil {
			return Entry{Name: name, Whiteout: true, Mode: ModeChar}, nil
		}
	}
	if err != nil {
		return Entry{}, &os.PathError{Op: "stat", Path: d.abs(path), Err: err}
	}
	return d.entry(fileAt{dir: -1, name: name, abs: p}, &st), nil
}

// ReadDir lists a directory, turning OCI marker files into whiteout
// entries and dropping the opaque marker (reported on the directory).
func (d *Dir) ReadDir(_ context.Context, path string) ([]Entry, error) {
	p, err := d.at(path)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.abs(path), Err: err}
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.abs(path), Err: err}
	}
	defer unix.Close(fd)
	buf := direntBuffers.Get().(*[]byte)
	names, err := readNames(fd, *buf)
	direntBuffers.Put(buf)
	if err != nil {
		return nil, fmt.Errorf("readdir %s: %w", d.abs(path), err)
	}
	// Large directories are statted by several goroutines: the syscalls
	// are independent, and on a cold cache each may wait for the disk.
	const chunk = 512
	out := make([]Entry, 0, len(names))
	if len(names) <= chunk {
		return d.entries(fd, path, p, names, out)
	}
	// Each part is made in place, in its own stretch of out (a name gives
	// at most one entry), and the stretches are closed up after: a copy of
	// 100,000 entries into fresh memory costs more than the stats.
	parts := make([][]Entry, (len(names)+chunk-1)/chunk)
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range parts {
		lo, hi := i*chunk, min((i+1)*chunk, len(names))
		work := func() {
			parts[i], errs[i] = d.entries(fd, path, p, names[lo:hi], out[lo:lo:hi])
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			work()
			<-sem
		}()
	}
	wg.Wait()
	for i, part := range parts {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if len(out) == i*chunk { // where it was made
			out = out[:len(out)+len(part)]
		} else {
			out = append(out, part...)
		}
	}
	return out, nil
}

// readNames lists the names in the open directory fd, without "." and
// "..". It reads with getdents itself: os.File would register the
// descriptor with the poller and set its flags, four syscalls more per
// directory.
func readNames(fd int, buf []byte) ([]string, error) {
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// entries stats names of the directory path (open as fd, reached as p),
// appending to out.
func (d *Dir) entries(fd int, path, p string, names []string, out []Entry) ([]Entry, error) {
	for _, n := range names {
		if n == whOpaque {
			// Told here rather than by a lookup from the parent's
			// listing, which would read every subdirectory.
			out = append(out, Entry{Name: OpaqueMarker, Opaque: true})
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("stat %s/%s: %w", p, n, err)
		}
		if target, ok := strings.CutPrefix(n, whPrefix); ok {
			out = append(out, Entry{Name: target, Whiteout: true, Mode: ModeChar})
			continue
		}
		abs := p + "/" + n
		if len(abs) > pathMax {
			abs = d.Path(joinPath(path, n))
		}
		out = append(out, d.entry(fileAt{dir: fd, name: n, abs: abs}, &st))
	}
	return out, nil
}

// fileAt names a file both ways: relative to its open parent directory
// (dir; -1 when there is none), which spares the kernel a path walk, and
// by absolute path.
type fileAt struct {
	dir       int
	name, abs string
}

func (d *Dir) entry(f fileAt, st *unix.Stat_t) Entry {
	e := Entry{
		Name: f.name, Mode: st.Mode, UID: st.Uid, GID: st.Gid, Size: st.Size,
		Mtime: time.Unix(st.Mtim.Unix()), Rdev: st.Rdev, Nlink: uint32(st.Nlink), Ino: st.Ino, Blocks: st.Blocks,
	}
	if e.Type() == ModeSymlink {
		e.Target = readlink(f)
		return e
	}
	if e.Type() != ModeDir && d.opts.IgnoreOverrideStat {
		if e.Type() == ModeChar {
			e.Whiteout = st.Rdev == 0
		}
		return e // the other markers are on directories
	}
	// One listxattr tells which of the markers are there: most entries
	// have none, and each lookup of an absent one is a syscall.
	xs := d.markers(f)
	switch e.Type() {
	case ModeChar:
		e.Whiteout = st.Rdev == 0
	case ModeDir:
		e.Opaque = isOpaque(f, xs, !d.opts.OverlayForm)
		e.Implied = xs&markImplied != 0
		if xs&markRedirect != 0 {
			e.Redirect = redirectOf(f.abs)
		}
		e.ListBytes = st.Size
	}
	if xs&markOverride != 0 {
		applyOverride(&e, f.abs)
	}
	return e
}

func readlink(f fileAt) string {
	buf := make([]byte, 256)
	for {
		var n int
		var err error
		if f.dir >= 0 {
			n, err = unix.Readlinkat(f.dir, f.name, buf)
		} else {
			n, err = unix.Readlink(f.abs, buf)
		}
		if err != nil {
			return ""
		}
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// markers are the extended attributes the tree interprets.
type markers uint8

const (
	markOpaque markers = 1 << iota
	markImplied
	markRedirect
	markOverride
)

var markerNames = map[string]markers{
	"trusted.overlay.opaque":   markOpaque,
	"user.overlay.opaque":      markOpaque,
	impliedXattr:               markImplied,
	"trusted.overlay.redirect": markRedirect,
	"user.overlay.redirect":    markRedirect,
	overrideStat:               markOverride,
}

// markers tells which marker attributes the file has.
func (d *Dir) markers(f fileAt) markers {
	var stack [512]byte
	buf := stack[:]
	n, err := d.listxattr(f, buf)
	if errors.Is(err, unix.ERANGE) {
		if size, err2 := d.listxattr(f, nil); err2 == nil {
			buf = make([]byte, size)
			n, err = d.listxattr(f, buf)
		}
	}
	if err != nil || n <= 0 {
		return 0
	}
	var m markers
	for name := range strings.SplitSeq(string(buf[:n]), "\x00") {
		m |= markerNames[name]
	}
	return m
}

// listxattr lists the file's attribute names relative to its directory
// with listxattrat(2) (Linux 6.13) where the kernel has it.
func (d *Dir) listxattr(f fileAt, buf []byte) (int, error) {
	if f.dir >= 0 && !d.noListxattrat.Load() {
		n, err := listxattrat(f.dir, f.name, buf)
		if err != unix.ENOSYS {
			return n, err
		}
		d.noListxattrat.Store(true)
	}
	return unix.Llistxattr(f.abs, buf)
}

// sysListxattrat is listxattrat(2)'s number on amd64 and arm64 alike
// (the syscall table shared since 5.x).
const sysListxattrat = 465

func listxattrat(dir int, name string, buf []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	var bp unsafe.Pointer
	if len(buf) > 0 {
		bp = unsafe.Pointer(&buf[0])
	}
	r, _, errno := unix.Syscall6(sysListxattrat, uintptr(dir), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(bp), uintptr(len(buf)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// impliedXattr marks directories a layer holds only as parents (see
// whiteout.ImpliedXattr).
const impliedXattr = "user.strata.implied"

func redirectOf(dir string) string {
	buf := make([]byte, 4096)
	for _, x := range []string{"trusted.overlay.redirect", "user.overlay.redirect"} {
		if n, err := unix.Lgetxattr(dir, x, buf); err == nil && n > 0 {
			return string(buf[:n])
		}
	}
	return ""
}

// isOpaque tells whether a directory is opaque: by the overlay's xattr,
// and for Stat (no parent open, f.dir < 0) by the OCI marker file too
// when the tree may have one (oci); a listing leaves the marker to the
// directory's own listing.
func isOpaque(f fileAt, xs markers, oci bool) bool {
	if xs&markOpaque != 0 {
		buf := make([]byte, 2)
		for _, x := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
			if n, err := unix.Lgetxattr(f.abs, x, buf); err == nil && n == 1 && buf[0] == 'y' {
				return true
			}
		}
	}
	if f.dir >= 0 || !oci {
		return false
	}
	var st unix.Stat_t
	return unix.Lstat(f.abs+"/"+whOpaque, &st) == nil
}

// applyOverride reads "UID:GID:MODE" (mode in octal, optionally with a
// file-type word) kept by an unprivileged extraction.
func applyOverride(e *Entry, abs string) {
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(abs, overrideStat, buf)
	if err != nil || n <= 0 {
		return
	}
	parts := strings.Split(string(buf[:n]), ":")
	if len(parts) < 3 {
		return
	}
	uid, err1 := strconv.ParseUint(parts[0], 10, 32)
	gid, err2 := strconv.ParseUint(parts[1], 10, 32)
	mode, err3 := strconv.ParseUint(parts[2], 8, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return
	}
	e.UID, e.GID = uint32(uid), uint32(gid)
	e.Mode = e.Type() | uint32(mode)&0o7777
}

// Xattrs returns the entry's extended attributes without the overlay's
// own.
func (d *Dir) Xattrs(_ context.Context, path string) (map[string][]byte, error) {
	p, err := d.at(path)
	if err != nil {
		return nil, &os.PathError{Op: "listxattr", Path: d.abs(path), Err: err}
	}
	return xattrs(p, unix.Llistxattr, unix.Lgetxattr)
}

// XattrsOf is Xattrs of the file a magic link (/proc/self/fd/N) reaches,
// which may have no name.
func XattrsOf(link string) (map[string][]byte, error) {
	return xattrs(link, unix.Listxattr, unix.Getxattr)
}

func xattrs(p string, list func(string, []byte) (int, error), get func(string, string, []byte) (int, error)) (map[string][]byte, error) {
	size, err := list(p, nil)
	if err != nil || size == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
		return nil, err
	}
	buf := make([]byte, size)
	size, err = list(p, buf)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		shown, ok := Shown(name)
		if name == "" || !ok {
			continue
		}
		v, err := getxattrWith(get, p, name)
		if err != nil {
			continue
		}
		out[shown] = v
	}
	return out, nil
}

// Internal reports whether an xattr belongs to the overlay machinery and
// is never shown through the union as it is stored (but see Shown).
func Internal(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.") ||
		strings.HasPrefix(name, "user.strata.") || name == overrideStat
}

// The kernel overlayfs (Linux 6.7 and later) escapes xattrs of its own
// namespace set through a union: trusted.overlay.X is stored as
// trusted.overlay.overlay.X, which the union never reads as one of its
// own markers and shows as trusted.overlay.X. So an overlay can be
// stacked on files of another, and a file's xattrs survive the trip.
// strata does the same for both its namespaces (it reads both forms of
// marker in every layer).
const escapeXattr = "overlay."

var overlayXattrPrefixes = [...]string{"trusted.overlay.", "user.overlay."}

// Shown is how an xattr stored in a layer shows through the union: an
// escaped overlay xattr without its escape; other internal ones not at
// all (false).
func Shown(stored string) (string, bool) {
	for _, p := range overlayXattrPrefixes {
		if rest, ok := strings.CutPrefix(stored, p+escapeXattr); ok {
			return p + rest, true
		}
	}
	return stored, !Internal(stored)
}

// Stored is the name under which an xattr set through the union is
// stored: escaped in the overlay namespaces; false for the names strata
// keeps to itself, which cannot be set.
func Stored(name string) (string, bool) {
	for _, p := range overlayXattrPrefixes {
		if rest, ok := strings.CutPrefix(name, p); ok {
			return p + escapeXattr + rest, true
		}
	}
	return name, !Internal(name)
}

func getxattrWith(get func(string, string, []byte) (int, error), path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := get(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// Open opens a regular file; the result is a LocalFile.
func (d *Dir) Open(_ context.Context, path string) (File, error) {
	p, err := d.at(path)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.abs(path), Err: err}
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.abs(path), Err: err}
	}
	return &localFile{f: os.NewFile(uintptr(fd), d.abs(path))}, nil
}

type localFile struct{ f *os.File }

func (l *localFile) ReadAt(b []byte, off int64) (int, error) { return l.f.ReadAt(b, off) }
func (l *localFile) Close() error                            { return l.f.Close() }
func (l *localFile) Fd() int                                 { return int(l.f.Fd()) }

func splitPath(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
