package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// Stdio is what the container's process gets as descriptors 0, 1 and 2;
// nil is /dev/null.
type Stdio struct {
	Stdin, Stdout, Stderr *os.File
}

// Process is a started container process, PID 1 of its namespaces.
type Process struct {
	cmd *exec.Cmd
	// Pid is the process's ID in strata's PID namespace.
	Pid int
}

// StartProcess starts the container's first process: the running binary
// re-executed as `strata init` in new mount, PID, UTS, IPC and cgroup
// namespaces (and network, unless spec.Network is "host"). place is called
// with its PID before it does anything, to put it in its cgroups. It
// returns once the command runs, or with an *InitError when it could not
// be started.
func StartProcess(spec *Spec, stdio Stdio, place func(pid int) error) (*Process, error) {
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

	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC)
	if spec.Network != "host" {
		flags |= unix.CLONE_NEWNET
	}
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{"strata", "init"},
		Env:        []string{},
		ExtraFiles: []*os.File{specR, statusW},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: flags,
			// The container dies with its monitor, which serves its rootfs.
			Pdeathsig: syscall.SIGKILL,
			Setsid:    true,
			Setctty:   spec.Tty,
			Ctty:      0,
		},
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
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start container init: %w", err)
	}
	specR.Close()
	statusW.Close()
	p := &Process{cmd: cmd, Pid: cmd.Process.Pid}
	fail := func(err error) (*Process, error) {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
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
	if len(msg) > 0 {
		var ie InitError
		if err := json.Unmarshal(msg, &ie); err != nil {
			ie = InitError{Code: 125, Msg: fmt.Sprintf("container init: %s", msg)}
		}
		cmd.Wait()
		return nil, &ie
	}
	return p, nil
}

// Signal sends sig to the container's first process.
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
