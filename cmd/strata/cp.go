package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/fsutil"
	"github.com/stratafs/strata/lazypull"
	"github.com/stratafs/strata/runtime"
)

// cpVerb is docker cp: files and trees between a container and the host.
// Paths in the container are resolved inside its root (openat2
// RESOLVE_IN_ROOT), so a symlink in the container never leads out of it:
// a running one's root is /proc/PID/root, with its volumes and binds as
// it sees them; a stopped one's its container layer over its image,
// stacked read-only by the kernel overlayfs (copies out only).
func cpVerb() *verb {
	return &verb{name: "cp", args: "CONTAINER:SRC DEST | SRC CONTAINER:DEST", summary: "Copy files and directories between a container and the host", minArgs: 2, maxArgs: 2,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				src, dst := args[0], args[1]
				srcC, srcPath, srcIn := containerPath(src)
				dstC, dstPath, dstIn := containerPath(dst)
				if srcIn == dstIn {
					return &usageError{msg: "one of the paths must be CONTAINER:PATH, the other a host path"}
				}
				name, inPath := srcC, srcPath
				if dstIn {
					name, inPath = dstC, dstPath
				}
				if !path.IsAbs(inPath) {
					inPath = "/" + inPath // relative to the container's root, as docker's
				}
				cs, c, err := a.containerArg(name)
				if err != nil {
					return err
				}
				st, err := cs.State(c.ID)
				if err != nil {
					return err
				}
				var root int
				if st.Status == runtime.StatusRunning || st.Status == runtime.StatusPaused {
					if root, err = unix.Open(fmt.Sprintf("/proc/%d/root", st.Pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
						return fmt.Errorf("container %s: %w", name, err)
					}
					defer unix.Close(root)
				} else {
					if dstIn {
						return fmt.Errorf("container %s is not running: strata cp copies into a running container only (start it first)", name)
					}
					r, release, err := a.stoppedRoot(c, cs.Dir(c.ID))
					if err != nil {
						return err
					}
					defer release()
					root = r
				}
				if srcIn {
					return copyOut(root, inPath, dst, strings.HasSuffix(srcPath, "/."))
				}
				return copyIn(root, src, inPath, strings.HasSuffix(src, "/."))
			}
		}}
}

// stoppedRoot is the root filesystem of a container that is not running,
// read-only: its container layer over its image's layers, stacked by the
// kernel overlayfs (strata's layers and container layers are in its
// format) into a mount attached nowhere (fsopen, fsmount), which goes
// with its descriptor, or with the process. Not FUSE served by this
// process: a read of it by the same process, killed, would never end.
// The container's volumes are not in it.
func (a *app) stoppedRoot(c *runtime.Container, dir string) (root int, release func(), err error) {
	s, err := a.Store()
	if err != nil {
		return -1, nil, err
	}
	rec, err := s.Lookup(c.ImageID)
	if err != nil {
		return -1, nil, err
	}
	layers, err := s.LocalLayers(rec)
	if errors.Is(err, lazypull.ErrLazyLayer) {
		return -1, nil, fmt.Errorf("the image of a stopped container has a lazy layer: strata cp reads such a container while it runs (start it)")
	}
	if err != nil {
		return -1, nil, err
	}
	var lowers []string // top first
	if _, err := os.Stat(filepath.Join(dir, "upper")); err == nil {
		lowers = append(lowers, filepath.Join(dir, "upper"))
	}
	for _, l := range layers {
		p, err := s.LayerTree(l.DiffID)
		if err != nil {
			return -1, nil, err
		}
		lowers = append(lowers, p)
	}
	if len(lowers) == 1 {
		// overlayfs stacks two layers at least: an empty one under.
		empty, err := os.MkdirTemp("", "strata-cp-")
		if err != nil {
			return -1, nil, err
		}
		defer os.Remove(empty) // the mount holds it
		lowers = append(lowers, empty)
	}
	// redirect_dir (Linux 4.10) follows the redirects of directories
	// renamed in a container layer.
	const attrs = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	var params [][2]string
	for _, l := range lowers {
		params = append(params, [2]string{"lowerdir+", l})
	}
	mfd, err := fsutil.Fsmount("overlay", append(params, [2]string{"redirect_dir", "follow"}), attrs)
	if err != nil { // before Linux 6.8: one option, within a page
		mfd, err = fsutil.Fsmount("overlay", [][2]string{{"lowerdir", strings.Join(lowers, ":")}, {"redirect_dir", "follow"}}, attrs)
	}
	if err != nil {
		return -1, nil, fmt.Errorf("overlayfs for a stopped container's files: %w", err)
	}
	return mfd, func() { unix.Close(mfd) }, nil
}

// containerPath splits CONTAINER:PATH; a host path has no colon before
// its first slash.
func containerPath(arg string) (container, p string, ok bool) {
	c, p, found := strings.Cut(arg, ":")
	if !found || c == "" || strings.Contains(c, "/") {
		return "", arg, false
	}
	return c, p, true
}

// openInRoot opens p inside the root root with flags.
func openInRoot(root int, p string, flags uint64) (int, error) {
	return unix.Openat2(root, p, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
}

// copyOut copies the container's src to the host's dst, by docker cp's
// rules: into dst when it is a directory (src's contents only when src
// ends in "/."), else as dst.
func copyOut(root int, src, dst string, contents bool) error {
	fd, err := openInRoot(root, src, unix.O_PATH|unix.O_NOFOLLOW)
	if err != nil {
		return fmt.Errorf("%s in the container: %w", src, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() && !contents {
		dst = filepath.Join(dst, path.Base(src))
	} else if err == nil && !fi.IsDir() && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("cannot copy the directory %s over the file %s", src, dst)
	}
	return copyOutAt(fd, &st, dst)
}

// copyOutAt copies what the O_PATH descriptor fd (st) is to dst on the host.
func copyOutAt(fd int, st *unix.Stat_t, dst string) error {
	mode := os.FileMode(st.Mode & 0o7777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		names, err := fsutil.NamesAt(fd)
		if err != nil {
			return err
		}
		for _, n := range names {
			child, err := unix.Openat(fd, n, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			var cst unix.Stat_t
			err = unix.Fstat(child, &cst)
			if err == nil {
				err = copyOutAt(child, &cst, filepath.Join(dst, n))
			}
			unix.Close(child)
			if err != nil {
				return err
			}
		}
		if err := os.Chmod(dst, mode); err != nil {
			return err
		}
	case unix.S_IFREG:
		in, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		r := os.NewFile(uintptr(in), dst)
		defer r.Close()
		w, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, r); err != nil {
			w.Close()
			return err
		}
		if err := w.Chmod(mode); err != nil {
			w.Close()
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	case unix.S_IFLNK:
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return err
		}
		os.Remove(dst)
		if err := os.Symlink(string(buf[:n]), dst); err != nil {
			return err
		}
		return nil // a link's times are its target's to keep
	default:
		return nil // devices, fifos and sockets are not copied
	}
	mtime := time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	return os.Chtimes(dst, mtime, mtime)
}

// copyIn copies the host's src into the container at dst, by docker
// cp's rules, owned by root as docker makes them.
func copyIn(root int, src, dst string, contents bool) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	target, err := openInRoot(root, dst, unix.O_PATH)
	switch {
	case err == nil:
		var st unix.Stat_t
		unix.Fstat(target, &st)
		unix.Close(target)
		if st.Mode&unix.S_IFMT == unix.S_IFDIR && !contents {
			dst = path.Join(dst, filepath.Base(src))
		} else if st.Mode&unix.S_IFMT != unix.S_IFDIR && fi.IsDir() {
			return fmt.Errorf("cannot copy the directory %s over the file %s in the container", src, dst)
		}
	case errors.Is(err, unix.ENOENT):
	default:
		return fmt.Errorf("%s in the container: %w", dst, err)
	}
	parent, err := openInRoot(root, path.Dir(dst), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("%s in the container: %w", path.Dir(dst), err)
	}
	defer unix.Close(parent)
	return copyInAt(parent, path.Base(dst), src, fi)
}

// copyInAt makes name in the directory parent (an O_PATH descriptor in
// the container) a copy of the host's src.
func copyInAt(parent int, name, src string, fi os.FileInfo) error {
	mode := fi.Sys().(*syscall.Stat_t).Mode & 0o7777
	switch {
	case fi.IsDir():
		if err := unix.Mkdirat(parent, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return &os.PathError{Op: "mkdir", Path: name, Err: err}
		}
		dir, err := unix.Openat(parent, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: name, Err: err}
		}
		defer unix.Close(dir)
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			cfi, err := e.Info()
			if err != nil {
				return err
			}
			if err := copyInAt(dir, e.Name(), filepath.Join(src, e.Name()), cfi); err != nil {
				return err
			}
		}
		if err := unix.Fchmodat(dir, "", mode, unix.AT_EMPTY_PATH); err != nil {
			// Older kernels: through the descriptor's path.
			if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", dir), mode); err != nil {
				return err
			}
		}
	case fi.Mode().IsRegular():
		r, err := os.Open(src)
		if err != nil {
			return err
		}
		defer r.Close()
		unix.Unlinkat(parent, name, 0) // replaced, as docker replaces it, never written through a link
		out, err := unix.Openat(parent, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return &os.PathError{Op: "create", Path: name, Err: err}
		}
		w := os.NewFile(uintptr(out), name)
		if _, err := io.Copy(w, r); err != nil {
			w.Close()
			return err
		}
		if err := unix.Fchmod(out, mode); err != nil {
			w.Close()
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		unix.Unlinkat(parent, name, 0)
		if err := unix.Symlinkat(target, parent, name); err != nil {
			return &os.PathError{Op: "symlink", Path: name, Err: err}
		}
		return nil
	default:
		return nil
	}
	mt := unix.NsecToTimespec(fi.ModTime().UnixNano())
	return unix.UtimesNanoAt(parent, name, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW)
}
