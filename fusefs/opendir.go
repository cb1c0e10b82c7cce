package fusefs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// withoutOpendir serves directories without OPENDIR and RELEASEDIR
// requests. Answering the first OPENDIR with ENOSYS tells the kernel
// (zero-message opendir, Linux 5.1+) to open directories by itself from
// then on, keeping their listings in its cache as FOPEN_CACHE_DIR would:
// a tree walk costs one round trip less per directory, and no release.
//
// READDIR(PLUS) then arrives without a handle. An in-process stream,
// opened through the node's own OpendirHandle, serves it; it is kept
// between the requests of one listing (they come at increasing offsets)
// and dropped at its end. Any request can be served by a fresh stream
// seeked to its offset, so the cache is only a shortcut.
type withoutOpendir struct {
	fuse.RawFileSystem
	server *fuse.Server

	mu      sync.Mutex
	streams map[uint64]uint64 // node ID → handle of an open stream
}

func newWithoutOpendir(raw fuse.RawFileSystem) *withoutOpendir {
	return &withoutOpendir{RawFileSystem: raw, streams: map[uint64]uint64{}}
}

func (w *withoutOpendir) Init(s *fuse.Server) {
	w.server = s
	w.RawFileSystem.Init(s)
}

// OpenDir answers ENOSYS where the kernel says it opens directories
// without the server (FUSE_NO_OPENDIR_SUPPORT); an older kernel would
// fail the opendir(2) instead, and gets a real handle.
func (w *withoutOpendir) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if w.server.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT == 0 {
		return w.RawFileSystem.OpenDir(cancel, in, out)
	}
	return fuse.ENOSYS
}

func (w *withoutOpendir) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.readDir(cancel, in, out, w.RawFileSystem.ReadDir)
}

func (w *withoutOpendir) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.readDir(cancel, in, out, w.RawFileSystem.ReadDirPlus)
}

type readDirFunc func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status

func (w *withoutOpendir) readDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, read readDirFunc) fuse.Status {
	if in.Fh != 0 {
		return read(cancel, in, out) // a handle OpenDir gave (older kernels)
	}
	fh, ok := w.take(in.NodeId, in.Offset)
	if !ok {
		open := fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}
		var opened fuse.OpenOut
		if st := w.RawFileSystem.OpenDir(cancel, &open, &opened); st != fuse.OK {
			return st
		}
		fh = opened.Fh
	}
	at := *in
	at.Fh = fh
	st := read(cancel, &at, out)
	if st != fuse.OK || out.Offset == in.Offset {
		// An error, or the end of the listing (nothing added).
		w.release(in.InHeader, fh)
		return st
	}
	w.keep(in.InHeader, fh)
	return st
}

// take hands out the stream kept for the node, if any. A listing that
// starts over (offset 0) gets a fresh one, so it sees the directory as
// it is now.
func (w *withoutOpendir) take(node, offset uint64) (uint64, bool) {
	fh, ok := w.pop(node)
	if ok && offset == 0 {
		w.release(fuse.InHeader{NodeId: node}, fh)
		return 0, false
	}
	return fh, ok
}

// keep stores the stream for the listing's next request; a stream it
// replaces (two listings of one directory at once) is released.
func (w *withoutOpendir) keep(h fuse.InHeader, fh uint64) {
	w.mu.Lock()
	old, had := w.streams[h.NodeId]
	w.streams[h.NodeId] = fh
	w.mu.Unlock()
	if had {
		w.release(h, old)
	}
}

// Forget drops the node's kept stream first: go-fuse drops a node the
// kernel forgets, open handles or not, as the kernel has none open.
func (w *withoutOpendir) Forget(node, nlookup uint64) {
	if fh, ok := w.pop(node); ok {
		w.release(fuse.InHeader{NodeId: node}, fh)
	}
	w.RawFileSystem.Forget(node, nlookup)
}

// pop removes the stream kept for the node, if any, and returns it.
func (w *withoutOpendir) pop(node uint64) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fh, ok := w.streams[node]
	delete(w.streams, node)
	return fh, ok
}

func (w *withoutOpendir) release(h fuse.InHeader, fh uint64) {
	w.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: h, Fh: fh})
}
