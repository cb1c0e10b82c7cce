package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/fsutil"
)

// Container is one container's configuration, fixed when it is created.
type Container struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Image is the reference as the user gave it; ImageID the config
	// digest; ImageManifest the manifest digest the store pins.
	Image         string    `json:"image"`
	ImageID       string    `json:"imageID"`
	ImageManifest string    `json:"imageManifest"`
	Spec          Spec      `json:"spec"`
	Resources     Resources `json:"resources"`
	// StopSignal is the image's (default SIGTERM); StopTimeout seconds
	// before SIGKILL.
	StopSignal  string `json:"stopSignal,omitempty"`
	StopTimeout int    `json:"stopTimeout"`
	AutoRemove  bool   `json:"autoRemove,omitempty"`
	Interactive bool   `json:"interactive,omitempty"`
	// Volumes are the volumes the container mounts: named ones outlive
	// it, anonymous ones go with `rm -v` and `run --rm`.
	Volumes []VolumeRef `json:"volumes,omitempty"`
	// Labels are the user's (--label), as docker keeps them.
	Labels map[string]string `json:"labels,omitempty"`
	// ExtraHosts are HOST:IP lines for /etc/hosts (--add-host).
	ExtraHosts []string `json:"extraHosts,omitempty"`
	// Annotations carry settings of the layers above the runtime (how the
	// root filesystem is mounted).
	Annotations map[string]string `json:"annotations,omitempty"`
}

// VolumeRef names a volume a container uses.
type VolumeRef struct {
	Name        string `json:"name"`
	Destination string `json:"destination"`
	Anonymous   bool   `json:"anonymous,omitempty"`
}

// The states of a container.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusPaused  = "paused"
	StatusExited  = "exited"
)

// State is what a container is doing; the monitor owns it while it lives.
type State struct {
	Status     string    `json:"status"`
	Pid        int       `json:"pid,omitempty"`
	ExitCode   int       `json:"exitCode"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	OOMKilled  bool      `json:"oomKilled,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// Store keeps containers under <root>/containers/<id>/: config.json
// (whose imageManifest the image store reads), state.json (none until the
// container first starts: it is created), the container layer (upper/,
// the rootfs's mount point) with the union's copy-up staging beside it,
// and container.log once it writes. The monitor locks the directory
// itself. The files the container is given (hostname, hosts,
// resolv.conf) are in memory (runDir).
type Store struct {
	dir string
}

// OpenStore opens (making it) the container store under root.
func OpenStore(root string) (*Store, error) {
	dir := filepath.Join(root, "containers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("container store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir is a container's directory.
func (s *Store) Dir(id string) string { return filepath.Join(s.dir, id) }

// NotFoundError is a container reference that names no container.
type NotFoundError struct{ Ref string }

func (e *NotFoundError) Error() string { return "no such container: " + e.Ref }

// Is makes a container found gone also os.ErrNotExist.
func (e *NotFoundError) Is(target error) bool { return target == os.ErrNotExist }

// validName tells whether s is a container name docker takes:
// [a-zA-Z0-9][a-zA-Z0-9_.-]*, after an optional "/". (Checked by hand: a
// regexp would be compiled as every strata program starts.)
func validName(s string) bool {
	s = strings.TrimPrefix(s, "/")
	for i, r := range s {
		alnum := r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r))
		if !alnum && (i == 0 || (r != '_' && r != '.' && r != '-')) {
			return false
		}
	}
	return s != ""
}

func (s *Store) lock(ctx context.Context) (*fsutil.FileLock, error) {
	return fsutil.Lock(ctx, filepath.Join(s.dir, ".lock"))
}

// Create records a new container: it gets an ID, and a generated name
// when it has none; names are unique.
func (s *Store) Create(ctx context.Context, c *Container) error {
	l, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer l.Unlock()
	all, broken, err := s.list()
	if err != nil {
		return err
	}
	s.removeBroken(broken)
	taken := map[string]string{}
	for _, o := range all {
		taken[o.Name] = o.ID
	}
	if c.Name != "" {
		if !validName(c.Name) {
			return fmt.Errorf("invalid container name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", c.Name)
		}
		c.Name = strings.TrimPrefix(c.Name, "/")
		if id, ok := taken[c.Name]; ok {
			return fmt.Errorf("the container name %q is already in use by container %s: remove or rename that container to reuse the name", c.Name, id[:12])
		}
	} else {
		for c.Name == "" || taken[c.Name] != "" {
			c.Name = randomName()
		}
	}
	var b [32]byte
	rand.Read(b[:])
	c.ID = hex.EncodeToString(b[:])
	c.Created = time.Now().UTC()
	if c.Spec.Hostname == "" {
		c.Spec.Hostname = c.ID[:12]
		// On the host's network a container is named as the host, as
		// docker's are.
		if h, err := os.Hostname(); err == nil && c.Spec.Network == "host" {
			c.Spec.Hostname = h
		}
	}
	dir := s.Dir(c.ID)
	if err := s.makeDir(dir); err != nil {
		return fmt.Errorf("create container: %w", err)
	}
	// One file: a container not started has no state.json (readState),
	// and the image store finds the image in the configuration. Every
	// file made and removed costs a new inode and, on a disk mounted
	// with discard, a discard.
	if err := s.writeConfig(c); err != nil {
		os.RemoveAll(dir)
		return err
	}
	return nil
}

// writeConfig replaces the container's configuration, its one record
// file. That of a container that removes itself when it ends (run --rm)
// is not synced: it must not outlive the container, and after a crash
// one the disk lost part of is removed (removeBroken); the others wait
// for the disk, as a record that outlives crashes must.
func (s *Store) writeConfig(c *Container) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(s.Dir(c.ID), "config.json")
	if c.AutoRemove {
		return fsutil.ReplaceFile(p, b, 0o600)
	}
	return fsutil.WriteFileAtomic(p, b, 0o600)
}

func (s *Store) load(id string) (*Container, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir(id), "config.json"))
	if err != nil {
		return nil, err
	}
	var c Container
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("container %s: config: %w", id, err)
	}
	return &c, nil
}

// List returns every container, newest first.
func (s *Store) List() ([]*Container, error) {
	out, _, err := s.list()
	return out, err
}

// list returns the containers, and the directories that hold none: being
// created or removed, or left broken by a crash.
func (s *Store) list() (cs []*Container, broken []string, err error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		switch {
		case !e.IsDir():
			continue
		case strings.HasPrefix(e.Name(), removing):
			broken = append(broken, e.Name())
			continue
		case e.Name() == spares:
			continue
		}
		c, err := s.load(e.Name())
		if err != nil {
			broken = append(broken, e.Name())
			continue
		}
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Created.After(cs[j].Created) })
	return cs, broken, nil
}

// removeBroken removes, under the store's lock, container directories
// without a readable configuration and the remains of removals. Create
// writes a configuration and Remove removes a directory under the same
// lock, so these are what a crash left: of a container being created, of
// a run --rm container whose unsynced record the disk lost, of a removal.
// A directory whose monitor lives is left alone.
func (s *Store) removeBroken(names []string) {
	for _, name := range names {
		if !strings.HasPrefix(name, removing) {
			if s.MonitorAlive(name) {
				continue
			}
			reapMounts(s.Dir(name))
		}
		os.RemoveAll(s.Dir(name))
	}
}

// removing prefixes the name a container's directory takes while Remove
// deletes it.
const removing = ".rm-"

// Get finds a container by ID, name or unique ID prefix.
func (s *Store) Get(ref string) (*Container, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	ref = strings.TrimPrefix(ref, "/")
	for _, c := range all {
		if c.ID == ref || c.Name == ref {
			return c, nil
		}
	}
	var found *Container
	for _, c := range all {
		if ref != "" && strings.HasPrefix(c.ID, ref) {
			if found != nil {
				return nil, fmt.Errorf("multiple containers match %q: use more of the ID", ref)
			}
			found = c
		}
	}
	if found == nil {
		return nil, &NotFoundError{Ref: ref}
	}
	return found, nil
}

// Rename gives a container a new, unused name.
func (s *Store) Rename(ctx context.Context, c *Container, name string) error {
	l, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer l.Unlock()
	name = strings.TrimPrefix(name, "/")
	if !validName(name) {
		return fmt.Errorf("invalid container name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", name)
	}
	all, err := s.List()
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.Name == name && o.ID != c.ID {
			return fmt.Errorf("the container name %q is already in use by container %s", name, o.ID[:12])
		}
	}
	c.Name = name
	return s.writeConfig(c)
}

// SetState records a container's state. Not synced to the disk: after a
// crash every container has stopped whatever its state says, and a state
// the crash lost reads as exited (readState).
func (s *Store) SetState(id string, st State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return fsutil.ReplaceFile(filepath.Join(s.Dir(id), "state.json"), b, 0o600)
}

// lockMonitor takes the monitor lock, which the process that serves a
// container holds for as long as it lives, so a dead monitor is known
// even after PID reuse: an exclusive flock on the container's directory.
// Those waiting for the monitor to go (WaitExit) take it shared, a
// moment each once it is free; false only when another monitor holds
// it, or those hold it for long.
func (s *Store) lockMonitor(id string) (*fsutil.FileLock, bool) {
	return fsutil.LockDirWithin(s.Dir(id), 100*time.Millisecond, func() bool { return s.monitorHolds(id) })
}

// monitorHolds tells whether a monitor holds the container's lock: then
// not even a shared lock can be had.
func (s *Store) monitorHolds(id string) bool {
	d, err := os.Open(s.Dir(id))
	if err != nil {
		return false // removed: no monitor serves it
	}
	defer d.Close()
	return unix.Flock(int(d.Fd()), unix.LOCK_SH|unix.LOCK_NB) != nil
}

// legacyMonitorLock is the lock file monitors of strata before 2026-12-06
// held instead; one of them may still serve a container.
func (s *Store) legacyMonitorLock(id string) string {
	return filepath.Join(s.Dir(id), "monitor.lock")
}

// MonitorAlive tells whether a monitor serves the container now.
func (s *Store) MonitorAlive(id string) bool {
	if s.monitorHolds(id) {
		return true
	}
	if _, err := os.Stat(s.legacyMonitorLock(id)); err == nil {
		if l, ok := fsutil.TryLock(s.legacyMonitorLock(id)); ok {
			l.Unlock()
		} else {
			return true
		}
	}
	return false
}

// State returns a container's state. A container recorded running whose
// monitor is gone (killed) is cleaned up here: its processes killed, its
// mount detached, and it is marked exited.
func (s *Store) State(id string) (State, error) {
	st, err := s.readState(id)
	if err != nil {
		return st, err
	}
	if (st.Status == StatusRunning || st.Status == StatusPaused) && !s.MonitorAlive(id) {
		l, ok := s.lockMonitor(id)
		if !ok {
			return s.readState(id) // a monitor just started
		}
		defer l.Unlock()
		if st, err = s.readState(id); err != nil || (st.Status != StatusRunning && st.Status != StatusPaused) {
			return st, err
		}
		s.reap(id, st.Pid)
		st.Status, st.ExitCode, st.FinishedAt = StatusExited, 137, time.Now().UTC()
		st.Error = "the container's monitor died"
		st.Pid = 0
		if err := s.SetState(id, st); err != nil {
			return st, err
		}
	}
	return st, nil
}

// reap kills what is left of a container whose monitor died and frees its
// mount and cgroups.
func (s *Store) reap(id string, pid int) {
	cg := OpenCgroup(id)
	cg.Freeze(false)
	if pid > 0 && sameContainer(pid, id) {
		unix.Kill(pid, unix.SIGKILL)
	}
	reapMounts(s.Dir(id))
	removeRunDir(id)
	cg.Remove()
}

// reapMounts detaches what a dead monitor left mounted in a container's
// directory: the root filesystem and the read-only binds of strata-init.
func reapMounts(dir string) {
	unix.Unmount(filepath.Join(dir, "rootfs"), unix.MNT_DETACH)
	detachAll(dir)
}

// sameContainer tells whether pid is still the container's init: its
// cgroup names the container.
func sameContainer(pid int, id string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	return err == nil && strings.Contains(string(b), "/strata/"+id)
}

func (s *Store) readState(id string) (State, error) {
	var st State
	b, err := os.ReadFile(filepath.Join(s.Dir(id), "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		// Never started, if the container is there.
		if _, cerr := os.Stat(filepath.Join(s.Dir(id), "config.json")); cerr != nil {
			if errors.Is(cerr, os.ErrNotExist) { // removed meanwhile
				return st, &NotFoundError{Ref: id[:min(12, len(id))]}
			}
			return st, err
		}
		return State{Status: StatusCreated}, nil
	}
	if err != nil {
		return st, err
	}
	if len(b) == 0 {
		// Written just before a crash, its bytes never reached the disk.
		return State{Status: StatusExited, ExitCode: 255, Error: "state lost in a system crash"}, nil
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("container %s: state: %w", id, err)
	}
	return st, nil
}

// Remove deletes a container that is not running, with its container
// layer and logs.
func (s *Store) Remove(ctx context.Context, c *Container) error {
	l, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer l.Unlock()
	dir := s.Dir(c.ID)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return &NotFoundError{Ref: c.ID[:12]} // removed by another meanwhile
	}
	if s.MonitorAlive(c.ID) {
		return fmt.Errorf("container %s is running: stop it first, or use rm -f", c.ID[:12])
	}
	// Those waiting for the container (Wait) read its exit before it
	// goes: a while at most, as a waiter may be stopped.
	upper := filepath.Join(dir, "upper")
	noUpper := func() bool { _, err := os.Stat(upper); return err != nil }
	if l, ok := fsutil.LockDirWithin(upper, time.Second, noUpper); ok {
		defer l.Unlock()
	}
	reapMounts(dir)
	// Rename first, so a half-removed container never lists.
	gone := filepath.Join(s.dir, removing+c.ID)
	if err := os.Rename(dir, gone); err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID[:12], err)
	}
	removeRunDir(c.ID) // a killed monitor's
	return s.recycle(gone)
}

// spares is the directory, in the store, of emptied container directories
// kept for new containers, maxSpares the most it keeps. On a disk mounted
// with discard (as cloud disks often are) removing a directory costs a
// discard of its block, 0.1–0.2 ms each here, where making one costs
// 10 µs: a container started and removed (run --rm) would pay for two,
// its directory and its container layer's, on the path of every start.
const (
	spares    = ".spare"
	maxSpares = 4
)

// makeDir makes a container's directory: a spare one renamed into place,
// with its empty container layer, or a new one.
func (s *Store) makeDir(dir string) error {
	names, _ := dirNames(filepath.Join(s.dir, spares))
	for _, name := range names {
		if os.Rename(filepath.Join(s.dir, spares, name), dir) == nil {
			// The container layer's root shows in the container as its
			// root directory: its times are the container's.
			unix.UtimesNano(filepath.Join(dir, "upper"), nil)
			return nil
		}
	}
	return os.Mkdir(dir, 0o700)
}

// recycle empties a removed container's directory into a spare one, or
// removes it when there are spares enough. The container layer's
// directory stays only when it is empty and as run makes it: a container
// may have changed its root's owner, mode or extended attributes, which
// the next container must not inherit.
func (s *Store) recycle(gone string) error {
	names, err := dirNames(filepath.Join(s.dir, spares))
	if err != nil && !errors.Is(err, os.ErrNotExist) || len(names) >= maxSpares {
		return os.RemoveAll(gone)
	}
	ents, err := dirNames(gone)
	if err != nil {
		return os.RemoveAll(gone)
	}
	for _, name := range ents {
		p := filepath.Join(gone, name)
		if name == "upper" && asMade(p, 0o755) && emptyDir(p) {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	if !asMade(gone, 0o700) {
		return os.RemoveAll(gone)
	}
	if err := os.Mkdir(filepath.Join(s.dir, spares), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return os.RemoveAll(gone)
	}
	if os.Rename(gone, filepath.Join(s.dir, spares, strings.TrimPrefix(filepath.Base(gone), removing))) != nil {
		return os.RemoveAll(gone)
	}
	return nil
}

// asMade tells whether p is a directory as this process makes one with
// perm: that mode, its owner, and no extended attributes (no ACL either).
func asMade(p string, perm uint32) bool {
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil || st.Mode != unix.S_IFDIR|perm || int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() {
		return false
	}
	n, err := unix.Llistxattr(p, nil)
	return err == nil && n == 0
}

// emptyDir tells whether the directory dir has no entries.
func emptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	return err == io.EOF
}

// dirNames lists dir's names, unsorted.
func dirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// Wait waits until the container's monitor is gone, or ctx is done, and
// returns the state it left. From before it waits until it has read the
// state it holds a shared lock on the container layer's directory, which
// a removal takes exclusively first (Remove): so a container removed as
// it ends (run --rm) still gives its waiters its exit, as docker's does.
func (s *Store) Wait(ctx context.Context, id string) (State, error) {
	upper := filepath.Join(s.Dir(id), "upper")
	if l, ok := fsutil.TryLockDir(upper, true); ok {
		defer l.Unlock()
	} else if _, err := os.Stat(upper); err == nil {
		return State{}, &NotFoundError{Ref: id[:12]} // being removed
	}
	if err := s.WaitExit(ctx, id); err != nil {
		return State{}, err
	}
	st, err := s.State(id)
	if errors.Is(err, os.ErrNotExist) {
		return st, &NotFoundError{Ref: id[:12]} // removed meanwhile
	}
	return st, err
}

// WaitExit waits until the container's monitor is gone, or ctx is done.
func (s *Store) WaitExit(ctx context.Context, id string) error {
	if err := waitUnlocked(ctx, s.Dir(id), os.O_RDONLY|unix.O_DIRECTORY); errors.Is(err, os.ErrNotExist) {
		return nil // removed: its monitor is gone
	} else if err != nil {
		return err
	}
	if _, err := os.Stat(s.legacyMonitorLock(id)); err == nil {
		return waitUnlocked(ctx, s.legacyMonitorLock(id), os.O_RDWR)
	}
	return nil
}

// waitUnlocked waits until no one holds a flock on path (opened with
// flags), or ctx is done.
func waitUnlocked(ctx context.Context, path string, flags int) error {
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	done := make(chan error, 1)
	go func() { done <- flockWait(int(f.Fd()), unix.LOCK_SH) }()
	select {
	case err := <-done:
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return err
	case <-ctx.Done():
		f.Close() // ends the flock wait with EBADF
		return ctx.Err()
	}
}

// Signal sends sig to a running container's first process.
func (s *Store) Signal(id string, sig syscall.Signal) error {
	st, err := s.State(id)
	if err != nil {
		return err
	}
	if st.Status != StatusRunning && st.Status != StatusPaused {
		return fmt.Errorf("container %s %w", id[:12], ErrNotRunning)
	}
	if err := unix.Kill(st.Pid, sig); err != nil {
		if errors.Is(err, unix.ESRCH) { // it ended since its state was read
			return fmt.Errorf("container %s %w", id[:12], ErrNotRunning)
		}
		return fmt.Errorf("signal container %s: %w", id[:12], err)
	}
	return nil
}

var (
	nameLeft  = []string{"brave", "calm", "eager", "fond", "gifted", "happy", "jolly", "keen", "lucid", "merry", "nifty", "quirky", "serene", "sharp", "vivid", "wise", "zen", "bold", "cool", "dreamy"}
	nameRight = []string{"babbage", "curie", "darwin", "euclid", "fermi", "gauss", "hopper", "kepler", "lovelace", "meitner", "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wozniak", "yalow", "hamilton", "knuth"}
)

func randomName() string {
	pick := func(l []string) string {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(l))))
		return l[n.Int64()]
	}
	return pick(nameLeft) + "_" + pick(nameRight)
}
