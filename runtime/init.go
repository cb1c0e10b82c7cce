package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The descriptors the init process is given besides stdio.
const (
	specFd    = 3 // a socket: startByte (with the root's mount, when attached), the Spec as JSON; EOF once the monitor has placed the process in its cgroups
	statusFd  = 4 // close-on-exec: EOF means the command started, a JSON InitError means it did not
	consoleFd = 5 // with Spec.Tty: a socket to send the terminal's master side over
	joinFd    = 6 // with Spec.Join: a pidfd of the container's first process
	rootfsFd  = 7 // with Spec.RootfsMount, not attached: the device the root filesystem is mounted from
	mountedFd = 8 // with Spec.RootfsMount, not attached: a byte written once it is mounted, so it is served
	binaryFd  = 9 // init's own binary, as executed (sealInit); closed before the command runs
)

// InitError is why the container's command could not be started, with the
// exit code docker gives for it: 127 not found, 126 not executable, 125
// anything else.
type InitError struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

func (e *InitError) Error() string { return e.Msg }

// Init turns the process it runs in into the container's command. It is
// what the hidden `strata init` verb runs: the monitor re-executes strata
// with the namespace clone flags, so no Go code runs between fork and
// exec in the multithreaded monitor. As PID 1 of fresh namespaces it sets
// them up; started by exec (Spec.Join) it joins a running container's.
// It returns only on failure, having reported it to its starter, or, as
// a reaping init (Spec.Init), with the command's exit code.
func Init() int {
	// Capabilities, the bounding set and joined namespaces are per thread;
	// the command is started from this one.
	goruntime.LockOSThread()
	// Executed as /proc/self/fd/N (sealInit), it would be named "N" in
	// ps and top, and, as a reaping init, in the container's ps too.
	name := []byte("strata-init\x00")
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
	status := os.NewFile(statusFd, "status")
	code, err := initContainer(status)
	if err == nil {
		return code
	}
	var ie *InitError
	if !errors.As(err, &ie) {
		ie = &InitError{Code: 125, Msg: err.Error()}
	}
	if status != nil {
		json.NewEncoder(status).Encode(ie)
	}
	return ie.Code
}

func initContainer(status *os.File) (int, error) {
	in := os.NewFile(specFd, "spec")
	if in == nil {
		return 0, errors.New("init: no spec (strata init is started by strata run)")
	}
	// Decoding a type the first time builds its decoder (0.1 ms): done
	// while the monitor is still making the container, unless the spec
	// is here already.
	if !readable(specFd) {
		json.Unmarshal([]byte(warmSpec), new(Spec))
	}
	attach, specStream, err := receiveStart(in)
	if err != nil {
		return 0, fmt.Errorf("init: read spec: %w", err)
	}
	var spec Spec
	if err := json.NewDecoder(specStream).Decode(&spec); err != nil {
		return 0, fmt.Errorf("init: read spec: %w", err)
	}
	if spec.Protocol != specProtocol {
		return 0, fmt.Errorf("init: this init reads spec protocol %d, strata sent %d: install strata and strata-init from one build", specProtocol, spec.Protocol)
	}
	// Opened while the host's cgroup filesystem is in reach: before the
	// pivot into the container's root, or the join of its mounts.
	tasks, err := openFiles(spec.CgroupTasks)
	if err != nil {
		return 0, fmt.Errorf("init: cgroup: %w", err)
	}
	// The starter closes the pipe once the process is in its cgroups (or
	// at once when it enters them itself), so the container is set up
	// meanwhile, and only the command must wait.
	placed := sync.OnceFunc(func() {
		io.Copy(io.Discard, in)
		in.Close()
	})
	enterCgroup := sync.OnceValue(func() error {
		placed()
		// This thread alone: the one that starts the command. (In
		// strata-init it is also the first thread, whose memory cgroup
		// the process's pages are charged to.)
		for _, f := range tasks {
			_, err := f.WriteString("0")
			f.Close()
			if err != nil {
				return fmt.Errorf("init: enter cgroup %s: %w", f.Name(), err)
			}
		}
		if spec.Join {
			return nil // joined with the container's other namespaces
		}
		// A cgroup namespace rooted at the container's own cgroups, for
		// this thread and so for the command.
		if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
			return fmt.Errorf("init: cgroup namespace: %w", err)
		}
		return nil
	})
	r := &resolving{done: make(chan struct{})}
	if spec.Join {
		err = joinContainer(&spec, enterCgroup, r)
	} else {
		err = setupContainer(&spec, attach, enterCgroup, r)
	}
	if err != nil {
		return 0, err
	}
	r.start(&spec, "/", spec.Join)
	return startCommand(&spec, r, status, enterCgroup)
}

// readable tells whether fd has data to read now.
func readable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// resolving looks the user and the command up in the container's files
// (round trips to its root filesystem's server) on a goroutine of its
// own, while init goes on with the set-up that cannot change them.
type resolving struct {
	once sync.Once
	done chan struct{}
	cmd  *command
}

// start resolves the command in the root at rootfs, once: on a goroutine,
// or, inline, on this thread (one joining a container is the only thread
// in its mount namespace). The root is opened here, by the caller: the
// goroutine may run only once this thread has pivoted away from the path.
func (r *resolving) start(spec *Spec, rootfs string, inline bool) {
	r.once.Do(func() {
		root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.cmd = &command{userErr: fmt.Errorf("init: open rootfs: %w", err)}
			close(r.done)
			return
		}
		run := func() {
			defer close(r.done)
			defer unix.Close(root)
			r.cmd = resolveCommand(spec, root)
		}
		if inline {
			run()
		} else {
			go run()
		}
	})
}

func (r *resolving) wait() *command {
	<-r.done
	return r.cmd
}

// resolvableEarly tells whether the user database and the command can be
// looked up as soon as the root filesystem is mounted: when none of the
// mounts made on it covers them.
func resolvableEarly(spec *Spec) bool {
	covered := []string{"/proc", "/dev", "/sys"}
	for _, m := range append(spec.Mounts, spec.Files...) {
		covered = append(covered, path.Clean(m.Destination))
	}
	cwd := orDefault(spec.Cwd, "/")
	used := []string{"/etc/passwd", "/etc/group", cwd}
	if len(spec.Args) > 0 {
		name := spec.Args[0]
		if strings.Contains(name, "/") {
			used = append(used, path.Join(cwd, name))
		} else {
			for _, dir := range strings.Split(envValue(containerEnv(spec.Env, "", ""), "PATH"), ":") {
				used = append(used, path.Join(cwd, dir, name))
			}
		}
	}
	for _, u := range used {
		for _, c := range covered {
			if u == c || strings.HasPrefix(u, c+"/") || strings.HasPrefix(c, u+"/") {
				return false
			}
		}
	}
	return true
}

// setupContainer makes the container's world as PID 1 of its new
// namespaces: its root filesystem with mounts, hostname and network.
func setupContainer(spec *Spec, attach int, enterCgroup func() error, r *resolving) error {
	unix.Umask(0)
	// The cgroup2 filesystem the container gets shows the namespace of
	// the process that mounts it.
	if isCgroup2(cgroupRoot) {
		if err := enterCgroup(); err != nil {
			return err
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("init: make mounts private: %w", err)
	}
	if m := spec.RootfsMount; m != nil {
		if err := mountRootfs(spec.Rootfs, m, attach); err != nil {
			return err
		}
	}
	if resolvableEarly(spec) {
		r.start(spec, spec.Rootfs, false)
	}
	// Before the mounts: a start is 0.4–0.8 ms sooner here than with
	// these after them, though they take 0.1 ms either way. (Bringing lo
	// up sets off kernel work, address configuration and notifications,
	// that then overlaps init's waits on the root's server.)
	if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
		return fmt.Errorf("init: hostname: %w", err)
	}
	if spec.Network == "none" {
		if err := loopbackUp(); err != nil {
			return fmt.Errorf("init: bring up lo: %w", err)
		}
	}
	if err := setupRootfs(spec); err != nil {
		return err
	}
	if err := pivotRoot(spec.Rootfs); err != nil {
		return err
	}
	// Every mount that could cover the user database or PATH is made;
	// what is left (masks in /proc, a read-only root) does not change
	// them.
	r.start(spec, "/", false)
	// The working directory is made before the root may turn read-only.
	if err := os.MkdirAll(orDefault(spec.Cwd, "/"), 0o755); err != nil {
		return fmt.Errorf("init: working directory %s: %w", spec.Cwd, err)
	}
	if !spec.Privileged {
		if err := maskPaths(); err != nil {
			return err
		}
	}
	if spec.ReadonlyRootfs {
		if err := remountReadOnly("/"); err != nil {
			return fmt.Errorf("init: read-only root: %w", err)
		}
	}
	unix.Umask(0o022)
	return nil
}

// mountRootfs attaches the root filesystem the monitor mounted (attach,
// with m.Attach) or mounts it from its device, here in the container's
// mount namespace, and closes the device. Mounted here, the monitor is
// told, and serves it then.
func mountRootfs(dir string, m *DeviceMount, attach int) error {
	if m.Attach {
		unix.Close(rootfsFd)
		unix.Close(mountedFd)
		if attach < 0 {
			return errors.New("init: the monitor sent no root filesystem")
		}
		return attachRootfs(attach, dir)
	}
	if attach >= 0 {
		unix.Close(attach)
	}
	err := unix.Mount(m.Source, dir, m.FSType, m.Flags, fmt.Sprintf(m.Data, rootfsFd))
	unix.Close(rootfsFd)
	if err != nil {
		unix.Close(mountedFd)
		return fmt.Errorf("init: mount the root filesystem: %w", err)
	}
	_, err = unix.Write(mountedFd, []byte{1})
	unix.Close(mountedFd)
	if err != nil {
		return fmt.Errorf("init: report the root filesystem mounted: %w", err)
	}
	return nil
}

// joinContainer enters the namespaces of a running container, whose PID
// namespace the starter has already put this process in.
func joinContainer(*Spec, func() error, *resolving) error {
	// Joining a mount namespace takes a thread that shares its root and
	// working directory with no other: this locked one, which the
	// command is started from.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("exec: unshare filesystem attributes: %w", err)
	}
	ns := unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP
	if err := unix.Setns(joinFd, ns); err != nil {
		return fmt.Errorf("exec: join the container's namespaces: %w", err)
	}
	return nil
}

// warmSpec has a value of every type a Spec holds, for init to build its
// decoder with before the spec comes.
const warmSpec = `{"protocol":0,"rootfs":"/r","rootfsMount":{"source":"s","fstype":"t","flags":1,"data":"d","attach":true},` +
	`"args":["a"],"env":["E=1"],"cwd":"/","user":"u","hostname":"h","network":"none","readonlyRootfs":true,` +
	`"mounts":[{"type":"bind","source":"/s","destination":"/d","readOnly":true,"data":"d","copyUp":true}],` +
	`"capabilities":["CAP_KILL"],"privileged":true,"init":true,"tty":true,"consoleSize":{"height":1,"width":1},` +
	`"join":true,"cgroupTasks":["/t"],"files":[{"type":"bind","source":"/s","destination":"/d"}],` +
	`"shmSize":1,"rlimits":[{"name":"nofile","soft":1,"hard":1}]}`

// command is what the container's process runs as (resolveCommand).
type command struct {
	user    *execUser
	env     []string
	cwd     string
	bin     string // the executable, found on PATH
	userErr error
	binErr  error
}

// resolveCommand looks the user up in the container's /etc/passwd and
// /etc/group and the command on its PATH, relative to the working
// directory the command will have, inside root.
func resolveCommand(spec *Spec, root int) *command {
	c := &command{cwd: orDefault(spec.Cwd, "/")}
	if c.user, c.userErr = resolveUser(spec.User, root); c.userErr != nil {
		return c
	}
	c.env = containerEnv(spec.Env, spec.Hostname, c.user.home)
	if len(spec.Args) > 0 {
		c.bin, c.binErr = lookPath(spec.Args[0], envValue(c.env, "PATH"), c.cwd, root)
	}
	return c
}

// startCommand runs the command in the container: exec'd in place, or as
// the child of a reaping init (Spec.Init).
func startCommand(spec *Spec, r *resolving, status *os.File, enterCgroup func() error) (int, error) {
	// What needs nothing of the lookups goes first: they may still be
	// under way, and a thread that waits is slow to wake here.
	if err := enterCgroup(); err != nil {
		return 0, err
	}
	if err := closeOnExecFrom(3); err != nil {
		return 0, fmt.Errorf("init: %w", err)
	}
	c := r.wait()
	if c.userErr != nil {
		return 0, c.userErr
	}
	if err := os.Chdir(c.cwd); err != nil {
		return 0, &InitError{Code: 126, Msg: fmt.Sprintf("working directory %s: %v", c.cwd, err)}
	}
	if len(spec.Args) == 0 {
		return 0, &InitError{Code: 125, Msg: "no command specified"}
	}
	if c.binErr != nil {
		return 0, c.binErr
	}
	u, env, bin := c.user, c.env, c.bin
	if spec.Tty {
		if err := setupTerminal(consoleFd, u.uid, spec.ConsoleSize); err != nil {
			return 0, err
		}
	}
	// While init may still raise a hard limit (CAP_SYS_RESOURCE).
	if err := setRlimits(spec.Rlimits); err != nil {
		return 0, err
	}
	if err := setIdentity(u, spec.Capabilities, spec.Init); err != nil {
		return 0, err
	}
	defaultSignals()
	if spec.Init {
		return reap(bin, spec.Args, env, spec.Tty, status)
	}
	err := unix.Exec(bin, spec.Args, env)
	return 0, execError(spec.Args[0], err)
}

// setRlimits sets the --ulimit limits the command inherits. syscall's
// Setrlimit, not a raw one: for RLIMIT_NOFILE it tells Go not to put back
// the limit init started with when it execs.
func setRlimits(limits []Rlimit) error {
	for _, l := range limits {
		r, ok := rlimitResource(l.Name)
		if !ok {
			return fmt.Errorf("init: unknown ulimit %q", l.Name)
		}
		if err := syscall.Setrlimit(r, &syscall.Rlimit{Cur: l.Soft, Max: l.Hard}); err != nil {
			return fmt.Errorf("init: --ulimit %s=%d:%d: %w", l.Name, l.Soft, l.Hard, err)
		}
	}
	return nil
}

// defaultSignals gives back their default action to the signals this
// process ignores, for the command: exec keeps a signal ignored, and Go
// leaves ignored the signals it found so (SIGHUP and SIGINT, and those it
// does not handle: a detached monitor ignores SIGHUP and SIGINT; strata
// may be started by nohup, or a test harness that ignores signal 32). A
// command would start with them ignored, where a shell cannot even trap
// them and stop -s HUP does nothing; docker's start with none. Only
// ignored ones change: Go handles none of those.
func defaultSignals() {
	for sig := 1; sig <= 64; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		var old kernelSigaction
		if _, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(unsafe.Pointer(&old)), 8, 0, 0); errno != 0 || old.handler != sigIgn {
			continue
		}
		dfl := kernelSigaction{handler: sigDfl}
		unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
	}
}

// kernelSigaction is the kernel's struct sigaction (x86-64, arm64).
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const (
	sigDfl = 0
	sigIgn = 1
)

// openFiles opens files for writing.
func openFiles(paths []string) ([]*os.File, error) {
	var out []*os.File
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// execError classifies a failed exec as docker does.
func execError(name string, err error) *InitError {
	code := 126
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		code = 127
	}
	return &InitError{Code: code, Msg: fmt.Sprintf("exec %q: %v", name, err)}
}

// lookPath finds a command on the container's PATH.
func lookPath(name, pathEnv, cwd string, root int) (string, error) {
	stat := func(p string) (os.FileMode, error) { // p as seen from the working directory
		if !path.IsAbs(p) {
			p = path.Join(cwd, p)
		}
		return statIn(root, p)
	}
	if strings.Contains(name, "/") {
		if _, err := stat(name); err != nil {
			return "", execError(name, err)
		}
		return name, nil
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		p := path.Join(dir, name)
		if !path.IsAbs(p) {
			p = "./" + p
		}
		mode, err := stat(p)
		if err == nil && mode.IsRegular() && mode&0o111 != 0 {
			return p, nil
		}
	}
	return "", &InitError{Code: 127, Msg: fmt.Sprintf("exec %q: executable file not found in $PATH", name)}
}

// statIn is the mode of what p names inside the root, following symlinks
// as the kernel will there.
func statIn(root int, p string) (os.FileMode, error) {
	fd, err := openIn(root, p)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	mode := os.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		mode |= os.ModeDir
	default:
		mode |= os.ModeIrregular
	}
	return mode, nil
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v
		}
	}
	return ""
}

// DefaultPath is the PATH a container gets when its image sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// containerEnv adds what docker always sets: PATH, HOSTNAME and HOME.
func containerEnv(env []string, hostname, home string) []string {
	out := slices.Clone(env)
	if envValue(out, "PATH") == "" && !slices.ContainsFunc(out, func(s string) bool { return strings.HasPrefix(s, "PATH=") }) {
		out = append([]string{"PATH=" + DefaultPath}, out...)
	}
	if !slices.ContainsFunc(out, func(s string) bool { return strings.HasPrefix(s, "HOSTNAME=") }) {
		out = append(out, "HOSTNAME="+hostname)
	}
	if !slices.ContainsFunc(out, func(s string) bool { return strings.HasPrefix(s, "HOME=") }) {
		out = append(out, "HOME="+home)
	}
	return out
}

// closeOnExecFrom marks every descriptor from lowest on close-on-exec, so
// nothing of strata's reaches the command (CVE-2024-21626).
func closeOnExecFrom(lowest int) error {
	if unix.CloseRange(uint(lowest), ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return nil
	}
	// Before Linux 5.11: one by one.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list descriptors: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < lowest {
			continue
		}
		unix.CloseOnExec(fd)
	}
	return nil
}

// setIdentity drops the capabilities not kept from this thread's
// bounding set, switches to the user, and sets the capabilities the
// command starts with: all of keep for root, none for another user (the
// kernel clears them at exec, as for any non-root process).
func setIdentity(u *execUser, keep []string, allThreads bool) error {
	var mask [2]uint32
	for _, c := range keep {
		n, ok := capNames[strings.TrimPrefix(c, "CAP_")]
		if !ok {
			return fmt.Errorf("init: unknown capability %q", c)
		}
		mask[n/32] |= 1 << (n % 32)
	}
	// Capabilities are per thread. The command is exec'd from this one,
	// but a reaping init stays, and its other threads must not keep what
	// the command is denied: then every thread makes the calls, which Go
	// can do unless cgo is linked in (strata's builds have none).
	if allThreads {
		_, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_GET_KEEPCAPS, 0, 0)
		allThreads = errno != syscall.ENOTSUP
	}
	sys := func(trap, a1, a2 uintptr) syscall.Errno {
		var errno syscall.Errno
		if allThreads {
			_, _, errno = syscall.AllThreadsSyscall(trap, a1, a2, 0)
		} else {
			_, _, errno = unix.RawSyscall(trap, a1, a2, 0)
		}
		return errno
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if mask[c/32]&(1<<(c%32)) != 0 {
			continue
		}
		if errno := sys(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c)); errno != 0 && errno != unix.EINVAL {
			return fmt.Errorf("init: drop capability %d: %w", c, errno)
		}
	}
	if errno := sys(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1); errno != 0 {
		return fmt.Errorf("init: keepcaps: %w", errno)
	}
	if err := setIDs(u, allThreads); err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: mask[0], Permitted: mask[0]},
		{Effective: mask[1], Permitted: mask[1]},
	}
	// Pointers are passed in the calls themselves, which keeps them valid.
	var errno syscall.Errno
	if allThreads {
		_, _, errno = syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	} else {
		_, _, errno = unix.RawSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	}
	if errno != 0 {
		return fmt.Errorf("init: set capabilities: %w", errno)
	}
	sys(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 0)
	unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
	return nil
}

// setIDs sets the groups, group and user: on every thread (which Go's
// syscall package does, stopping each thread in turn), or only on this
// one, the one that execs the command, when no other outlives the exec.
func setIDs(u *execUser, allThreads bool) error {
	if allThreads {
		if err := syscall.Setgroups(u.groups); err != nil {
			return fmt.Errorf("init: setgroups: %w", err)
		}
		if err := syscall.Setgid(u.gid); err != nil {
			return fmt.Errorf("init: setgid %d: %w", u.gid, err)
		}
		if err := syscall.Setuid(u.uid); err != nil {
			return fmt.Errorf("init: setuid %d: %w", u.uid, err)
		}
		return nil
	}
	gids := make([]uint32, len(u.groups))
	for i, g := range u.groups {
		gids[i] = uint32(g)
	}
	var list unsafe.Pointer
	if len(gids) > 0 {
		list = unsafe.Pointer(&gids[0])
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gids)), uintptr(list), 0); errno != 0 {
		return fmt.Errorf("init: setgroups: %w", errno)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGID, uintptr(u.gid), 0, 0); errno != 0 {
		return fmt.Errorf("init: setgid %d: %w", u.gid, errno)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETUID, uintptr(u.uid), 0, 0); errno != 0 {
		return fmt.Errorf("init: setuid %d: %w", u.uid, errno)
	}
	return nil
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
