// Package fsutil holds the file primitives every store of strata uses: atomic
// writes and flock(2) locks.
package fsutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// WriteFileAtomic writes data to path through a synced temp file and a
// rename, so a reader or a crash sees the old content or the new, never a
// mix.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomic(path, data, perm, true)
}

// ReplaceFile writes data to path through a temp file and a rename, so a
// reader sees the old content or the new, never a mix; it does not wait
// for the disk, so after a crash the file may hold either, or be empty.
// For records that a crash makes stale anyway.
func ReplaceFile(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomic(path, data, perm, false)
}

func writeFileAtomic(path string, data []byte, perm os.FileMode, durable bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("sync %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if !durable {
		ok = true
		return replaceWith(tmp, path)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return SyncDir(dir)
}

// replaceWith puts the file tmp at path, and removes it from tmp.
//
// Over an existing file the names are exchanged and the old file removed:
// a rename over a file makes ext4 (auto_da_alloc) allocate the new file's
// blocks at once and start writing them out, as a crash guard for files
// replaced without a sync, and removing the file later then frees blocks
// (each a discard, on a disk mounted with discard). Files replaced here
// are not synced on purpose; a container's state, replaced at every start
// and exit and removed with it, would cost 0.1–0.3 ms more each time.
func replaceWith(tmp, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
	if err == nil {
		os.Remove(tmp) // now the old file
		return nil
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// SyncDir makes a directory's entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// FileLock is an exclusive flock(2) on a lock file. The kernel drops it when
// the process dies, so a kill -9 never leaves the store locked.
type FileLock struct{ f *os.File }

// Lock takes an exclusive lock on path, waiting until ctx is done.
func Lock(ctx context.Context, path string) (*FileLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &FileLock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// TryLock takes the lock only if it is free.
func TryLock(path string) (*FileLock, bool) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, false
	}
	return tryFlock(f, unix.LOCK_EX)
}

// TryLockDir takes the lock of a directory itself (flock on the
// directory), exclusive or shared, only if it can at once: no lock file
// to make and remove.
func TryLockDir(dir string, shared bool) (*FileLock, bool) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	return tryFlock(f, how)
}

// LockDirWithin takes a directory's exclusive lock as TryLockDir does,
// trying again while others hold it for a moment (shared holders passing
// through), until d has passed or hopeless says it is no use.
func LockDirWithin(dir string, d time.Duration, hopeless func() bool) (*FileLock, bool) {
	for deadline := time.Now().Add(d); ; {
		if l, ok := TryLockDir(dir, false); ok {
			return l, true
		}
		if hopeless() || time.Now().After(deadline) {
			return nil, false
		}
		time.Sleep(time.Millisecond)
	}
}

// tryFlock takes the flock how on f without waiting, or closes f.
func tryFlock(f *os.File, how int) (*FileLock, bool) {
	if unix.Flock(int(f.Fd()), how|unix.LOCK_NB) != nil {
		f.Close()
		return nil, false
	}
	return &FileLock{f: f}, true
}

func (l *FileLock) Unlock() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// DirSize sums the apparent sizes of the regular files under dir.
func DirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// NamesAt lists the directory dirfd refers to (an O_PATH descriptor
// will do: it is opened again for reading), without . and ..
func NamesAt(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(fd), ".")
	defer d.Close()
	return d.Readdirnames(-1)
}

// Fsmount makes a mount of fstype, configured by params in order (a key
// with an empty value is a flag, but "source"), attached nowhere (fsopen,
// fsconfig, fsmount: Linux 5.2), with the mount attributes attrs. It goes
// with its descriptor.
func Fsmount(fstype string, params [][2]string, attrs int) (int, error) {
	fsfd, err := unix.Fsopen(fstype, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen %s: %w", fstype, err)
	}
	defer unix.Close(fsfd)
	for _, p := range params {
		var err error
		if p[1] == "" && p[0] != "source" {
			err = unix.FsconfigSetFlag(fsfd, p[0])
		} else {
			err = unix.FsconfigSetString(fsfd, p[0], p[1])
		}
		if err != nil {
			return -1, fmt.Errorf("fsconfig %s: %w", p[0], err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, fmt.Errorf("fsconfig create: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return -1, fmt.Errorf("fsmount: %w", err)
	}
	return mfd, nil
}
