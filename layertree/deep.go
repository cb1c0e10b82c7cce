package layertree

import (
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// pathMax is the longest path one syscall takes (PATH_MAX less the NUL).
// A file deeper than that below a layer's root is reached through an
// O_PATH descriptor of its directory, as /proc/self/fd/N/name, so a
// container can make and use trees as deep as the kernel allows.
const pathMax = unix.PathMax - 1

// deepDirs caches the O_PATH descriptors of directories whose paths are
// too long for one syscall, by path below the root.
type deepDirs struct {
	mu  sync.Mutex
	fds map[string]int
}

// Path is path (below the root) as one syscall can take it: the plain
// absolute path, or, when that is longer than PATH_MAX, a path through a
// descriptor of its directory. Such a path stays right until Forget, so a
// writer that renames or removes directories calls Forget after, and
// while no one else holds a path Path returned.
func (d *Dir) Path(path string) string {
	p, err := d.at(path)
	if err != nil {
		return d.abs(path) // the syscall given it fails with ENAMETOOLONG
	}
	return p
}

// abs is the plain absolute path, for messages and short paths.
func (d *Dir) abs(path string) string {
	if path == "" {
		return d.root
	}
	return d.root + "/" + path
}

// at is Path, or why a deep path's directory can't be reached (ENOENT,
// ENOTDIR, EACCES), as the syscall would have said.
func (d *Dir) at(path string) (string, error) {
	p := d.abs(path)
	if len(p) <= pathMax {
		return p, nil
	}
	dir, name := splitPath(path)
	fd, err := d.deep.open(d.root, dir)
	if err != nil {
		return "", err
	}
	return "/proc/self/fd/" + strconv.Itoa(fd) + "/" + name, nil
}

// Forget closes the descriptors Path opened, whose directories may have
// been renamed or removed since.
func (d *Dir) Forget() {
	d.deep.mu.Lock()
	defer d.deep.mu.Unlock()
	for _, fd := range d.deep.fds {
		unix.Close(fd)
	}
	clear(d.deep.fds)
}

// open returns the cached descriptor of dir below root, opening it from
// its deepest cached ancestor (or the root) in steps one syscall takes.
func (c *deepDirs) open(root, dir string) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fd, ok := c.fds[dir]; ok {
		return fd, nil
	}
	base, rest := -1, dir
	for a, _ := splitPath(dir); a != ""; a, _ = splitPath(a) {
		if fd, ok := c.fds[a]; ok {
			base, rest = fd, dir[len(a)+1:]
			break
		}
	}
	fd, owned := base, false
	for rest != "" {
		limit := pathMax
		if fd < 0 {
			limit -= len(root) + 1
		}
		step := rest
		if len(step) > limit {
			i := lastSlashBefore(step, limit)
			if i <= 0 {
				return -1, unix.ENAMETOOLONG
			}
			step = step[:i]
		}
		var next int
		var err error
		const flags = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if fd < 0 {
			next, err = unix.Open(root+"/"+step, flags, 0)
		} else {
			next, err = unix.Openat(fd, step, flags, 0)
		}
		if owned {
			unix.Close(fd)
		}
		if err != nil {
			return -1, err
		}
		fd, owned = next, true
		rest = rest[len(step):]
		if rest != "" {
			rest = rest[1:]
		}
	}
	if c.fds == nil {
		c.fds = make(map[string]int)
	}
	c.fds[dir] = fd
	return fd, nil
}

// lastSlashBefore is the index of the last '/' in s[:n+1], or -1.
func lastSlashBefore(s string, n int) int {
	for i := min(n, len(s)-1); i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}
