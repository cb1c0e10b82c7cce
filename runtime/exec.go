package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrNotRunning is returned for an exec into, or a signal to, a
// container that is not running.
var ErrNotRunning = errors.New("is not running")

// Exec starts a process in a running container (strata exec): in its
// namespaces and cgroups, through strata's init binary run from a
// read-only mount of it, as its init was. spec says what to run (Args, Env,
// Cwd, User, Capabilities, Tty);
// the rest of it is ignored. It returns once the command runs, or with an
// *InitError when it could not be started.
func (s *Store) Exec(c *Container, spec *Spec, stdio Stdio) (*Process, error) {
	st, err := s.State(c.ID)
	if err != nil {
		return nil, err
	}
	switch st.Status {
	case StatusRunning:
	case StatusPaused:
		return nil, fmt.Errorf("container %s is paused: unpause it first", c.ID[:12])
	default:
		return nil, fmt.Errorf("container %s %w", c.ID[:12], ErrNotRunning)
	}
	fd, err := unix.PidfdOpen(st.Pid, 0)
	if err != nil {
		return nil, fmt.Errorf("container %s %w (%v)", c.ID[:12], ErrNotRunning, err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	defer pidfd.Close()
	// The pidfd pins the process; check it is still the container's.
	if !sameContainer(st.Pid, c.ID) {
		return nil, fmt.Errorf("container %s %w", c.ID[:12], ErrNotRunning)
	}
	// Each exec its own path, for execs at once.
	self := filepath.Join(s.Dir(c.ID), "exec-"+strconv.Itoa(os.Getpid()))
	s2 := *spec
	var place func(pid int) error
	s2.CgroupTasks, place = OpenCgroup(c.ID).placement()
	return execProcess(pidfd, &s2, stdio, self, place)
}
