package runtime

import (
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths inside the rootfs are the container's to choose, and may be
// symlinks meant to lead out of it: every mount target is resolved inside
// the root (openat2 RESOLVE_IN_ROOT) and mounted on through its O_PATH
// descriptor, never by a path that is resolved again (CVE-2021-30465).

// openIn opens p inside the root as an O_PATH descriptor.
func openIn(root int, p string) (int, error) {
	return openInWith(root, p, unix.O_PATH)
}

// openInWith opens p inside the root with flags (close-on-exec added).
func openInWith(root int, p string, flags uint64) (int, error) {
	fd, err := unix.Openat2(root, p, &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, &os.PathError{Op: "open in rootfs", Path: p, Err: err}
	}
	return fd, nil
}

// mkdirIn makes p and its parents inside the root; when file is set, the
// last component is made an empty file, to bind a file over.
func mkdirIn(root int, p string, file bool) error {
	parts := strings.Split(strings.Trim(path.Clean(p), "/"), "/")
	cur := "/"
	for i, name := range parts {
		next := path.Join(cur, name)
		fd, err := openIn(root, next)
		if err == nil {
			unix.Close(fd)
			cur = next
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return err
		}
		dir, err := openIn(root, cur)
		if err != nil {
			return err
		}
		if file && i == len(parts)-1 {
			var f int
			f, err = unix.Openat(dir, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
			if err == nil {
				unix.Close(f)
			}
		} else {
			err = unix.Mkdirat(dir, name, 0o755)
		}
		unix.Close(dir)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return &os.PathError{Op: "create in rootfs", Path: next, Err: err}
		}
		cur = next
	}
	return nil
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// mountIn mounts source on dest inside the root, creating dest.
func mountIn(root int, dest, source, fstype string, flags uintptr, data string, file bool) error {
	if err := mkdirIn(root, dest, file); err != nil {
		return err
	}
	fd, err := openIn(root, dest)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Mount(source, fdPath(fd), fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", orDefault(source, fstype), dest, err)
	}
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// remountIn makes the mount at dest inside the root read-only, keeping
// its nosuid, nodev and noexec.
func remountIn(root int, dest string) error {
	fd, err := openIn(root, dest)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return remountReadOnly(fdPath(fd))
}

func remountReadOnly(p string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return err
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
	for _, f := range []struct{ st, ms int64 }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME},
	} {
		if st.Flags&f.st != 0 {
			flags |= uintptr(f.ms)
		}
	}
	return unix.Mount("", p, "", flags, "")
}

type device struct {
	name         string
	major, minor uint32
}

// The devices every container gets, as Docker gives them.
var defaultDevices = []device{
	{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
}

// setupRootfs mounts /proc, /dev, /sys, the files strata provides and the
// user's mounts into the rootfs, before pivot_root.
func setupRootfs(spec *Spec) error {
	root, err := unix.Open(spec.Rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("init: open rootfs: %w", err)
	}
	defer unix.Close(root)
	const nsd = unix.MS_NOSUID | unix.MS_NODEV
	sysFlags := uintptr(nsd | unix.MS_NOEXEC)
	if !spec.Privileged {
		sysFlags |= unix.MS_RDONLY
	}
	steps := []struct {
		dest, source, fstype string
		flags                uintptr
		data                 string
	}{
		{"/proc", "proc", "proc", nsd | unix.MS_NOEXEC, ""},
		{"/dev", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_STRICTATIME, "mode=755,size=65536k"},
	}
	for _, s := range steps {
		if err := mountIn(root, s.dest, s.source, s.fstype, s.flags, s.data, false); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	if err := populateDev(root, spec.Privileged); err != nil {
		return fmt.Errorf("init: /dev: %w", err)
	}
	steps = steps[:0]
	steps = append(steps, []struct {
		dest, source, fstype string
		flags                uintptr
		data                 string
	}{
		{"/dev/pts", "devpts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"/dev/shm", "shm", "tmpfs", nsd | unix.MS_NOEXEC, fmt.Sprintf("mode=1777,size=%dk", shmKiB(spec.ShmSize))},
		{"/dev/mqueue", "mqueue", "mqueue", nsd | unix.MS_NOEXEC, ""},
		{"/sys", "sysfs", "sysfs", sysFlags, ""},
	}...)
	for _, s := range steps {
		if err := mountIn(root, s.dest, s.source, s.fstype, s.flags, s.data, false); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	if isCgroup2(cgroupRoot) {
		flags := uintptr(nsd | unix.MS_NOEXEC | unix.MS_RELATIME)
		if !spec.Privileged {
			flags |= unix.MS_RDONLY
		}
		if err := mountIn(root, "/sys/fs/cgroup", "cgroup", "cgroup2", flags, "", false); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	for _, f := range spec.Files {
		if err := mountIn(root, f.Destination, f.Source, "", unix.MS_BIND, "", true); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	// New volumes get the image's content where they are mounted, read
	// before anything is mounted over it.
	for _, m := range spec.Mounts {
		if m.CopyUp {
			if err := copyUp(spec.Rootfs, m); err != nil {
				return fmt.Errorf("init: %w", err)
			}
		}
	}
	// Parents before children, so a mount inside another lands on it.
	mounts := append([]Mount(nil), spec.Mounts...)
	sort.SliceStable(mounts, func(i, j int) bool {
		return strings.Count(path.Clean(mounts[i].Destination), "/") < strings.Count(path.Clean(mounts[j].Destination), "/")
	})
	for _, m := range mounts {
		if err := userMount(root, m); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	return nil
}

func isCgroup2(p string) bool {
	var st unix.Statfs_t
	return unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

func userMount(root int, m Mount) error {
	switch m.Type {
	case "bind":
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("bind source %s: %w", m.Source, err)
		}
		if err := mountIn(root, m.Destination, m.Source, "", unix.MS_BIND|unix.MS_REC, "", !fi.IsDir()); err != nil {
			return err
		}
	case "tmpfs":
		if err := mountIn(root, m.Destination, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, m.Data, false); err != nil {
			return err
		}
	default:
		return fmt.Errorf("mount %s: unknown type %q", m.Destination, m.Type)
	}
	if m.ReadOnly {
		if err := remountIn(root, m.Destination); err != nil {
			return fmt.Errorf("read-only %s: %w", m.Destination, err)
		}
	}
	return nil
}

// populateDev makes the standard device nodes and links in the fresh
// /dev tmpfs; a privileged container also gets the host's devices.
func populateDev(root int, privileged bool) error {
	dev, err := unix.Openat2(root, "/dev", &unix.OpenHow{
		Flags: unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS,
	})
	if err != nil {
		return err
	}
	defer unix.Close(dev)
	devs := append([]device(nil), defaultDevices...)
	if privileged {
		ents, _ := os.ReadDir("/dev")
		for _, e := range ents {
			var st unix.Stat_t
			if unix.Lstat("/dev/"+e.Name(), &st) != nil {
				continue
			}
			if t := st.Mode & unix.S_IFMT; t == unix.S_IFCHR || t == unix.S_IFBLK {
				devs = append(devs, device{e.Name(), unix.Major(st.Rdev), unix.Minor(st.Rdev)})
			}
		}
	}
	for _, d := range devs {
		mode := uint32(unix.S_IFCHR | 0o666)
		if privileged {
			var st unix.Stat_t
			if unix.Lstat("/dev/"+d.name, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
				mode = unix.S_IFBLK | 0o660
			}
		}
		if err := unix.Mknodat(dev, d.name, mode, int(unix.Mkdev(d.major, d.minor))); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mknod %s: %w", d.name, err)
		}
	}
	for _, l := range [][2]string{
		{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"}, {"/proc/kcore", "core"}, {"pts/ptmx", "ptmx"},
	} {
		if err := unix.Symlinkat(l[0], dev, l[1]); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("symlink %s: %w", l[1], err)
		}
	}
	return nil
}

// pivotRoot makes rootfs the root and detaches the old one (runc's way,
// without a directory for the old root inside the new one).
func pivotRoot(rootfs string) error {
	// O_PATH is enough for fchdir, and opens no directory of the root
	// filesystem (a round trip to its server).
	oldroot, err := unix.Open("/", unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer unix.Close(oldroot)
	newroot, err := unix.Open(rootfs, unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer unix.Close(newroot)
	if err := unix.Fchdir(newroot); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("init: pivot_root: %w", err)
	}
	if err := unix.Fchdir(oldroot); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := unix.Mount("", ".", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("init: old root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("init: detach old root: %w", err)
	}
	return unix.Chdir("/")
}

// maskPaths hides Docker's masked paths and makes its read-only paths so,
// inside the new root. /dev/null must really be the null device: the
// container's files are not to be trusted.
func maskPaths() error {
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	var st unix.Stat_t
	if err := unix.Lstat("/dev/null", &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		return errors.New("init: /dev/null is not the null device")
	}
	for _, p := range MaskedPaths() {
		fd, err := openIn(root, p)
		if err != nil {
			continue // absent on this kernel
		}
		var fst unix.Stat_t
		err = unix.Fstat(fd, &fst)
		if err == nil {
			if fst.Mode&unix.S_IFMT == unix.S_IFDIR {
				err = unix.Mount("tmpfs", fdPath(fd), "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0")
			} else {
				err = unix.Mount("/dev/null", fdPath(fd), "", unix.MS_BIND, "")
			}
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("init: mask %s: %w", p, err)
		}
	}
	for _, p := range ReadonlyPaths() {
		fd, err := openIn(root, p)
		if err != nil {
			continue
		}
		err = unix.Mount(fdPath(fd), fdPath(fd), "", unix.MS_BIND|unix.MS_REC, "")
		unix.Close(fd)
		if err == nil {
			err = remountIn(root, p)
		}
		if err != nil {
			return fmt.Errorf("init: read-only %s: %w", p, err)
		}
	}
	return nil
}

// shmKiB is /dev/shm's size in KiB: size bytes rounded up, docker's 64
// MiB for none.
func shmKiB(size int64) int64 {
	if size <= 0 {
		return 64 << 10
	}
	return (size + 1023) / 1024
}
