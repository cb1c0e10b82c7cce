package runtime

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// copyUp copies what the image has at m.Destination into the volume
// directory m.Source when that is empty: files, directories and symlinks
// with their owners, modes and times. The destination is resolved inside
// the rootfs, so an image's symlink cannot make it copy host files. Init
// does it, with the root filesystem mounted in its namespace.
//
// Containers started at once with one new volume fill it once: each
// holds the volume directory's lock (flock) while it looks and copies,
// so the others wait and then find it full, as docker's daemon does it
// once. Else the second found files the first had just copied (EEXIST)
// and its container failed.
func copyUp(rootfs string, m Mount) error {
	dir, err := os.Open(m.Source)
	if err != nil {
		return fmt.Errorf("volume %s: %w", m.Source, err)
	}
	defer dir.Close()
	if err := flockWait(int(dir.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("volume %s: lock: %w", m.Source, err)
	}
	if names, err := dir.Readdirnames(1); len(names) > 0 {
		return nil
	} else if err != nil && err != io.EOF {
		return fmt.Errorf("volume %s: %w", m.Source, err)
	}
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	fd, err := openIn(root, m.Destination)
	if errors.Is(err, unix.ENOENT) {
		return nil // nothing in the image there
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	// The trailing slash makes the walk enter the directory the magic
	// link names rather than stop at the link.
	src := fdPath(fd) + "/"
	if err := copyTree(src, m.Source); err != nil {
		return fmt.Errorf("copy image content at %s into volume: %w", m.Destination, err)
	}
	// The volume's root takes the mode and owner of the image's directory.
	os.Lchown(m.Source, int(st.Uid), int(st.Gid))
	return os.Chmod(m.Source, os.FileMode(st.Mode&0o7777))
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Clean(src), filepath.Clean(p))
		if rel == "." {
			return nil
		}
		target := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
		case unix.S_IFLNK:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case unix.S_IFREG:
			if err := copyFile(p, target); err != nil {
				return err
			}
		default:
			if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
				return err
			}
		}
		if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			if err := unix.Chmod(target, st.Mode&0o7777); err != nil {
				return err
			}
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		return unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// flockWait takes the flock how (LOCK_EX, LOCK_SH) on fd, waiting for it
// through signals (the kernel drops a flock with the process, so a
// container killed half-way holds no one up).
func flockWait(fd, how int) error {
	for {
		if err := unix.Flock(fd, how); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
