package fusefs

import "github.com/hanwen/go-fuse/v2/fuse"

// nameOrder ends each change of names once go-fuse has recorded it: the
// union's Mkdir, Create, Link, Unlink, Rmdir, Rename and the like keep
// the union's write lock when they return (lockNames), and go-fuse moves
// its nodes only after that; releasing the lock here keeps lookups,
// opens and stats, which take it for reading, from falling in between.
type nameOrder struct {
	fuse.RawFileSystem
	u *Union
}

func (o *nameOrder) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Mknod(cancel, in, name, out)
}

func (o *nameOrder) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (o *nameOrder) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Unlink(cancel, h, name)
}

func (o *nameOrder) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Rmdir(cancel, h, name)
}

func (o *nameOrder) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (o *nameOrder) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Link(cancel, in, name, out)
}

func (o *nameOrder) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (o *nameOrder) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	defer o.u.releaseNames(cancel)
	return o.RawFileSystem.Create(cancel, in, name, out)
}
