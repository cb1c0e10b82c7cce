package fusefs

import (
	"fmt"
	"os"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions are the mount's settings.
type MountOptions struct {
	// FsName shows in /proc/mounts as the source.
	FsName string
	Debug  bool
}

// Mount serves u at dir and returns once the mount is live: shared with
// every user (allow_other) with the kernel checking permissions
// (default_permissions), as a container rootfs needs; read-only when the
// union has no upper directory.
func Mount(dir string, u *Union, o MountOptions) (*fuse.Server, error) {
	if o.FsName == "" {
		o.FsName = "strata"
	}
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:        o.FsName,
			Name:          "strata",
			AllowOther:    os.Geteuid() == 0,
			Options:       mountFlags(u),
			DirectMount:   true,
			MaxReadAhead:  1 << 20,
			Debug:         o.Debug,
			DisableXAttrs: false,
			// Locks go to strata, which takes them on the file it holds
			// open: POSIX locks of one process through two opens conflict
			// as they do on a local filesystem.
			EnableLocks: true,
		},
		EntryTimeout:    &u.timeout,
		AttrTimeout:     &u.timeout,
		NegativeTimeout: &u.timeout,
		UID:             0,
		GID:             0,
	}
	srv, err := fs.Mount(dir, u.Root(), opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	return srv, nil
}

func mountFlags(u *Union) []string {
	if u.readOnly() {
		return []string{"default_permissions", "ro"}
	}
	return []string{"default_permissions"}
}
