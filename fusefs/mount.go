package fusefs

import (
	"fmt"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions are the mount's settings.
type MountOptions struct {
	// FsName shows in /proc/mounts as the source; Subtype as the type
	// after "fuse." (default "strata").
	FsName, Subtype string
	// Options are more mount options: the kernel's flags (ro, nosuid,
	// nodev, noexec, noatime, …) and FUSE's (allow_other, max_read=…).
	Options []string
	// Container mounts a container's root filesystem: set-user-ID bits
	// and device nodes work in it, as in Docker's. Otherwise the mount is
	// nosuid,nodev unless Options say suid or dev, as libfuse's are.
	Container bool
	Debug     bool
	// NoLocalClients says this process never opens files of the mount
	// through the os package. Its poller cannot wait for the FUSE POLL
	// request that registering such a file sends, and deadlocks; so by
	// default the mount is made to answer POLL with ENOSYS once, at mount
	// time (go-fuse's poll hack), which costs six round trips.
	NoLocalClients bool
}

// Mount serves u at dir and returns once the mount is live: shared with
// every user (allow_other) with the kernel checking permissions
// (default_permissions), as a container rootfs needs; read-only when the
// union has no upper directory.
func Mount(dir string, u *Union, o MountOptions) (*fuse.Server, error) {
	if o.FsName == "" {
		o.FsName = "strata"
	}
	if o.Subtype == "" {
		o.Subtype = "strata"
	}
	root := os.Geteuid() == 0
	opts := []string{"default_permissions"}
	if o.Container {
		opts = append(opts, "suid", "dev")
	}
	opts = append(opts, o.Options...)
	if u.readOnly() {
		opts = append(opts, "ro")
	}
	mo := fuse.MountOptions{
		FsName:       o.FsName,
		Name:         o.Subtype,
		AllowOther:   root,
		DirectMount:  true,
		MaxReadAhead: 1 << 20,
		Debug:        o.Debug,
		// Locks go to strata, which takes them on the file it holds
		// open: POSIX locks of one process through two opens conflict
		// as they do on a local filesystem.
		EnableLocks: true,
		// Symlinks in layers never change, and one in the upper is
		// replaced, never rewritten: the kernel may keep their targets.
		EnableSymlinkCaching: true,
	}
	if root {
		// mount(2) takes the VFS flags as bits, not as option strings.
		mo.DirectMountFlags, mo.Options = vfsFlags(opts)
	} else {
		mo.Options = opts // fusermount3 understands them all
	}
	raw := fs.NewNodeFS(u.Root(), &fs.Options{
		MountOptions:    mo,
		EntryTimeout:    &u.timeout,
		AttrTimeout:     &u.timeout,
		NegativeTimeout: &u.timeout,
	})
	srv, err := fuse.NewServer(newWithoutOpendir(raw), dir, &mo)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	go srv.Serve()
	// NewServer has mounted and answered INIT: the mount is live. What
	// WaitMount adds is the poll hack.
	if !o.NoLocalClients {
		if err := srv.WaitMount(); err != nil {
			return nil, fmt.Errorf("mount %s: %w", dir, err)
		}
	}
	return srv, nil
}

// vfsFlags turns the VFS options among opts into mount(2) flags, starting
// from nosuid,nodev as libfuse does, and returns the others. MS_SILENT is
// always set: harmless, and go-fuse reads zero flags as "use defaults".
func vfsFlags(opts []string) (uintptr, []string) {
	flags := uintptr(syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_SILENT)
	set := map[string]uintptr{
		"ro": syscall.MS_RDONLY, "nosuid": syscall.MS_NOSUID, "nodev": syscall.MS_NODEV,
		"noexec": syscall.MS_NOEXEC, "noatime": syscall.MS_NOATIME, "nodiratime": syscall.MS_NODIRATIME,
		"relatime": syscall.MS_RELATIME, "strictatime": syscall.MS_STRICTATIME,
		"sync": syscall.MS_SYNCHRONOUS, "dirsync": syscall.MS_DIRSYNC, "lazytime": 1 << 25,
	}
	clear := map[string]uintptr{
		"rw": syscall.MS_RDONLY, "suid": syscall.MS_NOSUID, "dev": syscall.MS_NODEV,
		"exec": syscall.MS_NOEXEC, "atime": syscall.MS_NOATIME, "diratime": syscall.MS_NODIRATIME,
		"norelatime": syscall.MS_RELATIME, "nostrictatime": syscall.MS_STRICTATIME,
		"async": syscall.MS_SYNCHRONOUS, "nolazytime": 1 << 25,
	}
	var rest []string
	seen := map[string]bool{}
	for _, o := range opts {
		switch {
		case set[o] != 0:
			flags |= set[o]
		case clear[o] != 0:
			flags &^= clear[o]
		case !seen[o]:
			seen[o] = true
			rest = append(rest, o)
		}
	}
	return flags, rest
}
