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
// between the requests of one listing (each starts where the last
// ended) and dropped at its end. Any request can be served by a fresh
// stream seeked to its offset, so the cache is only a shortcut.
//
// A stream is kept under the offset it stands at, and only a request
// for that offset takes it: two listings of one directory at once must
// not trade streams. go-fuse takes a request that starts inside the
// batch a stream read last for the kernel repeating an interrupted one,
// and replays that batch's tail; when the tail does not fit the reply,
// the stream goes on from past the batch and the names between are lost.
type withoutOpendir struct {
	fuse.RawFileSystem
	server *fuse.Server

	mu sync.Mutex
	// node ID → offset a stream stands at → its handle
	streams map[uint64]map[uint64]uint64
}

// maxStreamsPerNode bounds the streams kept for one directory: listings
// abandoned half-way leave theirs until the node is forgotten.
const maxStreamsPerNode = 8

func newWithoutOpendir(raw fuse.RawFileSystem) *withoutOpendir {
	return &withoutOpendir{RawFileSystem: raw, streams: map[uint64]map[uint64]uint64{}}
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
	w.keep(in.InHeader, out.Offset, fh)
	return st
}

// take hands out the stream kept for the node at offset, if any. A
// listing that starts (offset 0) gets a fresh one, so it sees the
// directory as it is now.
func (w *withoutOpendir) take(node, offset uint64) (uint64, bool) {
	if offset == 0 {
		return 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	at := w.streams[node]
	fh, ok := at[offset]
	if ok {
		delete(at, offset)
		if len(at) == 0 {
			delete(w.streams, node)
		}
	}
	return fh, ok
}

// keep stores the stream for the request at offset that goes on with its
// listing. One it replaces (two listings standing at one place), or one
// over the node's bound, is released: its listing gets a fresh stream.
func (w *withoutOpendir) keep(h fuse.InHeader, offset, fh uint64) {
	var drop []uint64
	w.mu.Lock()
	at := w.streams[h.NodeId]
	if at == nil {
		at = map[uint64]uint64{}
		w.streams[h.NodeId] = at
	}
	if old, had := at[offset]; had {
		drop = append(drop, old)
	}
	at[offset] = fh
	for off, old := range at {
		if len(at) <= maxStreamsPerNode {
			break
		}
		if off != offset {
			delete(at, off)
			drop = append(drop, old)
		}
	}
	w.mu.Unlock()
	for _, old := range drop {
		w.release(h, old)
	}
}

// Forget drops the node's kept streams first: go-fuse drops a node the
// kernel forgets, open handles or not, as the kernel has none open.
func (w *withoutOpendir) Forget(node, nlookup uint64) {
	w.mu.Lock()
	at := w.streams[node]
	delete(w.streams, node)
	w.mu.Unlock()
	for _, fh := range at {
		w.release(fuse.InHeader{NodeId: node}, fh)
	}
	w.RawFileSystem.Forget(node, nlookup)
}

func (w *withoutOpendir) release(h fuse.InHeader, fh uint64) {
	w.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: h, Fh: fh})
}
