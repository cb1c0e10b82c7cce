package fusefs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/layertree"
)

// Options configure a Union.
type Options struct {
	// Layers are the read-only layers, top first.
	Layers []layertree.Tree
	// UpperDir receives every change; WorkDir, on the same filesystem,
	// holds copy-ups until they are complete. Both empty: read-only.
	UpperDir, WorkDir string
	// Timeout is how long the kernel may cache entries and attributes of
	// what lies in the layers, which never change (default an hour).
	Timeout time.Duration
	// NoSync skips the syncs that make a copy-up durable before it is
	// published (fuse-overlayfs's fsync=0): faster, and after a crash a
	// copied-up file may be empty.
	NoSync bool
	// OnOpen, when set, is told the path of every file of the layers
	// opened for reading, in order: the access log `strata convert
	// --optimize` orders layers by.
	OnOpen func(path string)
	Logger *slog.Logger
}

// Union is the merged view of a stack of layers under an upper directory.
type Union struct {
	layers  []layertree.Tree
	timeout time.Duration
	log     *slog.Logger
	root    *node
	pre     *prefetcher

	upper    *layertree.Dir // nil: read-only
	upperDir string
	workDir  string
	format   upperFormat
	noSync   bool
	onOpen   func(string)

	// mu guards every child record and merged listing. wmu serialises
	// changes, which touch the upper directory and several records;
	// what reads the upper by path (lookup, getattr, open) holds it for
	// reading, so it never sees a name half-way through a rename.
	mu  sync.Mutex
	wmu sync.RWMutex
	// stageMu serialises stageData; staged holds, per record, the data
	// staged for its coming copy-up (guarded by mu).
	stageMu sync.Mutex
	staged  map[*child]string
	// namesHeldFor is the request (by its cancel channel) whose change
	// of names holds wmu until go-fuse has recorded it (lockNames).
	namesMu      sync.Mutex
	namesHeldFor <-chan struct{}
	// renames counts the renames begun (under wmu): a merge made
	// without wmu is kept only if none began meanwhile (listing).
	renames atomic.Uint64
	// links shares one record among the names of a hardlinked file, by
	// inode number, so a change through one name shows through all.
	links map[uint64]*child
	// layerLinks caches, per layer, the paths of each hardlinked inode.
	layerLinks map[int]map[uint64][]string
	// nextIno and inoLimit hand out inode numbers for new entries (see
	// allocIno); guarded by wmu.
	nextIno, inoLimit uint64
	// killing holds the WRITE requests that must kill set-ID bits (see
	// killPriv).
	killing sync.Map
}

// New builds the union of opts.Layers (and opts.UpperDir).
func New(opts Options) (*Union, error) {
	if len(opts.Layers) == 0 && opts.UpperDir == "" {
		return nil, fmt.Errorf("union: no layers")
	}
	if len(opts.Layers) > 1<<15 {
		return nil, fmt.Errorf("union: %d layers is more than %d", len(opts.Layers), 1<<15)
	}
	u := &Union{layers: opts.Layers, timeout: opts.Timeout, log: opts.Logger, noSync: opts.NoSync, onOpen: opts.OnOpen,
		links: map[uint64]*child{}, staged: map[*child]string{}, layerLinks: map[int]map[uint64][]string{}, pre: newPrefetcher(opts.Layers)}
	if u.timeout == 0 {
		u.timeout = time.Hour
	}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	if (opts.UpperDir == "") != (opts.WorkDir == "") {
		return nil, fmt.Errorf("union: upperdir and workdir go together")
	}
	if opts.UpperDir != "" {
		if err := u.openUpper(opts.UpperDir, opts.WorkDir); err != nil {
			return nil, err
		}
	}
	ctx := context.Background()
	root := &child{attrs: attrs{mode: layertree.ModeDir | 0o755, nlink: 2}}
	found := false
	if u.upper != nil {
		e, err := u.upper.Stat(ctx, "")
		if err != nil {
			return nil, err
		}
		root.attrs, root.upper, found = packAttrs(e), true, true
		root.ino = u.ino(-1, "", e)
	}
	if !(root.upper && root.attrs.opaque) {
		for i, l := range u.layers {
			e, err := l.Stat(ctx, "")
			if err != nil {
				return nil, fmt.Errorf("layer %d: %w", i, err)
			}
			root.lowers = append(root.lowers, layerRef{idx: i, path: ""})
			if root.ino == 0 {
				root.ino = u.ino(i, "", e)
			}
			if !found && !e.Implied {
				root.attrs, found = packAttrs(e), true
			}
			if e.Opaque {
				break
			}
		}
	}
	u.root = &node{u: u, c: root}
	// Every lookup and listing starts at the root, and in a stack of
	// many layers its merge is a fresh mount's longest: made now, as the
	// union is, not by the first request. (A layer that fails here fails
	// that request, with its error.)
	u.root.mergeAt(ctx, "", func(children map[string]*child, lowers []layerRef, listings []listing) {
		u.root.readAhead = func() { u.pre.queueChildren(children, lowers, listings) }
	})
	return u, nil
}

// Root is the union's root node, for fs.Mount.
func (u *Union) Root() fs.InodeEmbedder { return u.root }

// layerRef is where an entry lives in one lower layer.
type layerRef struct {
	idx  int
	path string
}

// child is what the union knows of one name: shared by the parent's
// merged listing and the node looked up for it, guarded by Union.mu.
type child struct {
	attrs  attrs      // attributes while not in the upper
	lowers []layerRef // lower layers holding it, top first
	ino    uint64
	// open are the upper files open on it, which reach it when its name
	// is gone.
	open map[*upperFile]bool
	// anonFd holds an O_TMPFILE file while it has no name (0: none).
	anonFd int32
	upper  bool // exists in the upper directory
	// inoKept: ino was recorded in the upper at copy-up and wins over
	// the lower origin's.
	inoKept bool
}

// attrs is what a record keeps of a layer's entry: a union of a large
// image holds one per name, so it is packed — no name (the listing's
// key), no redirect (which only the merge reads), the time in 12 bytes
// — and a record takes 128 bytes, not 192.
type attrs struct {
	size, blocks    int64
	mtimeSec        int64
	rdev, ino       uint64
	target          string
	mode, uid, gid  uint32
	nlink           uint32
	mtimeNsec       uint32
	opaque, implied bool
}

func packAttrs(e layertree.Entry) attrs {
	return attrs{size: e.Size, blocks: e.Blocks, mtimeSec: e.Mtime.Unix(), mtimeNsec: uint32(e.Mtime.Nanosecond()), rdev: e.Rdev, ino: e.Ino,
		target: e.Target, mode: e.Mode, uid: e.UID, gid: e.GID, nlink: e.Nlink, opaque: e.Opaque, implied: e.Implied}
}

// entry unpacks the attributes (without name or redirect).
func (a *attrs) entry() layertree.Entry {
	return layertree.Entry{Size: a.size, Blocks: a.blocks, Mtime: time.Unix(a.mtimeSec, int64(a.mtimeNsec)), Rdev: a.rdev, Ino: a.ino, Target: a.target,
		Mode: a.mode, UID: a.uid, GID: a.gid, Nlink: a.nlink, Opaque: a.opaque, Implied: a.implied}
}

func (a *attrs) typ() uint32 { return a.mode & layertree.ModeType }

// mergedDir: a directory whose entries come from more than one layer
// (the upper and a lower, or several lowers). Its link count is 1, as
// the kernel overlayfs reports it: counting its subdirectories would mean
// merging it, and 1 tells find and others not to count on it.
func (c *child) mergedDir() bool {
	return c.attrs.typ() == layertree.ModeDir && (len(c.lowers) > 1 || c.upper && len(c.lowers) > 0)
}

// node is one file of the union.
type node struct {
	fs.Inode
	u *Union
	c *child

	merged   bool
	children map[string]*child // merged directory, computed once
	// looked are the records of names looked up one by one before the
	// directory was merged (lookupOne); merge adopts them. lookups counts
	// those lookups, of names found or not.
	looked  map[string]*child
	lookups int
	// readAhead, set on the root when New merged it, queues its
	// subdirectories to be read ahead, which its first listing does.
	readAhead func()
}

// ino is stable across mounts of the same stack: the layer's own inode
// number with the layer's index in the high bits, as overlayfs's xino.
// The upper layer is index -1 (high bits zero).
func (u *Union) ino(idx int, path string, e layertree.Entry) uint64 {
	const low = 1<<48 - 1
	if e.Ino != 0 {
		return uint64(idx+1)<<48 | e.Ino&low
	}
	// Trees without inode numbers (in memory): a hash of the path.
	return uint64(idx+1)<<48 | fnv1a(path)&low
}

// fnv1a is the 64-bit FNV-1a hash of s.
func fnv1a(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// path is the node's path in the union, "" for the root.
// A node whose name is gone (unlinked, replaced) gets a path that names
// nothing, so no operation on it reaches another file.
func (n *node) path() string {
	if n.IsRoot() {
		return ""
	}
	return n.Path(n.Root())
}

// upperPath is where the node lives, or would live, in the upper, as one
// syscall can take it (see layertree.Dir.Path).
func (n *node) upperPath() string { return n.u.upperAt(n.path()) }

// upperChild is where the node's entry name lives, or would live, in the
// upper.
func (n *node) upperChild(name string) string {
	p := n.path()
	if p == "" {
		return n.u.upperAt(name)
	}
	return n.u.upperAt(p + "/" + name)
}

// lockNames starts a change of names (a create, link, unlink, rmdir or
// rename), for the request of ctx. wmu stays held past the union's part,
// until go-fuse has recorded the change in its tree of nodes too
// (nameOrder calls releaseNames): the paths the union finds its nodes at
// come from that tree, and a lookup, open or stat in between would reach,
// by a node's old path, whatever is there now — a whiteout (ENXIO), a
// file of another kind, another file.
func (u *Union) lockNames(ctx context.Context) {
	u.wmu.Lock()
	if fc, ok := ctx.(*fuse.Context); ok && fc.Cancel != nil {
		u.namesMu.Lock()
		u.namesHeldFor = fc.Cancel
		u.namesMu.Unlock()
	}
}

// unlockNames ends the union's part of a change of names: wmu is left to
// releaseNames when the request came through nameOrder, else released.
func (u *Union) unlockNames(ctx context.Context) {
	if fc, ok := ctx.(*fuse.Context); ok && fc.Cancel != nil {
		u.namesMu.Lock()
		held := u.namesHeldFor == fc.Cancel
		u.namesMu.Unlock()
		if held {
			return
		}
	}
	u.unlockWrite()
}

// releaseNames ends the change of names of the request whose cancel
// channel is cancel, if it holds one.
func (u *Union) releaseNames(cancel <-chan struct{}) {
	u.namesMu.Lock()
	held := cancel != nil && u.namesHeldFor == cancel
	if held {
		u.namesHeldFor = nil
	}
	u.namesMu.Unlock()
	if held {
		u.unlockWrite()
	}
}

// unlockWrite ends a change. The upper's descriptors of deep directories
// are dropped first, while no one holds a path through them: the change
// may have renamed or removed those directories.
func (u *Union) unlockWrite() {
	if u.upper != nil {
		u.upper.Forget()
	}
	u.wmu.Unlock()
}

func (u *Union) upperAt(path string) string {
	if u.upper == nil {
		return filepath.Join(u.upperDir, path)
	}
	return u.upper.Path(path)
}

func (u *Union) tree(idx int) layertree.Tree { return u.layers[idx] }

// snapshot copies a child record under the lock.
func (u *Union) snapshot(c *child) child {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := *c
	s.lowers = append([]layerRef(nil), c.lowers...)
	return s
}

// merge computes the directory's listing once, top down: the first layer
// to name an entry decides what it is; whiteouts hide the name below; a
// directory's lower layers stop at an opaque one or at a non-directory.
// Records of names looked up one by one before (lookupOne) are kept, as
// nodes hold them.
func (n *node) merge(ctx context.Context) (map[string]*child, syscall.Errno) {
	return n.mergeAt(ctx, n.path(), nil)
}

// mergeAt merges as merge does the node at path (given: the root's is
// merged before the node is in the file system, in New, when it has no
// path); when this call did the merge, it calls then with the records and
// the lower listings read, before anyone else sees them.
func (n *node) mergeAt(ctx context.Context, path string, then func(map[string]*child, []layerRef, []listing)) (map[string]*child, syscall.Errno) {
	children, _, errno := n.mergeIf(ctx, path, then, nil)
	return children, errno
}

// mergeIf is mergeAt that keeps its merge only if still valid() when it
// is done (checked under mu); else it reports stale, keeping nothing.
func (n *node) mergeIf(ctx context.Context, path string, then func(map[string]*child, []layerRef, []listing), valid func() bool) (children map[string]*child, stale bool, errno syscall.Errno) {
	n.u.mu.Lock()
	if n.merged {
		m := n.children
		n.u.mu.Unlock()
		return m, false, 0
	}
	n.u.mu.Unlock()
	c := n.u.snapshot(n.c)
	var upperEnts []layertree.Entry
	if c.upper {
		var err error
		if upperEnts, err = n.u.upper.ReadDir(ctx, path); err != nil {
			return nil, false, fs.ToErrno(err)
		}
	}
	listings := n.u.readLowers(ctx, c.lowers)
	out, lowers, errno := n.u.resolve(ctx, path, c, upperEnts, listings)
	if errno != 0 {
		return nil, false, errno
	}
	n.u.mu.Lock()
	defer n.u.mu.Unlock()
	if !n.merged && valid != nil && !valid() {
		return nil, true, 0
	}
	if !n.merged {
		if then != nil {
			then(out, c.lowers, listings)
		}
		for name, lc := range n.looked {
			if _, ok := out[name]; ok {
				out[name] = lc
			}
		}
		n.children, n.merged, n.looked = out, true, nil
		if len(lowers) < len(n.c.lowers) {
			n.c.lowers = slices.Clone(lowers)
		}
	}
	return n.children, false, 0
}

// lookupOne resolves one name of a directory not merged yet, asking each
// layer for that name only (and for an OCI opaque marker beside it), with
// the rules merge applies to whole listings: a lookup in a large
// directory of a fresh union reads one entry per layer, not all of them.
func (n *node) lookupOne(ctx context.Context, name string) (*child, syscall.Errno) {
	c := n.u.snapshot(n.c)
	path := n.path()
	var upperEnts []layertree.Entry
	if c.upper {
		ents, err := statEntries(ctx, n.u.upper, path, name)
		if err != nil {
			return nil, fs.ToErrno(err)
		}
		upperEnts = ents
	}
	listings := make([]listing, len(c.lowers))
	for i, ref := range c.lowers {
		listings[i].ents, listings[i].err = statEntries(ctx, n.u.layers[ref.idx], ref.path, name)
	}
	out, _, errno := n.u.resolve(ctx, path, c, upperEnts, listings)
	if errno != 0 {
		return nil, errno
	}
	ch, ok := out[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	n.u.mu.Lock()
	defer n.u.mu.Unlock()
	switch {
	case n.merged: // merged meanwhile: its record is the one
		if mc, ok := n.children[name]; ok {
			return mc, 0
		}
		return nil, syscall.ENOENT
	case n.looked[name] != nil:
		return n.looked[name], 0
	}
	if n.looked == nil {
		n.looked = map[string]*child{}
	}
	n.looked[name] = ch
	return ch, 0
}

// statEntries is what a listing of dir in t says of name: its entry if
// any, and the OCI opaque marker if dir has one.
func statEntries(ctx context.Context, t layertree.Tree, dir, name string) ([]layertree.Entry, error) {
	var out []layertree.Entry
	e, err := t.Stat(ctx, join(dir, name))
	switch {
	case err == nil:
		out = append(out, withName(e, name))
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	if _, err := t.Stat(ctx, join(dir, layertree.OpaqueMarker)); err == nil {
		out = append(out, layertree.Entry{Name: layertree.OpaqueMarker, Opaque: true})
	}
	return out, nil
}

// resolve merges the upper listing (when the directory has an upper copy)
// and its lower listings, top first, into the directory's records; it
// also returns the lower layers that show (up to an opaque one).
func (u *Union) resolve(ctx context.Context, path string, c child, upperEnts []layertree.Entry, listings []listing) (map[string]*child, []layerRef, syscall.Errno) {
	size := len(upperEnts)
	for _, l := range listings {
		size += len(l.ents)
	}
	out := make(map[string]*child, size)
	// What the layers above say of a name: whited out or shadowed by a
	// non-directory (hidden), or a directory whose lower layers do not
	// show (closed). One map sized once: merging is per entry.
	flags := make(map[string]uint8, size)
	hidden := func(name string) bool { return flags[name]&hiddenFlag != 0 }
	closed := func(name string) bool { return flags[name]&closedFlag != 0 }
	for _, e := range upperEnts {
		if e.Name == layertree.OpaqueMarker {
			c.lowers, listings = nil, nil // nothing below shows
			continue
		}
		if e.Whiteout {
			flags[e.Name] |= hiddenFlag
			continue
		}
		ino, kept := u.upperIno(join(path, e.Name), e)
		ch := &child{attrs: packAttrs(e), upper: true, ino: ino, inoKept: kept}
		if !e.IsDir() && e.Nlink > 1 {
			ch = u.shareLink(ch)
		}
		out[e.Name] = ch
		switch {
		case !e.IsDir():
			flags[e.Name] |= hiddenFlag
		case e.Redirect != "":
			ch.lowers = u.resolveDir(ctx, 0, redirectTarget(path, e.Redirect))
			if len(ch.lowers) > 0 && !kept {
				ref := ch.lowers[0]
				if le, err := u.layers[ref.idx].Stat(ctx, ref.path); err == nil {
					ch.ino = u.ino(ref.idx, ref.path, le)
				}
			}
			flags[e.Name] |= closedFlag
		case e.Opaque:
			flags[e.Name] |= closedFlag
		}
	}
	lowers := c.lowers // the layers that show: up to an opaque one
	for i, ref := range c.lowers {
		ents, err := listings[i].ents, listings[i].err
		if err != nil {
			u.log.Warn("readdir of a layer failed", "layer", ref.idx, "path", ref.path, "err", err)
			return nil, nil, fs.ToErrno(err)
		}
		if slices.ContainsFunc(ents, func(e layertree.Entry) bool { return e.Name == layertree.OpaqueMarker }) {
			lowers = c.lowers[:i+1]
		}
		for _, e := range ents {
			if e.Name == layertree.OpaqueMarker {
				continue
			}
			if flags[e.Name] != 0 && hidden(e.Name) {
				continue
			}
			if e.Whiteout {
				// Below a whiteout nothing of the name shows: not even
				// in a directory of that name above it.
				if _, ok := out[e.Name]; ok {
					flags[e.Name] |= closedFlag
				} else {
					flags[e.Name] |= hiddenFlag
				}
				continue
			}
			cref := layerRef{idx: ref.idx, path: join(ref.path, e.Name)}
			// A directory renamed in this layer (as an upper it was) has
			// its content below at the redirect's path, not at its name.
			var redirected []layerRef
			if e.IsDir() && e.Redirect != "" && !e.Opaque {
				redirected = u.resolveDir(ctx, ref.idx+1, redirectTarget(ref.path, e.Redirect))
			}
			ch, ok := out[e.Name]
			if !ok {
				nc := &child{attrs: packAttrs(e), lowers: append([]layerRef{cref}, redirected...), ino: u.ino(ref.idx, cref.path, e)}
				if !e.IsDir() && e.Nlink > 1 {
					nc = u.shareLowerLink(nc)
				}
				out[e.Name] = nc
				if !e.IsDir() {
					flags[e.Name] |= hiddenFlag
				} else if e.Opaque || e.Redirect != "" {
					flags[e.Name] |= closedFlag
				}
				continue
			}
			if !e.IsDir() || closed(e.Name) {
				flags[e.Name] |= closedFlag
				continue
			}
			// A lower directory under an upper one merges into it, and
			// keeps the inode number of its lower origin.
			if len(ch.lowers) == 0 && !ch.inoKept {
				ch.ino = u.ino(ref.idx, cref.path, e)
			}
			ch.lowers = append(append(ch.lowers, cref), redirected...)
			if !ch.upper && ch.attrs.implied && !e.Implied {
				ch.attrs = packAttrs(e)
			}
			if e.Opaque || e.Redirect != "" {
				flags[e.Name] |= closedFlag
			}
		}
		if len(lowers) == i+1 {
			break
		}
	}
	return out, lowers, 0
}

// Flags of a name during a merge (resolve).
const (
	hiddenFlag uint8 = 1 << iota
	closedFlag
)

type listing struct {
	ents []layertree.Entry
	err  error
}

// readLowers lists a directory in each of its lower layers, several at a
// time: a directory in many layers costs one listing's latency per
// parallelReads layers, not per layer.
func (u *Union) readLowers(ctx context.Context, refs []layerRef) []listing {
	out := make([]listing, len(refs))
	todo := make([]int, 0, len(refs))
	for i, ref := range refs {
		if l, ok := u.pre.take(ctx, ref); ok {
			out[i] = l
		} else {
			todo = append(todo, i)
		}
	}
	if len(todo) <= 2 {
		for _, i := range todo {
			out[i].ents, out[i].err = u.layers[refs[i].idx].ReadDir(ctx, refs[i].path)
		}
		return out
	}
	// A few workers take the listings in turn: a goroutine per layer
	// would be 500 goroutines for a 500-layer stack.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(parallelReads, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= len(todo) {
					return
				}
				i := todo[k]
				out[i].ents, out[i].err = u.layers[refs[i].idx].ReadDir(ctx, refs[i].path)
			}
		}()
	}
	wg.Wait()
	return out
}

// parallelReads is how many lower listings a merge reads at once.
const parallelReads = 8

// shareLink returns the record of the hardlinked file c is a name of,
// registering c if it is the first name seen.
func (u *Union) shareLink(c *child) *child {
	u.mu.Lock()
	defer u.mu.Unlock()
	if existing, ok := u.links[c.ino]; ok {
		return existing
	}
	u.links[c.ino] = c
	return c
}

// shareLowerLink is shareLink for a name a lower layer shows: it joins the
// file's record unless that record is in the upper, which this name is
// not (a copy-up links every name it can reach; one it could not stays
// the lower file it was, rather than naming an upper file it has no
// entry for).
func (u *Union) shareLowerLink(c *child) *child {
	u.mu.Lock()
	defer u.mu.Unlock()
	existing, ok := u.links[c.ino]
	switch {
	case !ok:
		u.links[c.ino] = c
		return c
	case existing.upper:
		return c
	}
	return existing
}

// resolveDir finds the lower directories at path in layers from the
// index from on, top first, stopping at an opaque one or where a layer
// has something else there, and following each layer's redirect to the
// path its directory was renamed from.
func (u *Union) resolveDir(ctx context.Context, from int, path string) []layerRef {
	var out []layerRef
	for i := from; i < len(u.layers); i++ {
		e, err := u.layers[i].Stat(ctx, path)
		if err != nil {
			continue
		}
		if e.Whiteout || !e.IsDir() {
			break
		}
		out = append(out, layerRef{idx: i, path: path})
		if e.Opaque {
			break
		}
		if e.Redirect != "" {
			parent, _ := splitLast(path)
			path = redirectTarget(parent, e.Redirect)
		}
	}
	return out
}

// splitLast splits a path at its last slash: parent and name.
func splitLast(p string) (string, string) {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return "", p
}

// redirectTarget turns a redirect xattr into a lower path: absolute ones
// are from the root, others name a sibling.
func redirectTarget(parent, redirect string) string {
	if strings.HasPrefix(redirect, "/") {
		return strings.Trim(redirect, "/")
	}
	return join(parent, redirect)
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

// attr is the node's current attributes: the upper file's when it has
// one (fresh from the disk), else the layer's.
func (n *node) attr() (layertree.Entry, bool, syscall.Errno) {
	c := n.u.snapshot(n.c)
	if !c.upper {
		return c.attrs.entry(), false, 0
	}
	e, err := n.u.upper.Stat(context.Background(), n.path())
	if err != nil {
		return e, true, fs.ToErrno(err)
	}
	return e, true, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.u.wmu.RLock()
	defer n.u.wmu.RUnlock()
	return n.lookup(ctx, name, out)
}

// lookup is Lookup for callers holding wmu.
func (n *node) lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	switch validName(name) {
	case 0:
	case syscall.ENAMETOOLONG:
		return nil, syscall.ENAMETOOLONG
	default:
		return nil, syscall.ENOENT // whiteout markers never show
	}
	n.u.mu.Lock()
	merged, layers, lookups := n.merged, len(n.c.lowers), n.lookups
	c, ok := n.children[name]
	if !merged {
		c, ok = n.looked[name]
		n.lookups++
	}
	n.u.mu.Unlock()
	switch {
	case ok:
	case !merged && layers <= lookupOneLayers && lookups < lookupOneMax:
		var errno syscall.Errno
		if c, errno = n.lookupOne(ctx, name); errno != 0 {
			return nil, errno
		}
	default:
		children, errno := n.merge(ctx)
		if errno != 0 {
			return nil, errno
		}
		n.u.mu.Lock()
		c, ok = children[name]
		n.u.mu.Unlock()
		if !ok {
			return nil, syscall.ENOENT
		}
	}
	cn := &node{u: n.u, c: c}
	// Only these fields are read: no snapshot, which copies the layers
	// (a READDIRPLUS looks up every entry it lists).
	n.u.mu.Lock()
	upper, a, ino, merged := c.upper, c.attrs, c.ino, c.mergedDir()
	n.u.mu.Unlock()
	if upper {
		var st syscall.Stat_t
		if err := syscall.Lstat(n.upperChild(name), &st); err != nil {
			return nil, fs.ToErrno(err)
		}
		fillFromStat(&out.Attr, &st, ino)
	} else {
		fillAttr(&out.Attr, &a, ino)
	}
	if merged {
		out.Attr.Nlink = 1
	}
	n.u.setTimeouts(out)
	return n.NewInode(ctx, cn, fs.StableAttr{Mode: out.Attr.Mode & syscall.S_IFMT, Ino: ino}), 0
}

// A lookup in a directory not merged yet asks each layer for the one name
// (a stat each) while the directory lies in few layers and has had few
// lookups; past either, merging it once is cheaper. A container's stack is
// its image's layers and the small layer of its mount points.
const (
	lookupOneLayers = 8
	lookupOneMax    = 32
)

// setTimeouts: what lies in the layers never changes, and what lies in
// the upper changes only through strata, whose replies and the kernel's
// own invalidation on every change keep the kernel's cache right. Changes
// made to the upper directory behind strata's back are not supported, as
// with the kernel overlayfs.
func (u *Union) setTimeouts(out *fuse.EntryOut) {
	out.SetEntryTimeout(u.timeout)
	out.SetAttrTimeout(u.timeout)
}

func fillAttr(a *fuse.Attr, e *attrs, ino uint64) {
	a.Ino = ino
	a.Mode = e.mode
	a.Uid, a.Gid = e.uid, e.gid
	a.Size = uint64(e.size)
	a.Blocks = uint64(e.blocks)
	if e.blocks == 0 && e.typ() == layertree.ModeRegular {
		// The layer does not say (a lazy layer's TOC): what the file
		// takes once extracted to a file system of 4 KiB blocks.
		a.Blocks = (uint64(e.size) + 4095) / 4096 * 8
	}
	a.Blksize = 4096
	a.Nlink = max(e.nlink, 1)
	a.Rdev = uint32(e.rdev)
	sec, nsec := uint64(e.mtimeSec), e.mtimeNsec
	a.Atime, a.Mtime, a.Ctime = sec, sec, sec
	a.Atimensec, a.Mtimensec, a.Ctimensec = nsec, nsec, nsec
}

// fillFromStat reports an upper file as the disk has it, under the
// union's inode number.
func fillFromStat(a *fuse.Attr, st *syscall.Stat_t, ino uint64) {
	a.FromStat(st)
	a.Ino = ino
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if _, open := fh.(*upperFile); !open {
		n.u.wmu.RLock()
		defer n.u.wmu.RUnlock()
	}
	return n.getattr(fh, out)
}

// getattr is Getattr for callers holding wmu.
func (n *node) getattr(fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.SetTimeout(n.u.timeout)
	c := n.u.snapshot(n.c)
	if c.mergedDir() {
		defer func() { out.Nlink = 1 }()
	}
	var st syscall.Stat_t
	if f, ok := fh.(*upperFile); ok {
		// Open files stay reachable when unlinked or renamed.
		if err := syscall.Fstat(f.fd, &st); err != nil {
			return fs.ToErrno(err)
		}
		fillFromStat(&out.Attr, &st, c.ino)
		return 0
	}
	if !c.upper {
		fillAttr(&out.Attr, &c.attrs, c.ino)
		return 0
	}
	if c.anonFd != 0 {
		if err := syscall.Fstat(int(c.anonFd), &st); err != nil {
			return fs.ToErrno(err)
		}
		fillFromStat(&out.Attr, &st, c.ino)
		return 0
	}
	if err := syscall.Lstat(n.upperPath(), &st); err != nil {
		return fs.ToErrno(err)
	}
	fillFromStat(&out.Attr, &st, c.ino)
	return 0
}

// listing is the merged directory, sorted by name.
func (n *node) listing(ctx context.Context) ([]fuse.DirEntry, syscall.Errno) {
	// A directory listed is often walked into: read its subdirectories'
	// lower listings ahead (prefetcher).
	//
	// The merge reads the upper by the directory's path, without the
	// union's write lock, which a merge of a large directory would hold
	// for a second against every change and so every lookup: a rename
	// that moved the directory or one above it meanwhile (seen by the
	// count of renames) makes it merge again at the new path.
	var children map[string]*child
	for {
		n.u.wmu.RLock()
		renames, path := n.u.renames.Load(), n.path()
		n.u.wmu.RUnlock()
		var stale bool
		var errno syscall.Errno
		children, stale, errno = n.mergeIf(ctx, path, n.u.pre.queueChildren, func() bool { return n.u.renames.Load() == renames })
		if errno != 0 {
			return nil, errno
		}
		if !stale {
			break
		}
	}
	n.u.mu.Lock()
	if n.readAhead != nil {
		n.readAhead() // under the lock, as mergeAt calls then
		n.readAhead = nil
	}
	n.u.mu.Unlock()
	// "." and ".." come first, as a local file system lists them (ls -a
	// shows them; some programs count on them).
	self, parent := n.StableAttr().Ino, n.StableAttr().Ino // the root is its own parent
	if _, p := n.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	ents := make([]fuse.DirEntry, 2, len(children)+2)
	ents[0] = fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: self}
	ents[1] = fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parent}
	n.u.mu.Lock()
	for name, c := range children {
		mode := c.attrs.typ()
		ents = append(ents, fuse.DirEntry{Name: name, Mode: mode, Ino: c.ino})
	}
	n.u.mu.Unlock()
	ents[0].Off, ents[1].Off = 1, 2
	names := ents[2:]
	for i := range names {
		names[i].Off = dirCookie(names[i].Name)
	}
	sort.Slice(names, func(i, j int) bool {
		if names[i].Off != names[j].Off {
			return names[i].Off < names[j].Off
		}
		return names[i].Name < names[j].Name
	})
	for i := 1; i < len(names); i++ {
		if names[i].Off <= names[i-1].Off { // a collision: next free
			names[i].Off = names[i-1].Off + 1
		}
	}
	return ents, 0
}

// dirCookie is the offset (d_off) of a name in a listing: a hash of the
// name, not its place, as ext4 gives, so a listing that goes on from an
// offset in a newer snapshot of the directory (the kernel asks for the
// rest of a listing without saying which one it is) lists every name
// that was there all along exactly once. Listings are in cookie order.
// 3 and up: 1 and 2 are "." and "..".
func dirCookie(name string) uint64 {
	return fnv1a(name)>>2 + 3 // room above for collisions, below 2^63
}

// OpendirHandle lets the kernel cache the listing (FOPEN_CACHE_DIR): it
// drops the cache itself whenever it changes the directory, and only
// strata changes it.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	ents, errno := n.listing(ctx)
	if errno != 0 {
		return nil, 0, errno
	}
	return &dirHandle{ents: ents}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle is an open directory: its listing as it was at opendir, as
// POSIX allows.
type dirHandle struct {
	ents []fuse.DirEntry
	pos  int
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
)

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if d.pos >= len(d.ents) {
		return nil, 0
	}
	e := d.ents[d.pos]
	d.pos++
	return &e, 0
}

// Seekdir goes past the entry whose offset is off: to the first with a
// greater one, which is where that entry was if it is gone since.
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.pos = sort.Search(len(d.ents), func(i int) bool { return d.ents[i].Off > off })
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	n.u.wmu.RLock()
	defer n.u.wmu.RUnlock()
	e, _, errno := n.attr()
	if errno != 0 {
		return nil, errno
	}
	if e.Type() != layertree.ModeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(e.Target), 0
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
	n.u.wmu.RLock()
	defer n.u.wmu.RUnlock()
	c := n.u.snapshot(n.c)
	var xs map[string][]byte
	var err error
	if c.upper {
		f, p, follow := n.upperFileAt(nil)
		if f != nil {
			defer unix.Close(f.fd)
		}
		if follow {
			xs, err = layertree.XattrsOf(p)
		} else {
			xs, err = n.u.upper.Xattrs(ctx, n.path())
		}
	} else {
		xs, err = n.u.layers[c.lowers[0].idx].Xattrs(ctx, c.lowers[0].path)
	}
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return xs, 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	dirs := []string{n.u.upperDir}
	for _, l := range n.u.layers {
		if d, ok := l.(interface{ Root() string }); ok {
			dirs = append(dirs, d.Root())
		}
	}
	for _, d := range dirs {
		var st syscall.Statfs_t
		if d != "" && syscall.Statfs(d, &st) == nil {
			out.FromStatfsT(&st)
			return 0
		}
	}
	out.Bsize, out.NameLen = 4096, 255
	return 0
}

// upperIno is the inode number of an upper entry: the one it had before
// copy-up when recorded, else the upper's own.
func (u *Union) upperIno(path string, e layertree.Entry) (uint64, bool) {
	if v, err := getxattr(u.upperAt(path), u.inoKey()); err == nil && len(v) == 8 {
		return leUint64(v), true
	}
	return u.ino(-1, path, e), false
}

func leUint64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func putUint64(v uint64) []byte {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return b
}

func getxattr(path, name string) ([]byte, error) {
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}
