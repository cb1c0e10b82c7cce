package runtime

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// child is a process started by forkExec and held by a pidfd.
//
// os/exec is not used: the first process a Go program starts through
// os.StartProcess costs a probe of CLONE_PIDFD (a clone of its own, and
// a wait for it to exit), half a millisecond on this path, which every
// container start would pay before its init even exists. Signals go
// through the pidfd, so they never reach a process that took the PID of
// one already reaped.
type child struct {
	pid   int
	pidfd int

	waitOnce sync.Once
	status   syscall.WaitStatus
	waitErr  error
	// exited is closed once the process is reaped; pidfd is then closed.
	exited chan struct{}
	mu     sync.Mutex // over pidfd's closing and its use by signal
}

// forkExec starts path with argv, no environment, the descriptors files
// holds at their indices (nil: closed in the child) and attributes sys.
func forkExec(path string, argv []string, files []*os.File, sys *syscall.SysProcAttr) (*child, error) {
	fds := make([]uintptr, len(files))
	for i, f := range files {
		fds[i] = ^uintptr(0)
		if f != nil {
			fds[i] = f.Fd()
		}
	}
	pidfd := -1
	attr := *sys
	attr.PidFD = &pidfd
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{Env: []string{}, Files: fds, Sys: &attr})
	if err != nil {
		return nil, err
	}
	if pidfd < 0 { // a kernel without CLONE_PIDFD (before 5.2)
		return nil, errors.Join(errors.New("clone gave no pidfd (Linux 5.2 and later do)"), reapNow(pid))
	}
	return &child{pid: pid, pidfd: pidfd, exited: make(chan struct{})}, nil
}

// reapNow kills and reaps pid.
func reapNow(pid int) error {
	syscall.Kill(pid, syscall.SIGKILL)
	_, err := wait4(pid)
	return err
}

// wait4 waits for the child pid to end and reaps it.
func wait4(pid int) (syscall.WaitStatus, error) {
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		if err != syscall.EINTR {
			return ws, err
		}
	}
}

// Signal sends sig; a process already reaped gets nothing (os.ErrProcessDone).
func (c *child) Signal(sig syscall.Signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.exited:
		return os.ErrProcessDone
	default:
	}
	if err := unix.PidfdSendSignal(c.pidfd, sig, nil, 0); err != nil {
		if err == unix.ESRCH {
			return os.ErrProcessDone
		}
		return fmt.Errorf("signal process %d: %w", c.pid, err)
	}
	return nil
}

// Kill sends SIGKILL.
func (c *child) Kill() error { return c.Signal(syscall.SIGKILL) }

// Wait waits for the process to exit and reaps it; every call returns
// the same status.
func (c *child) Wait() (syscall.WaitStatus, error) {
	c.waitOnce.Do(func() {
		c.status, c.waitErr = wait4(c.pid)
		c.mu.Lock()
		close(c.exited)
		unix.Close(c.pidfd)
		c.mu.Unlock()
	})
	return c.status, c.waitErr
}

// Exited tells whether the process was reaped.
func (c *child) Exited() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// exitCode is docker's exit code for a finished process: its own code,
// or 128+N when killed by signal N.
func exitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
