package fusefs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The union kills the set-user-ID and set-group-ID bits itself
// (FUSE_HANDLE_KILLPRIV_V2): on a truncate, a write or an fallocate by a
// caller without CAP_FSETID, as the kernel would on a local file system;
// a chown of an upper file kills them as it does there. The kernel then marks
// files without them or file capabilities as such (S_NOSEC) and stops
// asking for security.capability before every write(2): a round trip
// each, which made small writes nine times slower.
//
// Writes through passthrough never reach the union, so a file with
// set-ID bits is opened for writing without it (upperFile.setID).

// killPriv passes WRITE requests on, noting those whose caller lacks
// CAP_FSETID (FUSE_WRITE_KILL_SUIDGID), which go-fuse does not hand to
// the file: by the request's cancel channel, which its context carries.
type killPriv struct {
	fuse.RawFileSystem
	killing *sync.Map // request's cancel channel → true
}

func (k killPriv) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	defer k.note(cancel, in)()
	return k.RawFileSystem.Write(cancel, in, data)
}

func (k killPriv) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	defer k.note(cancel, in)()
	return k.RawFileSystem.Writev(cancel, in, data)
}

// Open notes an open with O_TRUNC by a caller without CAP_FSETID
// (FUSE_OPEN_KILL_SUIDGID; the kernel passes O_TRUNC to the open itself,
// FUSE_ATOMIC_O_TRUNC).
func (k killPriv) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Mode&fuse.OPEN_KILL_SUIDGID != 0 {
		k.killing.Store(cancel, true)
		defer k.killing.Delete(cancel)
	}
	return k.RawFileSystem.Open(cancel, in, out)
}

func (k killPriv) note(cancel <-chan struct{}, in *fuse.WriteIn) (forget func()) {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID == 0 {
		return func() {}
	}
	k.killing.Store(cancel, true)
	return func() { k.killing.Delete(cancel) }
}

// mustKillPriv tells whether the write or truncating open ctx serves
// comes from a caller without CAP_FSETID.
func (u *Union) mustKillPriv(ctx context.Context) bool {
	c, ok := ctx.(*fuse.Context)
	if !ok {
		return false
	}
	_, kill := u.killing.Load(c.Cancel)
	return kill
}

// killSetID clears the set-user-ID bit of the open file, and its
// set-group-ID bit where it is group-executable or the caller is not of
// its group, as the kernel does on write and truncate. A WRITE or
// FALLOCATE reply carries no attributes, and the kernel drops only its
// size and times on one: it is told the mode changed, or a stat asking for
// the mode alone (statx STATX_MODE, as stat(1) -c %A does) would show the
// bits still set.
func (f *upperFile) killSetID(ctx context.Context) syscall.Errno {
	_, errno := killSetIDOf(ctx, f.inode, f.fd)
	return errno
}

// killSetIDOf kills the set-ID bits of fd, open on inode's file (nil for
// a descriptor borrowed), as killSetID does, telling the kernel when it
// had any; it says whether it had.
func killSetIDOf(ctx context.Context, inode *fs.Inode, fd int) (bool, syscall.Errno) {
	killed, errno := killSetIDAt(ctx, fdPath(fd), true)
	if killed && inode != nil {
		inode.NotifyContent(-1, 0) // attributes only
	}
	return killed, errno
}

// killSetIDAt kills the set-ID bits of the file at p (follow: through a
// magic link) as killSetID does, and says whether it had any.
func killSetIDAt(ctx context.Context, p string, follow bool) (bool, syscall.Errno) {
	var st unix.Stat_t
	stat := unix.Lstat
	if follow {
		stat = unix.Stat
	}
	if err := stat(p, &st); err != nil {
		return false, fs.ToErrno(err)
	}
	_, gid := caller(ctx)
	if mode, ok := withoutSetID(st.Mode, st.Gid != gid); ok {
		return true, fs.ToErrno(unix.Chmod(p, mode&0o7777))
	}
	return false, 0
}

// withoutSetID is mode without the privileges a write or truncate kills,
// and whether it had any: set-user-ID, and set-group-ID where the group
// may execute or (outsider) the writer is not of the file's group (Linux
// 6.2 and later; the request names only the writer's own group).
func withoutSetID(mode uint32, outsider bool) (uint32, bool) {
	if mode&unix.S_IFMT != unix.S_IFREG {
		return mode, false
	}
	kill := mode & unix.S_ISUID
	if mode&unix.S_ISGID != 0 && (mode&unix.S_IXGRP != 0 || outsider) {
		kill |= unix.S_ISGID
	}
	return mode &^ kill, kill != 0
}
