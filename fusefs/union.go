package fusefs

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/stratafs/strata/layertree"
)

// Options configure a Union.
type Options struct {
	// Layers are the read-only layers, top first.
	Layers []layertree.Tree
	// Timeout is how long the kernel may cache entries and attributes.
	// Layers never change, so it is long by default (an hour).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Union is the merged view of a stack of layers. This increment serves
// the read path; writes are refused with EROFS until the upper layer lands.
type Union struct {
	layers  []layertree.Tree
	timeout time.Duration
	log     *slog.Logger
	root    *node
}

// New builds the union of opts.Layers.
func New(opts Options) (*Union, error) {
	if len(opts.Layers) == 0 {
		return nil, fmt.Errorf("union: no layers")
	}
	if len(opts.Layers) > 1<<15 {
		return nil, fmt.Errorf("union: %d layers is more than %d", len(opts.Layers), 1<<15)
	}
	u := &Union{layers: opts.Layers, timeout: opts.Timeout, log: opts.Logger}
	if u.timeout == 0 {
		u.timeout = time.Hour
	}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	ctx := context.Background()
	var lowers []layerRef
	var attr layertree.Entry
	found := false
	for i, l := range u.layers {
		e, err := l.Stat(ctx, "")
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		lowers = append(lowers, layerRef{idx: i, path: ""})
		if !found && !e.Implied {
			attr, found = e, true
		}
		if e.Opaque {
			break
		}
	}
	if !found {
		attr = layertree.Entry{Mode: layertree.ModeDir | 0o755, Nlink: 2}
	}
	u.root = &node{u: u, entry: attr, lowers: lowers}
	return u, nil
}

// Root is the union's root node, for fs.Mount.
func (u *Union) Root() fs.InodeEmbedder { return u.root }

// layerRef is where an entry lives in one layer.
type layerRef struct {
	idx  int
	path string
}

// child is one name of a merged directory.
type child struct {
	entry  layertree.Entry
	lowers []layerRef // for directories, every layer holding one, top first
}

// node is one file of the union.
type node struct {
	fs.Inode
	u      *Union
	entry  layertree.Entry // the attributes shown
	lowers []layerRef      // top first; one for non-directories

	mu       sync.Mutex
	children map[string]*child // merged directory, computed once
	names    []string          // sorted, for readdir
}

var (
	_ fs.NodeLookuper    = (*node)(nil)
	_ fs.NodeReaddirer   = (*node)(nil)
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeGetxattrer  = (*node)(nil)
	_ fs.NodeListxattrer = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
)

// ino is stable across mounts of the same stack: the layer's own inode
// number with the layer's index in the high bits, as overlayfs's xino.
func (u *Union) ino(ref layerRef, e layertree.Entry) uint64 {
	const low = 1<<48 - 1
	if e.Ino != 0 {
		return uint64(ref.idx+1)<<48 | e.Ino&low
	}
	// Trees without inode numbers (in memory): a hash of the path.
	h := uint64(14695981039346656037)
	for i := 0; i < len(ref.path); i++ {
		h ^= uint64(ref.path[i])
		h *= 1099511628211
	}
	return uint64(ref.idx+1)<<48 | h&low
}

// merge computes the directory's listing from its layers, top down: the
// first layer to name an entry decides what it is; whiteouts hide the
// name below; a directory's lower layers stop at an opaque one or at a
// non-directory.
func (n *node) merge(ctx context.Context) (map[string]*child, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.children != nil {
		return n.children, 0
	}
	out := map[string]*child{}
	hidden := map[string]bool{} // whited out, or shadowed by a non-directory
	closed := map[string]bool{} // directories whose lower layers are hidden
	for _, ref := range n.lowers {
		ents, err := n.u.layers[ref.idx].ReadDir(ctx, ref.path)
		if err != nil {
			n.u.log.Warn("readdir of a layer failed", "layer", ref.idx, "path", ref.path, "err", err)
			return nil, fs.ToErrno(err)
		}
		for _, e := range ents {
			if hidden[e.Name] {
				continue
			}
			if e.Whiteout {
				if _, ok := out[e.Name]; !ok {
					hidden[e.Name] = true
				}
				continue
			}
			cref := layerRef{idx: ref.idx, path: join(ref.path, e.Name)}
			c, ok := out[e.Name]
			if !ok {
				out[e.Name] = &child{entry: e, lowers: []layerRef{cref}}
				if !e.IsDir() {
					hidden[e.Name] = true
				} else if e.Opaque {
					closed[e.Name] = true
				}
				continue
			}
			// A lower directory under an upper one merges into it.
			if !e.IsDir() || closed[e.Name] {
				if !e.IsDir() {
					closed[e.Name] = true
				}
				continue
			}
			c.lowers = append(c.lowers, cref)
			if c.entry.Implied && !e.Implied {
				c.entry = withName(e, c.entry.Name)
			}
			if e.Opaque {
				closed[e.Name] = true
			}
		}
	}
	n.children = out
	n.names = make([]string, 0, len(out))
	for name := range out {
		n.names = append(n.names, name)
	}
	sort.Strings(n.names)
	return out, 0
}

func withName(e layertree.Entry, name string) layertree.Entry {
	e.Name = name
	return e
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	children, errno := n.merge(ctx)
	if errno != 0 {
		return nil, errno
	}
	c, ok := children[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	cn := &node{u: n.u, entry: c.entry, lowers: c.lowers}
	ino := n.u.ino(c.lowers[0], c.entry)
	cn.fillAttr(&out.Attr, ino)
	out.SetEntryTimeout(n.u.timeout)
	out.SetAttrTimeout(n.u.timeout)
	return n.NewInode(ctx, cn, fs.StableAttr{Mode: c.entry.Type(), Ino: ino}), 0
}

func (n *node) fillAttr(a *fuse.Attr, ino uint64) {
	e := n.entry
	a.Ino = ino
	a.Mode = e.Mode
	a.Uid, a.Gid = e.UID, e.GID
	a.Size = uint64(e.Size)
	a.Blocks = (uint64(e.Size) + 511) / 512
	a.Blksize = 4096
	a.Nlink = max(e.Nlink, 1)
	a.Rdev = uint32(e.Rdev)
	t := e.Mtime
	a.SetTimes(&t, &t, &t)
}

func (n *node) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ino := n.StableAttr().Ino
	if n.IsRoot() {
		ino = fuse.FUSE_ROOT_ID
	}
	n.fillAttr(&out.Attr, ino)
	out.SetTimeout(n.u.timeout)
	return 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	children, errno := n.merge(ctx)
	if errno != 0 {
		return nil, errno
	}
	n.mu.Lock()
	names := slices.Clone(n.names)
	n.mu.Unlock()
	ents := make([]fuse.DirEntry, 0, len(names))
	for _, name := range names {
		c := children[name]
		ents = append(ents, fuse.DirEntry{Name: name, Mode: c.entry.Type(), Ino: n.u.ino(c.lowers[0], c.entry)})
	}
	return fs.NewListDirStream(ents), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.entry.Type() != layertree.ModeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(n.entry.Target), 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	ref := n.lowers[0]
	f, err := n.u.layers[ref.idx].Open(ctx, ref.path)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	// Layer files never change: the kernel keeps their pages across opens.
	return &file{f: f}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	xs, errno := n.xattrs(ctx)
	if errno != 0 {
		return 0, errno
	}
	v, ok := xs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	xs, errno := n.xattrs(ctx)
	if errno != 0 {
		return 0, errno
	}
	names := make([]string, 0, len(xs))
	for k := range xs {
		names = append(names, k)
	}
	sort.Strings(names)
	var b []byte
	for _, k := range names {
		b = append(append(b, k...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), 0
}

func (n *node) xattrs(ctx context.Context) (map[string][]byte, syscall.Errno) {
	ref := n.lowers[0]
	xs, err := n.u.layers[ref.idx].Xattrs(ctx, ref.path)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return xs, 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	for _, l := range n.u.layers {
		if d, ok := l.(interface{ Root() string }); ok {
			var st syscall.Statfs_t
			if err := syscall.Statfs(d.Root(), &st); err == nil {
				out.FromStatfsT(&st)
				return 0
			}
		}
	}
	out.Bsize, out.NameLen = 4096, 255
	return 0
}

// file is an open layer file.
type file struct {
	f layertree.File
}

var (
	_ fs.FileReader          = (*file)(nil)
	_ fs.FileReleaser        = (*file)(nil)
	_ fs.FilePassthroughFder = (*file)(nil)
)

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.f.ReadAt(dest, off)
	if err != nil && !isEOF(err) {
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
