package fusefs

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
	mo := serverOptions(o, u.readOnly())
	mo.Logger = fuseLogger(u.log)
	srv, err := fuse.NewServer(rawFS(u, mo), dir, &mo)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	SpareProcs()
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

// SpareProcs raises GOMAXPROCS to leave Go Ps to spare in a process that
// serves a union. Mount calls it once go-fuse has sized its readers
// (NewServer: as many as GOMAXPROCS, 2 to 16); a process that serves a
// Device calls it itself, later: a container's monitor once the command
// has run a moment, as the Ps cost a start more than they give.
// go-fuse allows as many readers as Ps, which a single stream of requests
// never grows to.
//
// Each reader waits in read(2) on the device holding a P. With none idle,
// Go's sysmon wakes every 20 µs to take them back, and a reader that gets
// a request finds its P gone and parks its thread while another wakes:
// in a tree walk, a third of the server's context switches, and the walk
// 1.4x the kernel overlayfs's time where it is 1.2x with Ps to spare.
// Enough: the readers (at most one over go-fuse's count), the prefetch
// workers, and the CPUs to run the rest. A GOMAXPROCS the user set is
// left alone.
func SpareProcs() {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	cpus := runtime.NumCPU()
	readers := min(max(cpus, 2), 16) // go-fuse's, with GOMAXPROCS at its default
	if want := readers + 1 + prefetchWorkers + cpus; want > runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(want)
	}
}

// serverOptions are the FUSE server's options for a union, read-only or
// not.
func serverOptions(o MountOptions, readOnly bool) fuse.MountOptions {
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
	if readOnly {
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
		// Set-ID bits are killed by the union (see killPriv). An open
		// with O_TRUNC comes as one request (the union then copies no
		// data up for a lower file it empties).
		ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2 | fuse.CAP_ATOMIC_O_TRUNC,
	}
	if root {
		// mount(2) takes the VFS flags as bits, not as option strings.
		mo.DirectMountFlags, mo.Options = vfsFlags(opts)
	} else {
		mo.Options = opts // fusermount3 understands them all
	}
	return mo
}

// rawFS is the file system go-fuse serves for u.
func rawFS(u *Union, mo fuse.MountOptions) fuse.RawFileSystem {
	return &nameOrder{u: u, RawFileSystem: newWithoutOpendir(killPriv{killing: &u.killing, RawFileSystem: fs.NewNodeFS(u.Root(), &fs.Options{
		MountOptions:    mo,
		Logger:          mo.Logger,
		EntryTimeout:    &u.timeout,
		AttrTimeout:     &u.timeout,
		NegativeTimeout: &u.timeout,
		// The root's inode number is the one its layer gives it, as
		// overlayfs reports it; go-fuse would report 0, which ls, find
		// and glibc's readdir take for no file at all.
		RootStableAttr: &fs.StableAttr{Ino: u.root.c.ino},
		// A file's mode is its own, 0000 too (go-fuse would show 0644,
		// and the kernel's permission checks would let anyone read a
		// 0000 /etc/shadow).
		NullPermissions: true,
	})})}
}

// Device is a FUSE connection for a mount that another process makes: a
// container's init mounts its root filesystem in the container's own
// mount namespace, so that only the container sees it and it goes with
// the container's last process, with no mount in the host's namespace to
// remove or to leave behind. The process is handed an open /dev/fuse and
// the mount(2) arguments (Source, FSType, Flags, Data); Serve a writable
// union once it has mounted.
type Device struct {
	// Source, FSType and Flags are mount(2)'s; Data has %d where the
	// mounting process's number for its /dev/fuse goes.
	Source, FSType, Data string
	Flags                uintptr

	fd   int // the server's
	mo   fuse.MountOptions
	srv  *fuse.Server
	done chan struct{}
}

// NewDevice is the server's side of f, an open /dev/fuse that a process
// running as root is to mount (the kernel takes a mount from the
// descriptor with CAP_SYS_ADMIN). The server keeps a copy of f's
// descriptor; the caller closes f once handed over.
func NewDevice(f *os.File, o MountOptions) (*Device, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("a FUSE device is mounted by root")
	}
	mo := serverOptions(o, false)
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("FUSE device: %w", err)
	}
	mo.MaxWrite = maxWrite
	data := []string{"fd=%d", "rootmode=40000", fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()), fmt.Sprintf("max_read=%d", mo.MaxWrite), "allow_other"}
	data = append(data, mo.Options...)
	// The server reads the device it is given (go-fuse's /dev/fd/N) and
	// mounts nothing itself.
	mo.DirectMount = false
	return &Device{
		Source: mo.FsName, FSType: "fuse." + mo.Name,
		Data: strings.Join(data, ","), Flags: mo.DirectMountFlags,
		fd: fd, mo: mo, done: make(chan struct{}),
	}, nil
}

// maxWrite is the largest write the server takes (go-fuse's default), set
// here because the mount's max_read names it too.
const maxWrite = 128 << 10

// Serve answers the kernel's INIT, which the mount has queued, and serves
// u on the mount until it goes away. Call it once the mount is made:
// before, the device has no connection to read.
func (d *Device) Serve(u *Union) error {
	if u.readOnly() {
		return errors.New("a device serves a writable union")
	}
	d.mo.Logger = fuseLogger(u.log)
	srv, err := fuse.NewServer(rawFS(u, d.mo), "/dev/fd/"+strconv.Itoa(d.fd), &d.mo)
	if err != nil {
		close(d.done) // go-fuse closed the device
		return fmt.Errorf("serve the mount: %w", err)
	}
	d.srv = srv
	go func() {
		srv.Serve()
		close(d.done)
	}()
	return nil
}

// Close ends the device. A mounted one ends when its mount goes, with the
// last process of the mount namespace holding it; Close waits for that
// for at most wait, and returns: if something outside the container keeps
// the namespace, the connection ends with this process, as with any FUSE
// server. One never served is closed at once.
func (d *Device) Close(wait time.Duration) {
	if d.srv == nil {
		select {
		case <-d.done:
		default:
			unix.Close(d.fd)
		}
		return
	}
	select {
	case <-d.done:
	case <-time.After(wait):
	}
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
