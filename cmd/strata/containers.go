package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/fusefs"
	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/gctune"
	"github.com/stratafs/strata/internal/term"
	"github.com/stratafs/strata/layertree"
	"github.com/stratafs/strata/lazypull"
	"github.com/stratafs/strata/runtime"
	"github.com/stratafs/strata/volumes"
)

// backgroundFetchAnnotation is "false" on a container made with
// --background-fetch=false: its lazy layers are only read on demand.
const backgroundFetchAnnotation = "strata.background-fetch"

// Exit codes of docker run for strata's own failures.
const exitRunFailure = 125

// createFlags are the flags run and create share.
type createFlags struct {
	name, workdir, user, entrypoint, hostname, network, pull, platform string
	memory, stopSignal, shmSize                                        string
	env, envFiles, volumes, mounts, tmpfs, capAdd, capDrop             []string
	addHosts, labels, ulimits                                          []string
	interactive, tty, rm, readOnly, privileged, init, lazy, background bool
	cpus                                                               float64
	pidsLimit                                                          int64
	stopTimeout                                                        int
	entrypointSet                                                      bool
}

func (f *createFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.name, "name", "", "assign a name to the container")
	fs.StringVarP(&f.workdir, "workdir", "w", "", "working directory inside the container")
	fs.StringVarP(&f.user, "user", "u", "", "user to run as: NAME|UID[:GROUP|GID]")
	fs.StringVar(&f.entrypoint, "entrypoint", "", "override the image's entrypoint")
	fs.StringVarP(&f.hostname, "hostname", "h", "", "container host name (default: the short ID)")
	fs.StringVar(&f.network, "network", "none", "network: none (own namespace with lo up) or host")
	fs.StringVar(&f.pull, "pull", "missing", "pull the image: missing, always or never")
	fs.StringVar(&f.platform, "platform", "", "pull the image for this platform (os/arch[/variant])")
	fs.StringVarP(&f.memory, "memory", "m", "", "memory limit (e.g. 64m, 1g)")
	fs.Float64Var(&f.cpus, "cpus", 0, "number of CPUs (e.g. 0.5)")
	fs.Int64Var(&f.pidsLimit, "pids-limit", 0, "maximum number of processes")
	fs.StringVar(&f.stopSignal, "stop-signal", "", "signal to stop the container (default: the image's, else SIGTERM)")
	fs.IntVar(&f.stopTimeout, "stop-timeout", 10, "seconds to wait for stop before SIGKILL")
	fs.StringArrayVarP(&f.env, "env", "e", nil, "set environment variable KEY=VALUE (KEY alone: from this environment)")
	fs.StringArrayVar(&f.envFiles, "env-file", nil, "read environment variables from a file")
	fs.StringArrayVarP(&f.volumes, "volume", "v", nil, "mount a volume: NAME:/PATH[:ro], /HOST/PATH:/PATH[:ro] or /PATH (anonymous)")
	fs.StringArrayVar(&f.mounts, "mount", nil, "mount: type=bind|volume|tmpfs,src=…,dst=…[,readonly][,volume-nocopy][,tmpfs-size=…][,tmpfs-mode=…]")
	fs.StringArrayVar(&f.tmpfs, "tmpfs", nil, "mount a tmpfs: /PATH[:size=…,mode=…]")
	fs.StringArrayVar(&f.addHosts, "add-host", nil, "add a line to /etc/hosts: HOST:IP")
	fs.StringArrayVarP(&f.labels, "label", "l", nil, "set a label: KEY=VALUE (KEY alone: empty)")
	fs.StringVar(&f.shmSize, "shm-size", "", "size of /dev/shm (default 64m)")
	fs.StringArrayVar(&f.ulimits, "ulimit", nil, "set a resource limit: NAME=SOFT[:HARD] (-1: unlimited)")
	fs.StringArrayVar(&f.capAdd, "cap-add", nil, "add a Linux capability")
	fs.StringArrayVar(&f.capDrop, "cap-drop", nil, "drop a Linux capability")
	fs.BoolVarP(&f.interactive, "interactive", "i", false, "keep standard input open")
	fs.BoolVarP(&f.tty, "tty", "t", false, "allocate a terminal")
	fs.BoolVar(&f.rm, "rm", false, "remove the container (and its anonymous volumes) when it exits")
	fs.BoolVar(&f.readOnly, "read-only", false, "mount the container's root filesystem read-only")
	fs.BoolVar(&f.privileged, "privileged", false, "give the container all capabilities, the host's devices, no masked paths")
	fs.BoolVar(&f.init, "init", false, "run a reaping init as PID 1, the command its child")
	fs.BoolVar(&f.lazy, "lazy", true, "pull eStargz layers lazily (false: whole)")
	fs.BoolVar(&f.background, "background-fetch", true, "fetch lazy layers whole in the background while the container runs")
}

// imageFor finds the image, pulling it as --pull says.
func (a *app) imageFor(ctx context.Context, ref, pull, platform string, lazy bool) (*lazypull.ImageRecord, error) {
	s, err := a.Store()
	if err != nil {
		return nil, err
	}
	switch pull {
	case "missing", "always", "never":
	default:
		return nil, &usageError{msg: fmt.Sprintf("invalid --pull %q: want missing, always or never", pull)}
	}
	rec, err := s.Lookup(ref)
	// An image of another platform than --platform asks is as missing,
	// as docker has it.
	if err == nil && !platformMatches(rec.Platform, platform) {
		err = fmt.Errorf("%w: %s is here for %s, not %s", lazypull.ErrImageNotFound, ref, rec.Platform, platform)
	}
	if err == nil && pull != "always" {
		if err := a.servable(rec); err != nil {
			return nil, err
		}
		a.remember(rec)
		return rec, nil
	}
	if pull == "never" {
		return nil, fmt.Errorf("%w (and --pull never)", err)
	}
	missing := err != nil // else --pull always
	if rec, err = a.pull(ctx, s, ref, platform, lazy, missing); err != nil {
		return nil, err
	}
	a.remember(rec)
	return rec, nil
}

// parseHostFlags reads --add-host, --label, --ulimit and --shm-size.
func parseHostFlags(f *createFlags) (hosts []string, labels map[string]string, limits []runtime.Rlimit, shm int64, err error) {
	for _, h := range f.addHosts {
		name, ip, _ := strings.Cut(h, ":")
		if _, perr := netip.ParseAddr(strings.Trim(ip, "[]")); name == "" || perr != nil {
			return nil, nil, nil, 0, &usageError{msg: fmt.Sprintf("invalid --add-host %q: want HOST:IP", h)}
		}
		hosts = append(hosts, name+":"+strings.Trim(ip, "[]"))
	}
	for _, l := range f.labels {
		k, v, _ := strings.Cut(l, "=")
		if k == "" {
			return nil, nil, nil, 0, &usageError{msg: fmt.Sprintf("invalid --label %q: want KEY=VALUE", l)}
		}
		if labels == nil {
			labels = map[string]string{}
		}
		labels[k] = v
	}
	for _, u := range f.ulimits {
		r, perr := runtime.ParseUlimit(u)
		if perr != nil {
			return nil, nil, nil, 0, &usageError{msg: perr.Error()}
		}
		limits = append(limits, r)
	}
	if f.shmSize != "" {
		if shm, err = parseBytes(f.shmSize); err != nil || shm <= 0 {
			return nil, nil, nil, 0, &usageError{msg: fmt.Sprintf("invalid --shm-size %q: want a size such as 64m", f.shmSize)}
		}
	}
	return hosts, labels, limits, shm, nil
}

// platformMatches tells whether an image of platform have (os/arch or
// os/arch/variant, as the store records it) is one of want (empty: any).
func platformMatches(have, want string) bool {
	return want == "" || have == want || strings.HasPrefix(have, want+"/")
}

func (a *app) remember(rec *lazypull.ImageRecord) {
	if a.looked == nil {
		a.looked = map[string]*lazypull.ImageRecord{}
	}
	a.looked[rec.ConfigDigest] = rec
}

// newContainer creates a container from the flags, the image and the
// command line, as docker create does.
func (a *app) newContainer(ctx context.Context, f *createFlags, image string, args []string) (*runtime.Container, error) {
	if f.network != "none" && f.network != "host" {
		return nil, &usageError{msg: fmt.Sprintf("invalid --network %q: want none or host", f.network)}
	}
	res := runtime.Resources{CPUs: f.cpus, PidsLimit: f.pidsLimit}
	if f.memory != "" {
		n, err := parseBytes(f.memory)
		if err != nil {
			return nil, &usageError{msg: fmt.Sprintf("invalid --memory: %v", err)}
		}
		if n < 6<<20 {
			return nil, &usageError{msg: "--memory: the minimum is 6m"}
		}
		res.Memory = n
	}
	if f.cpus < 0 || f.pidsLimit < 0 {
		return nil, &usageError{msg: "--cpus and --pids-limit must not be negative"}
	}
	caps := runtime.DefaultCapabilities()
	if f.privileged {
		caps = runtime.AllCapabilities()
	}
	caps, err := runtime.Capabilities(caps, f.capAdd, f.capDrop)
	if err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	extra, labels, limits, shm, err := parseHostFlags(f)
	if err != nil {
		return nil, err
	}
	stopSignal := f.stopSignal
	if stopSignal != "" {
		if _, err := runtime.ParseSignal(stopSignal); err != nil {
			return nil, &usageError{msg: "--stop-signal: " + err.Error()}
		}
	}
	specs, err := parseMountFlags(f.volumes, f.mounts, f.tmpfs)
	if err != nil {
		return nil, err
	}
	rec, err := a.imageFor(ctx, image, f.pull, f.platform, f.lazy)
	if err != nil {
		return nil, err
	}
	// Read once the image is here: a strata without registry code hands
	// the command to strata-full before, and an --env-file that is a pipe
	// can be read only once.
	env, err := envFromFlags(f.env, f.envFiles)
	if err != nil {
		return nil, err
	}
	cfg, err := a.store.Config(rec)
	if err != nil {
		return nil, err
	}
	ic := cfg.Config
	entry := ic.Entrypoint
	cmd := ic.Cmd
	if f.entrypointSet {
		entry, cmd = nil, nil
		if f.entrypoint != "" {
			entry = []string{f.entrypoint}
		}
	}
	if len(args) > 0 {
		cmd = args
	}
	argv := append(slices.Clone(entry), cmd...)
	if len(argv) == 0 {
		return nil, errors.New("no command specified: the image has none, give one after the image name")
	}
	if stopSignal == "" {
		stopSignal = ic.StopSignal
	}
	workdir := ic.WorkingDir
	if f.workdir != "" {
		workdir = f.workdir
	}
	if workdir != "" && !path.IsAbs(workdir) {
		return nil, &usageError{msg: fmt.Sprintf("the working directory %q is invalid: it needs to be an absolute path", workdir)}
	}
	user := ic.User
	if f.user != "" {
		user = f.user
	}
	// The image's volumes that no mount covers become anonymous volumes.
	for v := range ic.Volumes {
		if !slices.ContainsFunc(specs, func(m mountSpec) bool { return path.Clean(m.dst) == path.Clean(v) }) {
			specs = append(specs, mountSpec{kind: "volume", dst: path.Clean(v), copyUp: true})
		}
	}
	c := &runtime.Container{
		Name: f.name, Image: image, ImageID: rec.ConfigDigest, ImageManifest: rec.ManifestDigest,
		Spec: runtime.Spec{
			Args: argv, Env: append(slices.Clone(ic.Env), env...), Cwd: workdir, User: user,
			Hostname: f.hostname, Network: f.network, ReadonlyRootfs: f.readOnly,
			Capabilities: caps, Privileged: f.privileged, Tty: f.tty, Init: f.init,
			ShmSize: shm, Rlimits: limits,
		},
		Resources: res, StopSignal: stopSignal, StopTimeout: f.stopTimeout,
		AutoRemove: f.rm, Interactive: f.interactive, Labels: labels, ExtraHosts: extra,
	}
	if !f.background {
		c.Annotations = map[string]string{backgroundFetchAnnotation: "false"}
	}
	vs, err := volumes.Open(a.root)
	if err != nil {
		return nil, err
	}
	var made []string // volumes made here, removed if creation fails
	undo := func() {
		for _, n := range made {
			vs.Remove(ctx, n, func(string) []string { return nil })
		}
	}
	for _, m := range specs {
		mnt, ref, created, err := m.resolve(ctx, vs)
		if err != nil {
			undo()
			return nil, err
		}
		if created {
			made = append(made, ref.Name)
		}
		c.Spec.Mounts = append(c.Spec.Mounts, mnt)
		if ref.Name != "" {
			c.Volumes = append(c.Volumes, ref)
		}
	}
	cs, err := runtime.OpenStore(a.root)
	if err != nil {
		return nil, err
	}
	if err := cs.Create(ctx, c); err != nil {
		undo()
		return nil, err
	}
	// A volume removed between its making above and the container's
	// record (which now keeps it from removal) is made again, empty, as
	// for a run after the removal.
	for _, ref := range c.Volumes {
		if _, _, err := vs.Create(ctx, ref.Name, ref.Anonymous); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// envFromFlags reads --env-file files, then -e.
func envFromFlags(env, files []string) ([]string, error) {
	var out []string
	add := func(kv, where string) error {
		k, _, hasValue := strings.Cut(kv, "=")
		if k == "" || strings.ContainsAny(k, " \t") {
			return &usageError{msg: fmt.Sprintf("invalid environment variable %q%s", kv, where)}
		}
		if !hasValue {
			v, ok := os.LookupEnv(k)
			if !ok {
				return nil // docker drops unset variables
			}
			kv = k + "=" + v
		}
		out = append(out, kv)
		return nil
	}
	for _, p := range files {
		fh, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("--env-file: %w", err)
		}
		sc := bufio.NewScanner(fh)
		line := 0
		for sc.Scan() {
			line++
			t := strings.TrimLeft(sc.Text(), " \t")
			if t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			if err := add(t, fmt.Sprintf(" in %s line %d", p, line)); err != nil {
				fh.Close()
				return nil, err
			}
		}
		err = sc.Err()
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("--env-file %s: %w", p, err)
		}
	}
	for _, e := range env {
		if err := add(e, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// parseBytes reads a size like 64m, 1g, 512k or a byte count.
func parseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "b")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			mult, t = 1<<10, t[:n-1]
		case 'm':
			mult, t = 1<<20, t[:n-1]
		case 'g':
			mult, t = 1<<30, t[:n-1]
		case 't':
			mult, t = 1<<40, t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a size (like 64m or 1g)", s)
	}
	return int64(f * float64(mult)), nil
}

// imageUnion is the union of an image's layers, and of the layers below
// them, under upper (none: read-only). Lazy layers fetch their
// prioritized files at once and, with background, the rest after, until
// ctx ends.
func (a *app) imageUnion(ctx context.Context, rec *lazypull.ImageRecord, upper, work string, background bool, onOpen func(string), below ...layertree.Tree) (*fusefs.Union, error) {
	layers, err := a.layerTrees(ctx, rec, background)
	if err != nil {
		return nil, err
	}
	return fusefs.New(fusefs.Options{Layers: append(layers, below...), UpperDir: upper, WorkDir: work, Logger: a.log, OnOpen: onOpen})
}

// storeMounter mounts containers' root filesystems from the image store
// through the union filesystem, served by the calling monitor.
type storeMounter struct {
	a *app
	// onOpen receives the access log (convert --optimize).
	onOpen func(string)
}

func (m storeMounter) PrepareRootfs(ctx context.Context, c *runtime.Container, upper, work string, points []runtime.MountPoint, device *os.File) (*runtime.Rootfs, error) {
	s, err := m.a.Store()
	if err != nil {
		return nil, err
	}
	rec, ok := m.a.looked[c.ImageID]
	if !ok {
		if rec, err = s.Lookup(c.ImageID); err != nil {
			return nil, err
		}
	}
	// In use while the container runs: eviction keeps its lazy chunks.
	// (The container's record keeps the image itself from removal.)
	unpin := func() {}
	if rec.PulledLazily() {
		if unpin, err = s.Pin(rec, "container-"+c.ID); err != nil {
			return nil, err
		}
	}
	dev, err := fusefs.NewDevice(device, fusefs.MountOptions{FsName: "strata:" + c.ID[:12], Container: true})
	if err != nil {
		unpin()
		return nil, err
	}
	// The union is made while init starts; it is served once init has
	// mounted the device.
	ctx, cancel := context.WithCancel(ctx)
	type union struct {
		u   *fusefs.Union
		err error
	}
	made := make(chan union, 1)
	go func() {
		u, err := m.a.imageUnion(ctx, rec, upper, work, c.Annotations[backgroundFetchAnnotation] != "false", m.onOpen, mountPointLayer(points, c.Created))
		made <- union{u, err}
	}()
	return &runtime.Rootfs{
		Mount: runtime.DeviceMount{Source: dev.Source, FSType: dev.FSType, Flags: dev.Flags, Data: dev.Data},
		Serve: func() error {
			u := <-made
			if u.err != nil {
				return u.err
			}
			return dev.Serve(u.u)
		},
		Release: func() {
			// The mount goes with the container's mount namespace, as its
			// last process ends; the server then ends too.
			dev.Close(time.Second)
			cancel()
			unpin()
		},
	}, nil
}

// mountPointLayer is the layer beneath the image's that holds the
// container's mount points: the image's own entries of those names show
// over it, and where the image has none these do, so no container layer
// needs them made. It lives in memory.
func mountPointLayer(points []runtime.MountPoint, created time.Time) layertree.Tree {
	l := layertree.NewMem()
	for _, p := range points {
		e := layertree.Entry{Mode: layertree.ModeRegular | 0o644, Mtime: created}
		if p.Dir {
			e = layertree.Entry{Mode: layertree.ModeDir | 0o755, Nlink: 2, Mtime: created}
		}
		l.Add(strings.Trim(path.Clean(p.Path), "/"), e, nil, nil)
	}
	return l
}

func (a *app) containers() (*runtime.Store, error) {
	if _, err := a.Store(); err != nil {
		return nil, err
	}
	return runtime.OpenStore(a.root)
}

func runVerb() *verb {
	return &verb{name: "run", args: "IMAGE [COMMAND] [ARG...]", summary: "Create and run a container from an image", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			var f createFlags
			f.register(fs)
			detach := fs.BoolP("detach", "d", false, "run in the background and print the container ID")
			return func(ctx context.Context, a *app, args []string) error {
				if err := needTerminal(f.interactive && f.tty && !*detach); err != nil {
					return err
				}
				var relay *signalRelay
				var launched *runtime.Launcher
				if !*detach {
					launched = runtime.NewLauncher()
					// The container's init starts now and waits while the
					// image is found and the container made. (If it cannot,
					// the monitor tries again and reports why.)
					o := runtime.LaunchOptions{Network: f.network, Tty: f.tty}
					if f.interactive {
						o.Stdin = os.Stdin
					}
					launched.Launch(o)
					relay = relaySignals()
				}
				f.entrypointSet = fs.Changed("entrypoint")
				c, err := a.newContainer(ctx, &f, args[0], args[1:])
				if err != nil {
					launched.Abort()
					return runError(err)
				}
				if *detach {
					if err := a.startDetached(c); err != nil {
						return a.failedStart(ctx, c, err)
					}
					fmt.Fprintln(a.stdout, c.ID)
					return nil
				}
				return a.runForeground(ctx, c, f.interactive, relay, launched)
			}
		}}
}

// needTerminal refuses, as docker does, a terminal for the container fed
// from a standard input that is not one (-it with a pipe): the pipe's
// end would never reach the container's terminal, which would wait on.
func needTerminal(need bool) error {
	if need && !term.IsTerminal(os.Stdin.Fd()) {
		return &exitError{code: exitFailure, err: errors.New("the input device is not a TTY")}
	}
	return nil
}

// runError gives a failure before the container started docker's code.
func runError(err error) error {
	var ue *usageError
	var ee *exitError
	if errors.As(err, &ue) || errors.As(err, &ee) {
		return err
	}
	return &exitError{code: exitRunFailure, err: err}
}

// failedStart reports a container that could not be started with the
// code docker run gives, removing it when it was to be removed.
func (a *app) failedStart(ctx context.Context, c *runtime.Container, err error) error {
	code := exitRunFailure
	var ie *runtime.InitError
	if errors.As(err, &ie) {
		code = ie.Code
	}
	if c.AutoRemove {
		a.removeContainer(ctx, c, true)
	}
	return &exitError{code: code, err: err}
}

// runForeground is the monitor in the calling process: the container's
// output goes to the terminal and its log, signals (those relay
// registered) to the container.
// launched, when not nil, is the container's init, launched with its
// Network and Tty and with stdin when interactive.
func (a *app) runForeground(ctx context.Context, c *runtime.Container, interactive bool, relay *signalRelay, launched *runtime.Launcher) error {
	serverMemory()
	cs, err := a.containers()
	if err != nil {
		launched.Abort()
		return runError(err)
	}
	started := func() {
		relay.commandStarted()
		spareProcsSoon()
	}
	o := runtime.RunOptions{Stdout: a.stdout, Stderr: a.stderr, Signals: relay.signals(), Started: started, Launched: launched}
	if interactive {
		o.Stdin = os.Stdin
	}
	if c.Spec.Tty && term.IsTerminal(os.Stdin.Fd()) {
		o.Terminal = os.Stdin
		if interactive {
			restore, err := term.MakeRaw(os.Stdin.Fd())
			if err != nil {
				launched.Abort()
				return runError(fmt.Errorf("terminal: raw mode: %w", err))
			}
			defer restore()
		}
	}
	// Signals go to the container, not to this context.
	code, err := cs.Run(context.WithoutCancel(ctx), c, storeMounter{a: a}, o)
	if c.AutoRemove {
		if rerr := a.removeContainer(context.WithoutCancel(ctx), c, true); rerr != nil {
			a.log.Warn("remove container", "id", c.ID[:12], "err", rerr)
		}
	}
	if err != nil {
		return &exitError{code: code, err: err}
	}
	if code != 0 {
		return &exitError{code: code, err: errSilent}
	}
	return nil
}

// serverMemory sets the collector of a process that serves a union for
// as long as a container runs or a mount lives (gctune.ForUnion): lazy
// reads and prefetches churn through buffers, and a walk of the tree
// grows the heap by a record per entry.
func serverMemory() {
	gctune.ForUnion(gctune.UnionFloor)
}

// errSilent ends strata with an exit code and no message: the
// container's own.
var errSilent = errors.New("")

// signalRelay catches the signals strata passes on to a container, and
// never lets them go: the process exits when its container does.
//
// Each registration is a round trip to the Go runtime's signal thread,
// four context switches here (all 27 signals: about 0.4 ms off a
// container start, whose two CPUs they share). So the six signals users
// send to a running container (earlySignals) are registered at once, on
// a goroutine, while the container is made, and the others once its
// command has run for laterSignalsAfter. One of those sent sooner gets
// Go's default: ignored, for most; strata ends, for the few that mean a
// crash when sent by kill(1) (SIGABRT, SIGSEGV, ...); strata stops, for
// SIGTSTP.
type signalRelay struct {
	c          chan os.Signal
	registered chan struct{}
	later      sync.Once
}

// laterSignalsAfter is how long a command runs before the signals other
// than earlySignals are registered: a container that ends sooner never
// pays for them.
const laterSignalsAfter = 10 * time.Millisecond

func relaySignals() *signalRelay {
	r := &signalRelay{c: make(chan os.Signal, 8), registered: make(chan struct{})}
	go func() {
		signal.Notify(r.c, earlySignals()...)
		close(r.registered)
	}()
	return r
}

// signals is the channel, once earlySignals are registered.
func (r *signalRelay) signals() <-chan os.Signal {
	<-r.registered
	return r.c
}

// commandStarted registers the other forwarded signals, laterSignalsAfter
// from now.
func (r *signalRelay) commandStarted() {
	r.later.Do(func() {
		time.AfterFunc(laterSignalsAfter, func() {
			var rest []os.Signal
			for _, s := range forwardedSignals() {
				if !slices.Contains(earlySignals(), s) {
					rest = append(rest, s)
				}
			}
			signal.Notify(r.c, rest...)
		})
	})
}

// earlySignals are those users send to a running container: to end it
// (and, left to Go's default, strata itself), to reload, to reopen logs.
func earlySignals() []os.Signal {
	return []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}
}

// forwardedSignals are those strata run passes to the container: all that
// can be caught, but SIGCHLD, SIGWINCH, SIGURG (Go's preemption) and
// SIGPIPE.
func forwardedSignals() []os.Signal {
	var out []os.Signal
	for s := syscall.Signal(1); s <= 31; s++ {
		switch s {
		case syscall.SIGKILL, syscall.SIGSTOP, syscall.SIGCHLD, syscall.SIGWINCH, syscall.SIGURG, syscall.SIGPIPE:
			continue
		}
		out = append(out, s)
	}
	return out
}

// startDetached runs the container's monitor in a process of its own and
// returns once the command runs.
func (a *app) startDetached(c *runtime.Container) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cs, err := a.containers()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(cs.Dir(c.ID), "monitor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, "--root", a.root, "--log-level", a.logLevel, "monitor", c.ID)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := daemon.Start(cmd); err != nil {
		if st, serr := cs.State(c.ID); serr == nil && st.Error != "" {
			return &runtime.InitError{Code: st.ExitCode, Msg: st.Error}
		}
		return err
	}
	return nil
}

// spareProcsSoon gives the process serving a container's root its Go Ps
// to spare (fusefs.SpareProcs) once the command has run spareProcsAfter:
// during a start they cost more than they give (its threads made and
// woken, 0.3-0.5 ms on 2 CPUs), and a command done by then never needs
// them.
func spareProcsSoon() { time.AfterFunc(spareProcsAfter, fusefs.SpareProcs) }

const spareProcsAfter = 10 * time.Millisecond

// monitorVerb is the detached monitor of one container.
func monitorVerb() *verb {
	return &verb{name: "monitor", args: "ID", summary: "(internal) serve and watch a detached container", hidden: true, minArgs: 1, maxArgs: 1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				ready := daemon.Notifier()
				cs, err := a.containers()
				if err != nil {
					ready(err)
					return err
				}
				c, err := cs.Get(args[0])
				if err != nil {
					ready(err)
					return err
				}
				// Stop and kill reach the container through its PID; the
				// monitor itself ignores the terminal's signals.
				signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
				serverMemory()
				_, err = cs.Run(context.WithoutCancel(ctx), c, storeMounter{a: a}, runtime.RunOptions{Started: func() { ready(nil); spareProcsSoon() }})
				if err != nil {
					ready(err)
				}
				if c.AutoRemove {
					a.removeContainer(context.WithoutCancel(ctx), c, true)
				}
				return err
			}
		}}
}

// initVerb is the container's first process before it execs the command.
func initVerb() *verb {
	return &verb{name: "init", summary: "(internal) the container's init", hidden: true, raw: true,
		flags: func(*pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(context.Context, *app, []string) error {
				os.Exit(runtime.Init())
				return nil
			}
		}}
}

// removeContainer removes a stopped container and, with volumes set, its
// anonymous volumes.
func (a *app) removeContainer(ctx context.Context, c *runtime.Container, withVolumes bool) error {
	cs, err := a.containers()
	if err != nil {
		return err
	}
	if err := cs.Remove(ctx, c); err != nil {
		return err
	}
	if !withVolumes {
		return nil
	}
	vs, err := volumes.Open(a.root)
	if err != nil {
		return err
	}
	var errs []error
	for _, v := range c.Volumes {
		if v.Anonymous {
			if err := vs.Remove(ctx, v.Name, a.volumeUsers); err != nil && !errors.As(err, new(*volumes.NotFoundError)) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// volumeUsers lists the containers (short IDs) that mount a volume.
func (a *app) volumeUsers(name string) []string {
	cs, err := a.containers()
	if err != nil {
		return nil
	}
	all, _ := cs.List()
	var out []string
	for _, c := range all {
		if slices.ContainsFunc(c.Volumes, func(v runtime.VolumeRef) bool { return v.Name == name }) {
			out = append(out, c.ID[:12])
		}
	}
	return out
}
