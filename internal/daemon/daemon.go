// Package daemon starts a server process in the background and waits
// until it reports itself ready (a FUSE mount live) or failed, the way a
// mount helper must: return only once the mount can be used.
package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
)

// readyEnv names the descriptor the server reports on. An environment
// variable rather than a fixed descriptor, so a server started some other
// way (by hand, by podman) never writes into a file it did not expect.
const readyEnv = "STRATA_READY_FD"

// Start runs cmd detached (a new session, no terminal) and waits until it
// calls Notifier's ready function. A server that fails first, or exits,
// is reported as an error carrying its message.
func Start(cmd *exec.Cmd) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd.ExtraFiles = append(cmd.ExtraFiles, w)
	fd := 2 + len(cmd.ExtraFiles)
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", readyEnv, fd))
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "ok" {
		return cmd.Process.Release()
	}
	werr := cmd.Wait()
	if line == "" {
		if werr != nil {
			return fmt.Errorf("server exited before it was ready: %w", werr)
		}
		return errors.New("server exited before it was ready")
	}
	return errors.New(line)
}

// Notifier returns the function a server calls once: with nil when it is
// ready, or with the error that stops it. Without a waiting parent it does
// nothing.
func Notifier() func(error) {
	var f *os.File
	if v := os.Getenv(readyEnv); v != "" {
		var fd int
		if _, err := fmt.Sscan(v, &fd); err == nil && fd > 2 {
			f = os.NewFile(uintptr(fd), "ready")
		}
		os.Unsetenv(readyEnv)
	}
	return func(err error) {
		if f == nil {
			return
		}
		msg := "ok"
		if err != nil {
			msg = strings.ReplaceAll(err.Error(), "\n", " ")
		}
		fmt.Fprintln(f, msg)
		f.Close()
		f = nil
	}
}

// Server is a mounted filesystem being served.
type Server interface {
	Unmount() error
	Wait()
}

// Serve reports the server ready and serves until it is unmounted;
// SIGTERM, SIGINT and SIGHUP unmount it cleanly.
func Serve(srv Server, ready func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		<-sig
		srv.Unmount()
	}()
	ready()
	srv.Wait()
}
