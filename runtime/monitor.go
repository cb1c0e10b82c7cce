package runtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RootfsMounter provides a container's root filesystem: its image's
// layers under the container layer in upper (with work beside it). The
// runtime does not know where images come from. Where the image lacks
// one of points, the mounter provides it beneath the image's layers, as
// Docker's init layer does, so that it need not be made in the container
// layer at every start (and removed at every rm).
type RootfsMounter interface {
	// device is the FUSE device init mounts (a copy stays with the
	// caller).
	PrepareRootfs(ctx context.Context, c *Container, upper, work string, points []MountPoint, device *os.File) (*Rootfs, error)
}

// Rootfs is a root filesystem the container's init mounts, in the
// container's own mount namespace, from a device: only the container
// sees it, and it goes with the container's last process, so nothing is
// mounted in the host's namespace to remove, or to leave behind when the
// monitor is killed.
type Rootfs struct {
	Mount DeviceMount
	// Serve serves the file system once init has mounted it.
	Serve func() error
	// Release ends it once the container is gone.
	Release func()
}

// MountPoint is a path that every container's set-up mounts on.
type MountPoint struct {
	Path string // absolute, inside the container
	Dir  bool   // a directory; else a file, for a bind mount of a file
}

// mountPoints are the mount points of a container: /proc, /dev and /sys,
// and the files it is given.
func mountPoints(files []Mount) []MountPoint {
	out := []MountPoint{{Path: "/proc", Dir: true}, {Path: "/dev", Dir: true}, {Path: "/sys", Dir: true}}
	for _, f := range files {
		out = append(out, MountPoint{Path: f.Destination})
	}
	return out
}

// RunOptions are how a monitor connects a container to its caller.
type RunOptions struct {
	// Stdin is the container's standard input; nil is /dev/null.
	Stdin *os.File
	// Terminal is the caller's terminal, whose size a container with a
	// terminal of its own (Spec.Tty) follows; nil when detached.
	Terminal *os.File
	// Stdout and Stderr get the container's output besides its log; nil
	// for the log only (detached).
	Stdout, Stderr io.Writer
	// Started is called once the command runs.
	Started func()
	// Signals are forwarded to the container's first process.
	Signals <-chan os.Signal
	// Launched, when set, is the container's init, launched by the caller
	// with the container's Network and Tty and with Stdin; Run starts or
	// aborts it. Else, or when that launch failed, Run launches one.
	Launched *Launcher
}

// ErrRunning is returned when a container already has a monitor.
var ErrRunning = errors.New("container is already running")

// Run is the monitor: it mounts the container's root filesystem, starts
// its command, logs its output, forwards signals, and when the command
// ends records its exit code and unmounts. It holds the container's
// monitor lock for as long as it lives. The exit code is docker's: the
// command's own, 128+N on signal N, 126/127 when it cannot be run, 125
// when strata failed.
func (s *Store) Run(ctx context.Context, c *Container, m RootfsMounter, o RunOptions) (int, error) {
	defer o.Launched.Abort() // once started, it runs on
	lock, ok := s.lockMonitor(c.ID)
	if !ok {
		return 125, fmt.Errorf("container %s: %w", c.ID[:12], ErrRunning)
	}
	defer lock.Unlock()
	if _, err := s.readState(c.ID); err != nil {
		return 125, err
	}
	code, err := s.run(ctx, c, m, o)
	// Finish the state run recorded: its StartedAt and OOMKilled stand.
	st, _ := s.readState(c.ID)
	st.Status, st.Pid, st.ExitCode, st.FinishedAt, st.Error = StatusExited, 0, code, time.Now().UTC(), ""
	if err != nil {
		st.Error = err.Error()
	}
	if serr := s.SetState(c.ID, st); serr != nil && err == nil {
		err = serr
	}
	return code, err
}

func (s *Store) run(ctx context.Context, c *Container, m RootfsMounter, o RunOptions) (int, error) {
	dir := s.Dir(c.ID)
	var l *Launched
	if o.Launched != nil {
		l, _ = o.Launched.Wait()
	}
	if l == nil {
		var err error
		l, err = Launch(LaunchOptions{Network: c.Spec.Network, Tty: c.Spec.Tty, Stdin: o.Stdin, fallback: filepath.Join(dir, "init")})
		if err != nil {
			return 125, err
		}
	}
	// Until it is started, init waits: the container is made meanwhile.
	defer l.Abort()
	// The command's output: Abort closes it until the copies below take
	// it, and they close it at its end.
	outR, errR := l.Stdout, l.Stderr
	// The cgroups are made while the rootfs is prepared.
	var cg *Cgroup
	var cgErr error
	cgReady := make(chan struct{})
	go func() {
		defer close(cgReady)
		cg, cgErr = NewCgroup(c.ID, c.Resources)
	}()
	var moving sync.WaitGroup // a reaping init's move into them
	removeCgroups := sync.OnceFunc(func() {
		<-cgReady
		moving.Wait()
		if cg != nil {
			cg.Remove()
		}
	})
	defer removeCgroups()
	// The container's directory is the union's work directory (it stages
	// copy-ups in a directory of its own there, made at the first), and
	// init mounts the root filesystem over the upper directory, in the
	// container's mount namespace, where nothing else uses it: one
	// directory, not three, to make and remove with every container.
	upper, work := filepath.Join(dir, "upper"), dir
	if err := os.MkdirAll(upper, 0o755); err != nil {
		return 125, err
	}
	spec := c.Spec
	spec.Rootfs = upper
	etc := runDir(c.ID)
	if etc == "" || os.Mkdir(etc, 0o700) != nil {
		etc = dir
	} else {
		defer os.RemoveAll(etc)
	}
	files, err := writeEtcFiles(etc, spec.Hostname, spec.Network, c.ExtraHosts)
	if err != nil {
		return 125, err
	}
	spec.Files = append(files, spec.Files...)
	fs, err := m.PrepareRootfs(ctx, c, upper, work, mountPoints(files), l.Device)
	if err != nil {
		return 125, err
	}
	defer fs.Release()
	l.ServeRootfs(fs)

	logw := openLog(filepath.Join(dir, "container.log"))
	defer logw.Close()
	var copying sync.WaitGroup
	copying.Add(2)
	go func() { defer copying.Done(); logw.copy(outR, "stdout", o.Stdout) }()
	go func() { defer copying.Done(); logw.copy(errR, "stderr", o.Stderr) }()

	if spec.Tty && o.Terminal != nil {
		spec.ConsoleSize = TerminalSize(o.Terminal)
	}
	<-cgReady
	if cgErr != nil {
		l.Abort()
		copying.Wait()
		return 125, cgErr
	}
	// On v1 init's thread enters the cgroups itself, at no wait; else
	// init is placed in them before it runs the command.
	var place func(pid int) error
	spec.CgroupTasks, place = cg.placement()
	p, err := l.Start(&spec, place, fs)
	if err != nil {
		copying.Wait()
		var ie *InitError
		if errors.As(err, &ie) {
			return ie.Code, err
		}
		return 125, err
	}
	if spec.Init && place == nil {
		// A reaping init lives on beside the command: its other threads
		// join too, while the command runs. (Gone already: nothing to
		// move.)
		moving.Go(func() { cg.Add(p.Pid) })
	}
	if p.Console != nil {
		copying.Add(1)
		go func() { defer copying.Done(); logw.copy(p.Console, "stdout", o.Stdout) }()
		if o.Stdin != nil {
			go io.Copy(p.Console, o.Stdin)
		}
		if o.Terminal != nil {
			defer FollowTerminalSize(p.Console, o.Terminal)()
		}
	}
	if err := s.SetState(c.ID, State{Status: StatusRunning, Pid: p.Pid, StartedAt: time.Now().UTC()}); err != nil {
		p.Signal(syscall.SIGKILL)
		p.Wait()
		return 125, err
	}
	if o.Started != nil {
		o.Started()
	}
	stopForward := p.Forward(o.Signals)
	code, err := p.Wait()
	stopForward()
	copying.Wait()
	if cg.OOMKilled() {
		if st, rerr := s.readState(c.ID); rerr == nil {
			st.OOMKilled = true
			s.SetState(c.ID, st)
		}
	}
	// The container's processes are gone: its cgroups go while its root
	// filesystem is unmounted.
	go removeCgroups()
	return code, err
}

// runDir is where a running container's hostname, hosts and resolv.conf
// go, written anew at every start: in memory, where making and removing
// them costs a fraction of what it costs on the store's disk. It is
// /run/strata/ID when /run is a tmpfs, else /dev/shm/strata/ID (as
// podman keeps its locks there); "" when neither is a tmpfs, or when
// /dev/shm/strata is not root's own directory (anyone can make names in
// /dev/shm).
func runDir(id string) string {
	for _, d := range []string{"/run", "/dev/shm"} {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) != nil || st.Type != unix.TMPFS_MAGIC {
			continue
		}
		base := filepath.Join(d, "strata")
		if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return ""
		}
		var own unix.Stat_t
		if unix.Lstat(base, &own) != nil || own.Mode&unix.S_IFMT != unix.S_IFDIR || own.Uid != uint32(os.Geteuid()) || own.Mode&0o077 != 0 {
			return ""
		}
		return filepath.Join(base, id)
	}
	return ""
}

// removeRunDir removes what runDir holds for a container, wherever it is.
func removeRunDir(id string) {
	for _, d := range []string{"/run/strata", "/dev/shm/strata"} {
		os.RemoveAll(filepath.Join(d, id))
	}
}

// writeEtcFiles writes the hostname, hosts and resolv.conf the container
// gets, and returns them as the mounts that put them in place.
func writeEtcFiles(dir, hostname, network string, extraHosts []string) ([]Mount, error) {
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if network == "host" {
		if b, err := os.ReadFile("/etc/hosts"); err == nil {
			hosts = string(b)
		}
	} else {
		hosts += "127.0.0.1\t" + hostname + "\n"
	}
	for _, h := range extraHosts {
		name, ip, _ := strings.Cut(h, ":")
		hosts += ip + "\t" + name + "\n"
	}
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	files := []struct{ name, data string }{
		{"hostname", hostname + "\n"},
		{"hosts", hosts},
		{"resolv.conf", string(resolv)},
	}
	var out []Mount
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, []byte(f.data), 0o644); err != nil {
			return nil, err
		}
		out = append(out, Mount{Type: "bind", Source: p, Destination: "/etc/" + f.name})
	}
	return out, nil
}

// LogEntry is one line of a container's output, in docker's json-file
// format.
type LogEntry struct {
	Log    string    `json:"log"`
	Stream string    `json:"stream"`
	Time   time.Time `json:"time"`
}

// logWriter logs a container's output to its file, made at the first
// line: a container that writes nothing makes no file (ReadLogs reads a
// missing one as empty), and a file made and removed costs a start.
type logWriter struct {
	path string
	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	err  error // the file could not be made
}

func openLog(p string) *logWriter { return &logWriter{path: p} }

// copy passes what r gives on to also (when set) as it comes, and logs it
// line by line as stream.
func (l *logWriter) copy(r *os.File, stream string, also io.Writer) {
	defer r.Close()
	buf := make([]byte, 32<<10)
	var line []byte
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if also != nil {
				also.Write(buf[:n])
			}
			line = append(line, buf[:n]...)
			rest := line
			for {
				i := bytes.IndexByte(rest, '\n')
				// Docker splits long lines in 16 KiB entries.
				if i < 0 && len(rest) >= 16<<10 {
					i = 16<<10 - 1
				}
				if i < 0 {
					break
				}
				l.entry(rest[:i+1], stream)
				rest = rest[i+1:]
			}
			line = append(line[:0], rest...)
		}
		if err != nil {
			// A terminal's master side ends with EIO once the process is gone.
			if len(line) > 0 {
				l.entry(line, stream)
			}
			return
		}
	}
}

func (l *logWriter) entry(b []byte, stream string) {
	e, _ := json.Marshal(LogEntry{Log: string(b), Stream: stream, Time: time.Now().UTC()})
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil && l.err == nil {
		if l.f, l.err = os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|unix.O_CLOEXEC, 0o600); l.err == nil {
			l.w = bufio.NewWriter(l.f)
		}
	}
	if l.err != nil {
		return // the caller still gets the output; the log goes without
	}
	l.w.Write(append(e, '\n'))
	// Flushed per line so `logs -f` sees output as it comes.
	l.w.Flush()
}

func (l *logWriter) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	l.w.Flush()
	return l.f.Close()
}

// ReadLogs returns a container's log entries from byte offset on, and
// the offset after the last whole entry read, where the next call goes on.
func (s *Store) ReadLogs(id string, offset int64) ([]LogEntry, int64, error) {
	f, err := os.Open(filepath.Join(s.Dir(id), "container.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, offset, nil
	}
	if err != nil {
		return nil, offset, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, offset, err
	}
	var out []LogEntry
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			// A line being written is read whole next time.
			if err == io.EOF {
				err = nil
			}
			return out, offset, err
		}
		offset += int64(len(line))
		var e LogEntry
		if json.Unmarshal(line, &e) == nil {
			out = append(out, e)
		}
	}
}

// LogPath is the file a container's output is logged to.
func (s *Store) LogPath(id string) string { return filepath.Join(s.Dir(id), "container.log") }

// ParseSignal reads a signal by name (KILL, SIGKILL) or number.
func ParseSignal(s string) (syscall.Signal, error) {
	u := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	for n := syscall.Signal(1); n < 65; n++ {
		name := strings.TrimPrefix(strings.ToUpper(unix.SignalName(n)), "SIG")
		if name != "" && name == u {
			return n, nil
		}
	}
	var n int
	if _, err := fmt.Sscan(s, &n); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("invalid signal %q", s)
}
