package runtime

import (
	"errors"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// reap is the reaping init of --init: it starts the command as its child,
// passes every signal it gets on to it, reaps every process orphaned in
// the container, and returns the command's exit code (128+N when killed
// by signal N) once it ends; the kernel then ends the rest.
func reap(bin string, args, env []string, tty bool, status *os.File) (int, error) {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	attr := &os.ProcAttr{
		Env:   env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		// With a terminal the command's process group is its foreground
		// one, so that ^C reaches the command and not this init too.
		Sys: &syscall.SysProcAttr{Foreground: tty, Setpgid: tty, Ctty: 0},
	}
	child, err := os.StartProcess(bin, args, attr)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return 0, execError(args[0], err)
	}
	status.Close()
	for sig := range sigs {
		s := sig.(syscall.Signal)
		switch s {
		case syscall.SIGCHLD:
			if code, done := reapChildren(child.Pid); done {
				return code, nil
			}
		case syscall.SIGURG, syscall.SIGPIPE:
			// Go's preemption, and a write to a closed pipe of init's own.
		default:
			unix.Kill(child.Pid, s)
		}
	}
	return 0, nil
}

// reapChildren collects every finished child; done tells whether the
// command was one of them, with its exit code.
func reapChildren(command int) (code int, done bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return code, done
		}
		if pid == command {
			done = true
			code = exitCode(syscall.WaitStatus(ws))
		}
	}
}
