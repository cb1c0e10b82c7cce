package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// initBinary is the program a container's init and exec's helper run:
// strata-init beside the running binary when it is there, which starts
// sooner, else this binary itself (as `strata init`).
func initBinary() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "strata-init")
		if unix.Access(p, unix.X_OK) == nil {
			return p
		}
	}
	return "/proc/self/exe"
}

// sealedBinary is the init binary as a container may see it: through a
// read-only mount.
//
// Whatever strata runs inside a container (its init, the helper of exec)
// is executed from such a mount, never from the binary's own path: a
// process in the container can reach the executable of any process it
// sees through /proc/PID/exe, and could otherwise write into the host's
// strata binaries (CVE-2019-5736). Through the read-only mount, which the
// process keeps alive and which no container can remount, every write
// fails with EROFS. runc protects itself the same way; a sealed in-memory
// copy, the other known way, costs copying the binary on every start.
type sealedBinary struct {
	// file, when set, is the binary in a detached mount (open_tree),
	// to be passed to the child and executed as /proc/self/fd/N.
	file *os.File
	// path is where the binary is mounted otherwise.
	path string
}

// sealInit makes the init binary executable from a read-only mount. The
// mount is detached (open_tree, mount_setattr: Linux 5.12) and so never
// enters the host's mount table; on older kernels it is a bind mount at
// fallback, a path in the container's directory (none given:
// errNoDetachedMount). release ends it.
func sealInit(fallback string) (b sealedBinary, release func(), err error) {
	bin := initBinary()
	f, err := detachedReadOnly(bin)
	if err == nil {
		return sealedBinary{file: f}, func() { f.Close() }, nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return sealedBinary{}, nil, fmt.Errorf("read-only init binary: %w", err)
	}
	if fallback == "" {
		return sealedBinary{}, nil, errNoDetachedMount
	}
	release, err = readOnlyBind(bin, fallback)
	return sealedBinary{path: fallback}, release, err
}

// executable is the path the child execs, where the binary is given as
// descriptor fd.
func (b sealedBinary) executable(fd int) string {
	if b.file != nil {
		return "/proc/self/fd/" + strconv.Itoa(fd)
	}
	return b.path
}

// detachedReadOnly opens path through a read-only clone of its mount
// that is attached nowhere: it lasts while the descriptor, or a process
// executing it, holds it.
func detachedReadOnly(path string) (*os.File, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open_tree %s: %w", path, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount_setattr %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// readOnlyBind makes the binary src executable at path through a
// read-only bind mount; release detaches the mount and removes path.
func readOnlyBind(src, path string) (release func(), err error) {
	detach(path) // left by a strata killed at this point
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_CLOEXEC, 0o500)
	if err != nil {
		return nil, fmt.Errorf("read-only init binary: %w", err)
	}
	f.Close()
	release = func() { detach(path) }
	if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("read-only init binary: bind mount: %w", err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
	if err := unix.Mount("", path, "", flags, ""); err != nil {
		release()
		return nil, fmt.Errorf("read-only init binary: remount: %w", err)
	}
	return release, nil
}

// detach unmounts and removes a read-only binary at path, if any.
func detach(path string) {
	unix.Unmount(path, unix.MNT_DETACH)
	os.Remove(path)
}

// detachAll removes what a strata killed while starting a process left in
// a container's directory.
func detachAll(dir string) {
	execs, _ := filepath.Glob(filepath.Join(dir, "exec-*"))
	for _, p := range append(execs, filepath.Join(dir, "init")) {
		detach(p)
	}
}
