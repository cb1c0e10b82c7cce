package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
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
	cmd *exec.Cmd
	// Pid is the process's ID in strata's PID namespace.
	Pid int
	// Console is the master side of the process's terminal (Spec.Tty).
	Console *os.File
}

// StartProcess starts the container's first process: strata's init
// binary (initBinary), bind-mounted read-only at self (a path in the
// container's directory), run as `strata init` in new mount, PID, UTS, IPC
// and cgroup namespaces (and network, unless spec.Network is "host").
// place is called with its PID before it does anything, to put it in its
// cgroups. Init mounts rootfs (nil: spec.Rootfs is mounted already) and
// rootfs is served once it has. It returns once the command runs, or with
// an *InitError when it could not be started.
func StartProcess(spec *Spec, stdio Stdio, self string, place func(pid int) error, rootfs *Rootfs) (*Process, error) {
	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC)
	if spec.Network != "host" {
		flags |= unix.CLONE_NEWNET
	}
	s := *spec
	s.Join, s.RootfsMount = false, nil
	if rootfs != nil {
		s.RootfsMount = &rootfs.Mount
	}
	return start(&s, stdio, self, place, flags, nil, rootfs)
}

// execProcess starts a process in the namespaces of a running container,
// whose first process pidfd refers to.
func execProcess(pidfd *os.File, spec *Spec, stdio Stdio, self string, place func(pid int) error) (*Process, error) {
	s := *spec
	s.Join, s.RootfsMount = true, nil
	return start(&s, stdio, self, place, 0, pidfd, nil)
}

func start(spec *Spec, stdio Stdio, self string, place func(pid int) error, cloneFlags uintptr, join *os.File, rootfs *Rootfs) (*Process, error) {
	release, err := readOnlyInit(self)
	if err != nil {
		return nil, err
	}
	defer release()
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer specR.Close()
	defer specW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer statusR.Close()
	defer statusW.Close()
	var consoleHere, consoleThere *os.File
	if spec.Tty {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		consoleHere, consoleThere = os.NewFile(uintptr(fds[0]), "console"), os.NewFile(uintptr(fds[1]), "console")
		defer consoleHere.Close()
		defer consoleThere.Close()
	}

	var mountedR, mountedW *os.File
	if rootfs != nil {
		if mountedR, mountedW, err = os.Pipe(); err != nil {
			return nil, err
		}
		defer mountedR.Close()
		defer mountedW.Close()
	}
	extra := make([]*os.File, mountedFd-specFd+1)
	extra[specFd-3], extra[statusFd-3], extra[consoleFd-3], extra[joinFd-3] = specR, statusW, consoleThere, join
	if rootfs != nil {
		extra[rootfsFd-3], extra[mountedFd-3] = rootfs.Device, mountedW
	}
	cmd := &exec.Cmd{
		Path:       self,
		Args:       []string{"strata", "init"},
		Env:        []string{},
		ExtraFiles: extra,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: cloneFlags,
			// A session of its own, so a terminal can be its controlling one.
			Setsid: true,
		},
	}
	if join == nil {
		// The container dies with its monitor, which serves its rootfs.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	// Assigned one by one: a nil *os.File must stay a nil io.Reader.
	if stdio.Stdin != nil {
		cmd.Stdin = stdio.Stdin
	}
	if stdio.Stdout != nil {
		cmd.Stdout = stdio.Stdout
	}
	if stdio.Stderr != nil {
		cmd.Stderr = stdio.Stderr
	}
	if err := startIn(cmd, join); err != nil {
		return nil, fmt.Errorf("start container init: %w", err)
	}
	specR.Close()
	statusW.Close()
	if consoleThere != nil {
		consoleThere.Close()
	}
	// Init mounts the root filesystem once it has read the spec: serve it
	// then. If init fails first, the pipe closes empty.
	served := make(chan error, 1)
	if rootfs != nil {
		rootfs.Device.Close()
		mountedW.Close()
		go func() {
			var b [1]byte
			if n, _ := mountedR.Read(b[:]); n == 0 {
				served <- nil
				return
			}
			err := rootfs.Serve()
			if err != nil {
				// Init waits for the mount to answer: it cannot go on.
				cmd.Process.Kill()
			}
			served <- err
			if err == nil {
				lookAhead(cmd.Process.Pid, spec)
			}
		}()
	} else {
		served <- nil
	}
	p := &Process{cmd: cmd, Pid: cmd.Process.Pid}
	// Whatever happens, the device is not served after start returns.
	waitServed := sync.OnceValue(func() error { return <-served })
	fail := func(err error) (*Process, error) {
		cmd.Process.Kill()
		cmd.Wait()
		waitServed()
		return nil, err
	}
	spec.Protocol = specProtocol // spec is start's own copy
	if err := json.NewEncoder(specW).Encode(spec); err != nil {
		return fail(fmt.Errorf("send spec to container init: %w", err))
	}
	if place != nil {
		if err := place(p.Pid); err != nil {
			return fail(err)
		}
	}
	specW.Close()
	msg, err := io.ReadAll(statusR)
	if err != nil {
		return fail(err)
	}
	if err := waitServed(); err != nil {
		cmd.Wait()
		return nil, err
	}
	if len(msg) > 0 {
		var ie InitError
		if err := json.Unmarshal(msg, &ie); err != nil {
			ie = InitError{Code: 125, Msg: fmt.Sprintf("container init: %s", msg)}
		}
		cmd.Wait()
		return nil, &ie
	}
	if consoleHere != nil {
		// Sent before the command was exec'd, so it is waiting here.
		if p.Console, err = receiveFd(consoleHere); err != nil {
			return fail(fmt.Errorf("receive the container's terminal: %w", err))
		}
	}
	return p, nil
}

// startIn starts cmd; with join, in the PID namespace of the process the
// pidfd join refers to. Only children enter a PID namespace, so the
// thread that forks joins it first; that thread is then unfit for other
// goroutines and is left locked, so that it ends with this one.
func startIn(cmd *exec.Cmd, join *os.File) error {
	if join == nil {
		return cmd.Start()
	}
	done := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		if err := unix.Setns(int(join.Fd()), unix.CLONE_NEWPID); err != nil {
			done <- fmt.Errorf("join the container's PID namespace: %w", err)
			return
		}
		done <- cmd.Start()
	}()
	return <-done
}

// receiveFd takes one descriptor sent over a unix socket.
func receiveFd(sock *os.File) (*os.File, error) {
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("no descriptor received (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("no descriptor received (%v)", err)
	}
	return os.NewFile(uintptr(fds[0]), "console"), nil
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

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// Wait waits for the process to end and returns its exit code as docker
// reports it: its own code, or 128+N when killed by signal N.
func (p *Process) Wait() (int, error) {
	err := p.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return -1, err
	}
	return ExitCode(p.cmd.ProcessState), nil
}

// ExitCode is docker's exit code for a finished process.
func ExitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
