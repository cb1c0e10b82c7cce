package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
)

// StartOptions configure the container start scenario.
type StartOptions struct {
	Strata  string // the strata binary measured
	Runs    int    // measured starts per peer, after two unmeasured ones
	WorkDir string // scratch space
	Log     *slog.Logger
}

// StartPeer is one way of starting the container and its figures.
type StartPeer struct {
	Name    string
	Command string
	// Runs started right after a cgroup move (the kernel's cgroup
	// migration lock warm); IdleRuns from an idle host (StartConditions).
	Runs, IdleRuns []time.Duration
	// Skipped says why the peer could not be measured here.
	Skipped string
}

// Median of the runs.
func (p StartPeer) Median() time.Duration { return median(p.Runs) }

// IdleMedian of the runs from an idle host.
func (p StartPeer) IdleMedian() time.Duration { return median(p.IdleRuns) }

// StartConditions says how each start is measured twice. Moving a process
// into a cgroup (every runtime does it for its container) takes the
// kernel's cgroup migration lock, and on a host with v1 controllers the
// first move after an idle spell (~20 ms) waits for an RCU grace period,
// 6-16 ms on this kind of machine; one shortly after another move does
// not. Back to back, a runtime thus inherits a warm lock or a cold one
// from whatever ran before it. So every start is measured right after the
// bench itself moved a process (warm: the runtime's own work) and after a
// pause of its own (idle: what a single start on a quiet host costs).
const StartConditions = "warm: right after a cgroup move by the bench; idle: after 60 ms with none"

// StartReport is the scenario's outcome; Peers[0] is strata.
type StartReport struct {
	Peers   []StartPeer
	Machine string
	Command string
}

// Start measures a warm container start, `run --rm IMAGE true` with the
// image already local: strata (its union filesystem over the layers)
// against crun and runc on a bundle unpacked from the same image, and
// podman on the kernel overlay driver. The peers take turns, run by run.
func Start(ctx context.Context, o StartOptions) (*StartReport, error) {
	if o.Runs <= 0 {
		o.Runs = 20
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench start runs containers: it needs root")
	}
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(o.WorkDir, "start-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	reg, err := testregistry.New(ctx, testregistry.Options{StorageDir: filepath.Join(dir, "registry")})
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	img, err := testimage.Busybox()
	if err != nil {
		return nil, err
	}
	ref := reg.Ref("bench/start:latest")
	if err := testimage.Push(ctx, ref, img); err != nil {
		return nil, err
	}

	root := filepath.Join(dir, "strata")
	bundle := filepath.Join(dir, "bundle")
	if _, err := runQuiet(ctx, o.Strata, "--root", root, "pull", "-q", ref); err != nil {
		return nil, err
	}
	if _, err := runQuiet(ctx, o.Strata, "--root", root, "unpack", ref, filepath.Join(bundle, "rootfs")); err != nil {
		return nil, err
	}
	peers := []*startPeer{{StartPeer: StartPeer{Name: "strata", Command: "strata run --rm IMAGE true"},
		cmd: func(int) []string { return []string{o.Strata, "--root", root, "run", "--rm", ref, "true"} }}}
	for _, rt := range []string{"crun", "runc"} {
		peers = append(peers, runtimePeer(ctx, rt, bundle))
	}
	peers = append(peers, podmanPeer(ctx, dir, ref))

	rep := &StartReport{Machine: machine([]string{o.Strata, "version"}, []string{"crun", "--version"}, []string{"runc", "--version"}, []string{"podman", "--version"})}
	// The peers go in a new order every round, each measured in both
	// conditions (StartConditions), so none always meets a warmer machine.
	order := rand.New(rand.NewPCG(1, 2))
	for i := -2; i < o.Runs; i++ {
		round := slices.Clone(peers)
		order.Shuffle(len(round), func(a, b int) { round[a], round[b] = round[b], round[a] })
		for _, p := range round {
			for _, idle := range []bool{i%2 == 0, i%2 != 0} {
				if p.Skipped != "" {
					continue
				}
				if idle {
					time.Sleep(60 * time.Millisecond)
				} else {
					warmCgroupLock()
				}
				d, err := p.run(ctx, i)
				if err != nil {
					p.Skipped = err.Error()
					o.Log.Warn("peer failed", "peer", p.Name, "err", err)
					continue
				}
				switch {
				case i < 0:
				case idle:
					p.IdleRuns = append(p.IdleRuns, d)
				default:
					p.Runs = append(p.Runs, d)
				}
				o.Log.Info("run", "peer", p.Name, "idle", idle, "ms", d.Seconds()*1000)
			}
		}
	}
	if peers[0].Skipped != "" {
		return nil, fmt.Errorf("strata run: %s", peers[0].Skipped)
	}
	for _, p := range peers {
		rep.Peers = append(rep.Peers, p.StartPeer)
	}
	return rep, nil
}

// warmCgroupLock moves this process into the v1 memory cgroup it is in,
// which takes the cgroup migration lock and changes nothing else; on a
// cgroup2-only host, into its own cgroup.
func warmCgroupLock() {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	procs := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		switch {
		case len(f) < 3:
		case slices.Contains(strings.Split(f[1], ","), "memory"):
			procs = filepath.Join("/sys/fs/cgroup/memory", f[2], "cgroup.procs")
		case f[0] == "0" && procs == "" && !hybridCgroups():
			procs = filepath.Join("/sys/fs/cgroup", f[2], "cgroup.procs")
		}
	}
	if procs != "" {
		os.WriteFile(procs, []byte(fmt.Sprint(os.Getpid())), 0)
	}
}

type startPeer struct {
	StartPeer
	cmd func(i int) []string
	// hideUnified: run from a thread in a mount namespace of its own
	// where the empty cgroup2 hierarchy is hidden (crun refuses hybrid
	// cgroups).
	hideUnified bool
}

func (p *startPeer) run(ctx context.Context, i int) (time.Duration, error) {
	args := p.cmd(i)
	if p.hideUnified {
		return timeInMountNamespace(ctx, args)
	}
	return timeCommands(ctx, [][]string{args})
}

// timeInMountNamespace times the command started from a thread that has
// a mount namespace of its own without /sys/fs/cgroup/unified, so the
// runtime sees a v1-only host. The thread is left locked and so ends
// with its goroutine.
func timeInMountNamespace(ctx context.Context, args []string) (time.Duration, error) {
	type result struct {
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			done <- result{err: fmt.Errorf("unshare mount namespace: %w", err)}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); err != nil {
			done <- result{err: fmt.Errorf("hide the cgroup2 hierarchy: %w", err)}
			return
		}
		d, err := timeCommands(ctx, [][]string{args})
		done <- result{d, err}
	}()
	r := <-done
	return r.d, r.err
}

// hybridCgroups tells whether the host has v1 controllers beside a
// cgroup2 hierarchy at /sys/fs/cgroup/unified.
func hybridCgroups() bool {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup/unified", &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return false
	}
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.TMPFS_MAGIC
}

// runtimePeer runs the bundle with an OCI runtime (crun or runc), its
// config.json that runtime's own default with the command set to true.
func runtimePeer(ctx context.Context, rt, bundle string) *startPeer {
	p := &startPeer{StartPeer: StartPeer{Name: rt, Command: rt + " run --bundle BUNDLE ID  (config from `" + rt + " spec`, args [true])"}}
	if _, err := exec.LookPath(rt); err != nil {
		p.Skipped = fmt.Sprintf("%s not installed (apt-get install %s)", rt, rt)
		return p
	}
	b := filepath.Join(filepath.Dir(bundle), rt+"-bundle")
	if err := os.MkdirAll(b, 0o755); err != nil {
		p.Skipped = err.Error()
		return p
	}
	cmd := exec.CommandContext(ctx, rt, "spec")
	cmd.Dir = b
	if out, err := cmd.CombinedOutput(); err != nil {
		p.Skipped = fmt.Sprintf("%s spec: %v: %s", rt, err, out)
		return p
	}
	if err := editSpec(filepath.Join(b, "config.json"), filepath.Join(bundle, "rootfs")); err != nil {
		p.Skipped = err.Error()
		return p
	}
	p.cmd = func(i int) []string {
		return []string{rt, "run", "--bundle", b, fmt.Sprintf("bench-%s-%d", rt, i+2)}
	}
	p.hideUnified = rt == "crun" && hybridCgroups()
	if p.hideUnified {
		p.Command += "; run where /sys/fs/cgroup/unified is unmounted: crun refuses hybrid cgroups"
	}
	return p
}

// editSpec sets the command to true, drops the terminal and points the
// root at rootfs, shared by the runtimes.
func editSpec(path, rootfs string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	proc, ok := spec["process"].(map[string]any)
	if !ok {
		return fmt.Errorf("%s: no process", path)
	}
	proc["args"] = []string{"true"}
	proc["terminal"] = false
	spec["root"] = map[string]any{"path": rootfs, "readonly": true}
	b, err = json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// podmanPeer runs the image with podman on the kernel overlay driver, in
// a storage root of its own.
func podmanPeer(ctx context.Context, dir, ref string) *startPeer {
	p := &startPeer{StartPeer: StartPeer{Name: "podman", Command: "podman run --rm --network none IMAGE true  (overlay driver, runc, cgroupfs)"}}
	if _, err := exec.LookPath("podman"); err != nil {
		p.Skipped = "podman not installed (apt-get install podman)"
		return p
	}
	// runc copes with hybrid cgroups where crun does not; podman's default
	// rlimits exceed what runc may raise them to here.
	global := []string{"podman", "--root", filepath.Join(dir, "podman", "root"), "--runroot", filepath.Join(dir, "podman", "run"),
		"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none", "--storage-driver", "overlay"}
	if out, err := runQuiet(ctx, append(global, "pull", "-q", "--tls-verify=false", ref)...); err != nil {
		p.Skipped = fmt.Sprintf("podman pull: %v: %s", err, out)
		return p
	}
	p.cmd = func(int) []string {
		return append(global, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref, "true")
	}
	return p
}

func runQuiet(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF=/dev/null", "CONTAINERS_REGISTRIES_CONF=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Markdown renders the report: each peer's median and mean, and strata's
// time as a ratio of it.
func (r *StartReport) Markdown() string {
	var b strings.Builder
	b.WriteString("| peer | median, warm lock | strata / peer | median, idle host | strata / peer | command |\n|---|---|---|---|---|---|\n")
	s, si := r.Peers[0].Median(), r.Peers[0].IdleMedian()
	for _, p := range r.Peers {
		if p.Skipped != "" {
			fmt.Fprintf(&b, "| %s | — | — | — | — | skipped: %s |\n", p.Name, p.Skipped)
			continue
		}
		fmt.Fprintf(&b, "| %s | %.1f ms | %.2fx | %.1f ms | %.2fx | %s |\n", p.Name,
			ms(p.Median()), s.Seconds()/p.Median().Seconds(), ms(p.IdleMedian()), si.Seconds()/p.IdleMedian().Seconds(), p.Command)
	}
	fmt.Fprintf(&b, "\nWarm start (image local, page cache warm), %d measured runs per peer and condition after 2 unmeasured, peers in a new order every round. Conditions: %s.\nMachine: %s\nCommand: `%s`\n",
		len(r.Peers[0].Runs), StartConditions, r.Machine, r.Command)
	return b.String()
}

func ms(d time.Duration) float64 { return d.Seconds() * 1000 }
