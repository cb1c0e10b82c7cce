package runtime

import (
	"fmt"
	"os"
	"path/filepath"

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

// readOnlyInit makes the init binary executable at path through a
// read-only bind mount; release detaches the mount and removes path.
//
// Whatever strata runs inside a container (its init, the helper of exec)
// is executed from such a mount, never from the binary's own path: a
// process in the container can reach the executable of any process it
// sees through /proc/PID/exe, and could otherwise write into the host's
// strata binaries (CVE-2019-5736). Through the read-only mount, which the
// process keeps alive once detached and which no container can remount,
// every write fails with EROFS. runc protects itself the same way; a
// sealed in-memory copy, the other known way, costs copying the binary
// on every start.
func readOnlyInit(path string) (release func(), err error) {
	detach(path) // left by a strata killed at this point
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_CLOEXEC, 0o500)
	if err != nil {
		return nil, fmt.Errorf("read-only init binary: %w", err)
	}
	f.Close()
	release = func() { detach(path) }
	if err := unix.Mount(initBinary(), path, "", unix.MS_BIND, ""); err != nil {
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
