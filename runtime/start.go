package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	goruntime "runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Stdio is what the container's process gets as descriptors 0, 1 and 2;
// nil is /dev/null. With a terminal (Spec.Tty) they are ignored: the
// process gets the terminal, and Process.Console is its other side.
type Stdio struct {
	Stdin, Stdout, Stderr *os.File
}

// Process is a started container process: PID 1 of its namespaces, or a
// process started in them by exec.
type Process struct {
	proc *child
	// Pid is the process's ID in strata's PID namespace.
	Pid int
	// Console is the master side of the process's terminal (Spec.Tty).
	Console *os.File
}

// LaunchOptions say what a container's init needs before it starts.
type LaunchOptions struct {
	// Network is the container's --network: "host" shares the host's
	// network namespace, anything else gives it one of its own.
	Network string
	// Tty gives the command a terminal (Spec.Tty).
	Tty bool
	// Stdin is the command's standard input; nil is /dev/null. Ignored
	// with a terminal.
	Stdin *os.File
	// fallback is where the init binary is bind-mounted read-only when
	// the kernel has no detached mounts (sealInit); without it, Launch
	// then fails with errNoDetachedMount.
	fallback string
}

// Launched is a container's init, started ahead of the rest of the
// container: in its new mount, PID, UTS, IPC and cgroup namespaces (and
// network, unless LaunchOptions.Network is "host"), it waits for its spec,
// so its start (a clone and an exec, about two milliseconds) overlaps
// the monitor's work of making the container. Start sends the spec; Abort
// ends one that is not to be started.
type Launched struct {
	proc *child
	// attach is the root filesystem's mount, attached nowhere, and served
	// gives what starting to serve it returned: both set by ServeRootfs.
	attach                                *os.File
	served                                chan error
	specW, statusR, consoleHere, mountedR *os.File
	// Device is the FUSE device init is to mount the root filesystem
	// from (Spec.RootfsMount); the server keeps a descriptor of its own.
	Device *os.File
	// Stdout and Stderr read what the command writes to its descriptors
	// 1 and 2.
	Stdout, Stderr *os.File
	started        bool
}

// errNoDetachedMount is Launch's failure when the init binary can only be
// sealed by a bind mount at a path, and none was given.
var errNoDetachedMount = errors.New("the kernel has no detached mounts (Linux 5.12)")

// Launch starts a container's init and returns while it waits for its spec.
func Launch(o LaunchOptions) (l *Launched, err error) {
	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC)
	if o.Network != "host" {
		flags |= unix.CLONE_NEWNET
	}
	// The child's ends, closed here once it has them; ours too on failure.
	var theirs, ours []*os.File
	defer func() {
		if err != nil {
			theirs = append(theirs, ours...)
		}
		for _, f := range theirs {
			f.Close()
		}
	}()
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	ours = append(ours, dev)
	pipe := func() (r, w *os.File) {
		if r, w, err = os.Pipe(); err == nil {
			ours, theirs = append(ours, r), append(theirs, w)
		}
		return r, w
	}
	l = &Launched{Device: dev}
	var stdout, stderr, mountedW *os.File
	if l.Stdout, stdout = pipe(); err != nil {
		return nil, err
	}
	if l.Stderr, stderr = pipe(); err != nil {
		return nil, err
	}
	if l.mountedR, mountedW = pipe(); err != nil {
		return nil, err
	}
	stdio := Stdio{Stdin: o.Stdin, Stdout: stdout, Stderr: stderr}
	if o.Tty {
		stdio.Stdin = nil // the terminal replaces all three
	}
	extra := map[int]*os.File{rootfsFd: dev, mountedFd: mountedW}
	if err = l.launch(stdio, o.Tty, flags, nil, extra, o.fallback); err != nil {
		return nil, err
	}
	return l, nil
}

// Launcher runs a Launch on a goroutine of its own, so that the caller
// goes on while the kernel makes init's namespaces and execs it. The
// goroutine runs before the launch is asked for: one started at that
// moment can wait as long for a thread to run on (half a millisecond and
// more, as the process starts) as the work it would overlap takes.
type Launcher struct {
	req  chan LaunchOptions
	done chan struct{}
	l    *Launched
	err  error
}

// NewLauncher starts a Launcher's goroutine, which waits for Launch.
func NewLauncher() *Launcher {
	p := &Launcher{req: make(chan LaunchOptions), done: make(chan struct{})}
	go func() {
		o := <-p.req
		p.l, p.err = Launch(o)
		close(p.done)
		// The spec is encoded once the container is made: the encoder
		// (0.1 ms to build the first time) is built now, on this
		// otherwise idle goroutine.
		json.Marshal(Spec{})
	}()
	return p
}

// Launch starts Launch(o) on the launcher's goroutine; call it once.
func (p *Launcher) Launch(o LaunchOptions) { p.req <- o }

// Wait waits for the launch to end, and returns what Launch returned.
func (p *Launcher) Wait() (*Launched, error) {
	<-p.done
	return p.l, p.err
}

// Abort ends the launched init unless it was started.
func (p *Launcher) Abort() {
	if p == nil {
		return
	}
	if l, err := p.Wait(); err == nil {
		l.Abort()
	}
}

// launch starts init (strata's init binary, initBinary, run from a
// read-only mount of it: sealInit) with stdio, the descriptors extra
// holds at their numbers, and new namespaces (cloneFlags) or, with
// join, in the PID namespace of the process that pidfd refers to.
func (l *Launched) launch(stdio Stdio, tty bool, cloneFlags uintptr, join *os.File, extra map[int]*os.File, fallback string) (err error) {
	binary, release, err := sealInit(fallback)
	if err != nil {
		return err
	}
	defer release() // once started, the process keeps the mount
	// Our ends, kept when init starts, closed when it cannot.
	var ours []*os.File
	defer func() {
		if err != nil {
			for _, f := range ours {
				f.Close()
			}
		}
	}()
	// A socket, not a pipe: the spec may come with the root filesystem's
	// mount (sendStart).
	specFds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("spec socket: %w", err)
	}
	specR, specW := os.NewFile(uintptr(specFds[0]), "spec"), os.NewFile(uintptr(specFds[1]), "spec")
	defer specR.Close()
	ours = append(ours, specW)
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer statusW.Close()
	ours = append(ours, statusR)
	var consoleThere *os.File
	if tty {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("console socket: %w", err)
		}
		l.consoleHere, consoleThere = os.NewFile(uintptr(fds[0]), "console"), os.NewFile(uintptr(fds[1]), "console")
		defer consoleThere.Close()
		ours = append(ours, l.consoleHere)
	}
	// Descriptors 0 to binaryFd; nil is closed in the child.
	files := make([]*os.File, binaryFd+1)
	files[0], files[1], files[2] = stdio.Stdin, stdio.Stdout, stdio.Stderr
	if files[0] == nil || files[1] == nil || files[2] == nil {
		null, err := os.OpenFile(os.DevNull, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer null.Close()
		for i := range 3 {
			if files[i] == nil {
				files[i] = null
			}
		}
	}
	files[specFd], files[statusFd], files[consoleFd], files[joinFd] = specR, statusW, consoleThere, join
	for fd, f := range extra {
		files[fd] = f
	}
	files[binaryFd] = binary.file
	attr := &syscall.SysProcAttr{
		Cloneflags: cloneFlags,
		// A session of its own, so a terminal can be its controlling one.
		Setsid: true,
	}
	if join == nil {
		// The container dies with its monitor, which serves its rootfs.
		attr.Pdeathsig = syscall.SIGKILL
	}
	proc, err := startIn(binary.executable(binaryFd), files, attr, join)
	if err != nil {
		return fmt.Errorf("start container init: %w", err)
	}
	l.proc, l.specW, l.statusR = proc, specW, statusR
	return nil
}

// Abort ends an init that was not started, and closes what Launch opened.
// After Start it does nothing.
func (l *Launched) Abort() {
	if l == nil || l.started {
		return
	}
	l.started = true
	l.proc.Kill()
	l.proc.Wait()
	l.close()
}

func (l *Launched) close() {
	for _, f := range []*os.File{l.specW, l.statusR, l.consoleHere, l.mountedR, l.attach, l.Device, l.Stdout, l.Stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// ServeRootfs mounts the root filesystem, attached nowhere, and serves
// it at once, for Start to send to init (detachedMount): the server is
// up, its readers waiting on the device, before init looks anything up.
// Where the kernel cannot, it does nothing, and Start leaves the mounting
// to init. Call it once, before Start, with Start's rootfs.
func (l *Launched) ServeRootfs(rootfs *Rootfs) {
	f, err := detachedMount(&rootfs.Mount, l.Device)
	if err != nil {
		return
	}
	l.attach = f
	l.served = make(chan error, 1)
	l.mountedR.Close()
	l.mountedR = nil
	go serve(rootfs, l.proc, l.served)
}

// serve serves rootfs and sends served what that gave; when it cannot,
// it ends init, whose lookups in its root would wait for an answer.
func serve(rootfs *Rootfs, initProc *child, served chan<- error) {
	err := rootfs.Serve()
	if err != nil {
		initProc.Kill()
	}
	served <- err
}

// Start sends init its spec and, with rootfs, serves the root
// filesystem once init has mounted it from the device. place is called
// with init's PID before it does anything, to put it in its cgroups. It
// returns once the command runs, or with an *InitError when it could not
// be started. Stdout and Stderr stay open for the caller.
func (l *Launched) Start(spec *Spec, place func(pid int) error, rootfs *Rootfs) (*Process, error) {
	s := *spec
	s.Join, s.RootfsMount = false, nil
	if rootfs != nil {
		m := rootfs.Mount
		m.Attach = l.attach != nil // ServeRootfs mounted it
		s.RootfsMount = &m
	}
	l.Stdout, l.Stderr = nil, nil // the caller's
	return l.start(&s, place, rootfs)
}

// execProcess starts a process in the namespaces of a running container,
// whose first process pidfd refers to.
func execProcess(pidfd *os.File, spec *Spec, stdio Stdio, self string, place func(pid int) error) (*Process, error) {
	s := *spec
	s.Join, s.RootfsMount = true, nil
	l := &Launched{}
	if err := l.launch(stdio, s.Tty, 0, pidfd, nil, self); err != nil {
		return nil, err
	}
	return l.start(&s, place, nil)
}

func (l *Launched) start(spec *Spec, place func(pid int) error, rootfs *Rootfs) (*Process, error) {
	if l.started {
		return nil, errors.New("container init already started")
	}
	l.started = true
	defer l.close()
	proc := l.proc
	// Init mounts the root filesystem once it has read the spec, unless
	// ServeRootfs mounted it already: serve it then. If init fails first,
	// the pipe closes empty.
	served := l.served
	switch {
	case served != nil:
	case rootfs != nil:
		served = make(chan error, 1)
		mountedR := l.mountedR
		l.mountedR = nil
		go func() {
			defer mountedR.Close()
			var b [1]byte
			if n, _ := mountedR.Read(b[:]); n == 0 {
				served <- nil
				return
			}
			serve(rootfs, proc, served)
		}()
	default:
		served = make(chan error, 1)
		served <- nil
	}
	p := &Process{proc: proc, Pid: proc.pid}
	// Whatever happens, the device is not served after start returns.
	waitServed := sync.OnceValue(func() error { return <-served })
	// A root that could not be served ended init (serve), maybe before
	// its spec went out: that is the cause to report, not the broken pipe.
	fail := func(err error) (*Process, error) {
		proc.Kill()
		proc.Wait()
		if serr := waitServed(); serr != nil {
			return nil, serr
		}
		return nil, err
	}
	spec.Protocol = specProtocol // spec is start's own copy
	if err := sendStart(l.specW, l.attach); err != nil {
		return fail(fmt.Errorf("send spec to container init: %w", err))
	}
	if err := json.NewEncoder(l.specW).Encode(spec); err != nil {
		return fail(fmt.Errorf("send spec to container init: %w", err))
	}
	if place != nil {
		if err := place(p.Pid); err != nil {
			return fail(err)
		}
	}
	l.specW.Close()
	msg, err := io.ReadAll(l.statusR)
	if err != nil {
		return fail(err)
	}
	if err := waitServed(); err != nil {
		proc.Wait()
		return nil, err
	}
	if len(msg) > 0 {
		var ie InitError
		if err := json.Unmarshal(msg, &ie); err != nil {
			ie = InitError{Code: 125, Msg: fmt.Sprintf("container init: %s", msg)}
		}
		proc.Wait()
		return nil, &ie
	}
	if l.consoleHere != nil {
		// Sent before the command was exec'd, so it is waiting here.
		if p.Console, err = receiveFd(l.consoleHere); err != nil {
			return fail(fmt.Errorf("receive the container's terminal: %w", err))
		}
	}
	return p, nil
}

// startIn starts path (forkExec); with join, in the PID namespace of the
// process the pidfd join refers to. Only children enter a PID namespace,
// so the thread that forks joins it first; that thread is then unfit for
// other goroutines and is left locked, so that it ends with this one.
func startIn(path string, files []*os.File, attr *syscall.SysProcAttr, join *os.File) (*child, error) {
	argv := []string{"strata", "init"}
	if join == nil {
		return forkExec(path, argv, files, attr)
	}
	type started struct {
		c   *child
		err error
	}
	done := make(chan started, 1)
	go func() {
		goruntime.LockOSThread()
		if err := unix.Setns(int(join.Fd()), unix.CLONE_NEWPID); err != nil {
			done <- started{err: fmt.Errorf("join the container's PID namespace: %w", err)}
			return
		}
		c, err := forkExec(path, argv, files, attr)
		done <- started{c, err}
	}()
	s := <-done
	return s.c, s.err
}

// receiveFd takes one descriptor sent over a unix socket.
func receiveFd(sock *os.File) (*os.File, error) {
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, err
	}
	fd, err := oneFd(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("no descriptor received (%v)", err)
	}
	return os.NewFile(uintptr(fd), "console"), nil
}

// oneFd is the one descriptor a control message carries.
func oneFd(oob []byte) (int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1, err
	}
	if len(msgs) != 1 {
		return -1, fmt.Errorf("%d control messages", len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return -1, err
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("%d descriptors", len(fds))
	}
	return fds[0], nil
}

// sendFd sends one descriptor over a unix socket.
func sendFd(sock int, fd int) error {
	return unix.Sendmsg(sock, []byte{0}, unix.UnixRights(fd), nil, 0)
}

// Forward passes the signals that arrive on sigs (nil: none) to the
// process until stop is called.
func (p *Process) Forward(sigs <-chan os.Signal) (stop func()) {
	done := make(chan struct{})
	if sigs != nil {
		go func() {
			for {
				select {
				case sig := <-sigs:
					if s, ok := sig.(syscall.Signal); ok {
						p.Signal(s)
					}
				case <-done:
					return
				}
			}
		}()
	}
	return func() { close(done) }
}

// Signal sends sig to the process; one that has ended gets nothing
// (os.ErrProcessDone).
func (p *Process) Signal(sig syscall.Signal) error {
	return p.proc.Signal(sig)
}

// Wait waits for the process to end and returns its exit code as docker
// reports it: its own code, or 128+N when killed by signal N.
func (p *Process) Wait() (int, error) {
	ws, err := p.proc.Wait()
	if err != nil {
		return -1, err
	}
	return exitCode(ws), nil
}
