package fusefs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// nameOrder keeps requests that reach files by their names from falling
// between a change of names and go-fuse's record of it. go-fuse moves a
// node in its tree (and so the path the union finds it at) only after
// the union's Rename, Unlink and the like return; a request in between
// would reach by its old path what is there now: a whiteout (ENXIO), the
// file renamed over it, a directory made there. Changes of names hold the
// order exclusively for their whole request, requests that use names
// share it. Requests on open files (read, write, locks, fsync) take no
// part: they go through descriptors.
type nameOrder struct {
	fuse.RawFileSystem
	mu sync.RWMutex
}

// Changes of names.

func (o *nameOrder) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Mknod(cancel, in, name, out)
}

func (o *nameOrder) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (o *nameOrder) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Unlink(cancel, h, name)
}

func (o *nameOrder) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Rmdir(cancel, h, name)
}

func (o *nameOrder) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (o *nameOrder) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Link(cancel, in, name, out)
}

func (o *nameOrder) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (o *nameOrder) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.RawFileSystem.Create(cancel, in, name, out)
}

// Requests that reach files by name.

func (o *nameOrder) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.Lookup(cancel, h, name, out)
}

func (o *nameOrder) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.GetAttr(cancel, in, out)
}

func (o *nameOrder) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.Statx(cancel, in, out)
}

func (o *nameOrder) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.SetAttr(cancel, in, out)
}

func (o *nameOrder) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.Open(cancel, in, out)
}

func (o *nameOrder) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.Tmpfile(cancel, in, out)
}

func (o *nameOrder) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.Readlink(cancel, h)
}

func (o *nameOrder) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.Access(cancel, in)
}

func (o *nameOrder) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (o *nameOrder) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (o *nameOrder) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (o *nameOrder) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

func (o *nameOrder) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.OpenDir(cancel, in, out)
}

func (o *nameOrder) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.ReadDir(cancel, in, out)
}

func (o *nameOrder) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (o *nameOrder) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.RawFileSystem.StatFs(cancel, h, out)
}
