package bench

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/stratafs/strata/internal/netshape"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
	"github.com/stratafs/strata/lazypull"
)

// Workload is one command a cold start runs, as a shell line.
type Workload struct {
	Name, Shell string
}

// ColdStartWorkloads are HelloBench-style workloads over the cold-start
// image.
func ColdStartWorkloads() []Workload {
	return []Workload{
		{"python3 hello", `python3 -c 'print("hello")'`},
		{"gcc hello", `printf '#include <stdio.h>\nint main(void){puts("hello");return 0;}\n' > /tmp/h.c && gcc /tmp/h.c -o /tmp/h && /tmp/h`},
		{"import numpy", `python3 -c 'import numpy'`},
		{"app", `python3 /app/app.py`},
	}
}

// The modes a workload starts in.
const (
	ModeLazy      = "strata lazy eStargz"
	ModeOptimized = "strata lazy optimized"
	ModeFull      = "strata full pull"
	ModePodman    = "podman full pull"
)

// ColdStartOptions configure the cold-start scenario.
type ColdStartOptions struct {
	Strata  string
	WorkDir string
	Runs    int
	Link    netshape.Link
	// Image: "debian" (built from Debian packages, cached in WorkDir) or
	// "busybox" (small, for tests).
	Image     string
	Workloads []Workload
	Log       *slog.Logger
}

// ColdStartRow is one workload in one mode.
type ColdStartRow struct {
	Workload, Mode string
	Cold           []time.Duration
	Bytes          []int64 // fetched through the shaper, per cold run
	// Warm is a start with everything local: for the lazy modes once the
	// background fetch has completed the layers; WarmChunks a start from
	// the chunk cache alone (background fetch off).
	Warm, WarmChunks time.Duration
	MaxRSSKiB        int64 // of the strata process (monitor and FUSE server)
	Skipped          string
}

// ColdStartReport is the scenario's outcome.
type ColdStartReport struct {
	Rows []ColdStartRow
	// Sizes of the image: compressed gzip bytes, eStargz bytes, and per
	// workload the compressed bytes of the files it reads (what the
	// optimized image puts before its prefetch landmarks).
	GzipBytes, EstargzBytes int64
	ReadBytes               map[string]int64
	Link                    netshape.Link
	Machine, Command        string
}

// ColdStart measures the time from the command to the workload's exit
// with empty caches, pulling through a shaped link, and the bytes
// fetched: strata lazy on eStargz (plain and optimized for the workload),
// strata pulling gzip whole, podman pulling gzip whole.
func ColdStart(ctx context.Context, o ColdStartOptions) (*ColdStartReport, error) {
	if o.Runs <= 0 {
		o.Runs = 1
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if len(o.Workloads) == 0 {
		o.Workloads = ColdStartWorkloads()
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("bench coldstart runs containers: it needs root")
	}
	dir, err := os.MkdirTemp(o.WorkDir, "coldstart-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	img, err := coldStartImage(ctx, o)
	if err != nil {
		return nil, err
	}
	reg, err := testregistry.New(ctx, testregistry.Options{StorageDir: filepath.Join(dir, "registry")})
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	rep := &ColdStartReport{Link: o.Link, ReadBytes: map[string]int64{},
		Machine: machine([]string{o.Strata, "version"}, []string{"podman", "--version"})}
	direct := func(tag string) string { return reg.Ref("cs/app:" + tag) }
	o.Log.Info("pushing gzip and eStargz images")
	if err := testimage.Push(ctx, direct("gzip"), img); err != nil {
		return nil, err
	}
	rep.GzipBytes = imageBytes(img)
	eimg, err := lazypull.EstargzImage(img, lazypull.ConvertOptions{})
	if err != nil {
		return nil, err
	}
	if err := testimage.Push(ctx, direct("esgz"), eimg); err != nil {
		return nil, err
	}
	rep.EstargzBytes = imageBytes(eimg)
	for i, w := range o.Workloads {
		o.Log.Info("optimizing", "workload", w.Name)
		root := filepath.Join(dir, fmt.Sprintf("optimize-%d", i))
		if out, err := exec.CommandContext(ctx, o.Strata, "--root", root, "convert", "--optimize", "--timeout", "60s", "--cmd", w.Shell,
			direct("gzip"), direct(fmt.Sprintf("opt%d", i))).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("convert --optimize for %s: %v\n%s", w.Name, err, out)
		}
		os.RemoveAll(root)
		if n, err := landmarkBytes(ctx, o.Strata, filepath.Join(dir, "toc-probe"), direct(fmt.Sprintf("opt%d", i))); err == nil {
			rep.ReadBytes[w.Name] = n
		}
	}

	shaper, err := netshape.Listen(reg.Addr, o.Link)
	if err != nil {
		return nil, err
	}
	defer shaper.Close()
	shaped := func(tag string) string { return shaper.Addr + "/cs/app:" + tag }
	_, podmanErr := exec.LookPath("podman")
	for i, w := range o.Workloads {
		for _, mode := range []string{ModeLazy, ModeOptimized, ModeFull, ModePodman} {
			row := ColdStartRow{Workload: w.Name, Mode: mode}
			if mode == ModePodman && podmanErr != nil {
				row.Skipped = "podman not installed (apt-get install podman)"
				rep.Rows = append(rep.Rows, row)
				continue
			}
			for r := 0; r < o.Runs; r++ {
				root := filepath.Join(dir, "run")
				os.RemoveAll(root)
				var argv func() []string
				switch mode {
				case ModeLazy, ModeOptimized, ModeFull:
					ref := shaped("esgz")
					flags := []string{"--background-fetch=false"}
					if mode == ModeOptimized {
						ref = shaped(fmt.Sprintf("opt%d", i))
					}
					if mode == ModeFull {
						ref, flags = shaped("gzip"), []string{"--lazy=false"}
					}
					argv = func() []string {
						return append(append([]string{o.Strata, "--root", root, "run", "--rm"}, flags...), ref, "sh", "-c", w.Shell)
					}
				case ModePodman:
					argv = func() []string {
						return append(podmanArgs(root), "run", "--rm", "--network", "none", "--tls-verify=false",
							"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", shaped("gzip"), "sh", "-c", w.Shell)
					}
				}
				dropCaches()
				before := shaper.BytesDown()
				d, rss, err := timeRun(ctx, argv())
				if err != nil {
					row.Skipped = err.Error()
					break
				}
				row.Cold = append(row.Cold, d)
				row.Bytes = append(row.Bytes, shaper.BytesDown()-before)
				row.MaxRSSKiB = max(row.MaxRSSKiB, rss)
				o.Log.Info("cold", "workload", w.Name, "mode", mode, "seconds", d.Seconds(), "bytes", row.Bytes[len(row.Bytes)-1])
				if r == o.Runs-1 && mode != ModeOptimized {
					// Warm: the same store again, everything local.
					if d, err := warmRun(ctx, argv()); err == nil {
						row.Warm = d
					}
					if mode == ModeLazy {
						row.WarmChunks = row.Warm
						row.Warm = 0
						if err := completeLayers(ctx, o.Strata, root, shaped("esgz")); err != nil {
							o.Log.Warn("background fetch", "err", err)
						} else if d, err := warmRun(ctx, argv()); err == nil {
							row.Warm = d
						}
					}
				}
				if mode == ModePodman {
					exec.Command("podman", append(podmanArgs(root), "system", "reset", "--force")...).Run()
				}
				os.RemoveAll(root)
			}
			rep.Rows = append(rep.Rows, row)
		}
	}
	return rep, nil
}

// warmRun is the median of three warm starts.
func warmRun(ctx context.Context, argv []string) (time.Duration, error) {
	var ds []time.Duration
	for i := 0; i < 3; i++ {
		d, _, err := timeRun(ctx, argv)
		if err != nil {
			return 0, err
		}
		ds = append(ds, d)
	}
	return median(ds), nil
}

// completeLayers runs a container with background fetch on until every
// lazy layer of the store at root has arrived whole.
func completeLayers(ctx context.Context, strata, root, ref string) error {
	out, err := exec.CommandContext(ctx, strata, "--root", root, "run", "-d", ref, "sleep", "600").Output()
	if err != nil {
		return fmt.Errorf("run -d: %w", err)
	}
	defer exec.Command(strata, "--root", root, "rm", "-f", strings.TrimSpace(string(out))).Run()
	s, err := lazypull.OpenStore(root)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		lazy, err := anyLazyLayer(s)
		if err != nil {
			return err
		}
		if !lazy {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("layers not complete after 10 minutes")
}

// anyLazyLayer tells whether a layer of an image in the store is still
// lazy.
func anyLazyLayer(s *lazypull.Store) (bool, error) {
	imgs, err := s.Images()
	if err != nil {
		return false, err
	}
	for _, img := range imgs {
		for _, l := range img.Layers {
			if rec, err := s.Layer(l.DiffID); err == nil && rec.Lazy {
				return true, nil
			}
		}
	}
	return false, nil
}

func podmanArgs(root string) []string {
	// podman refuses a run root longer than 50 characters.
	run := fmt.Sprintf("/tmp/strata-bench-podman-%d", os.Getpid())
	return []string{"podman", "--root", filepath.Join(root, "podman"), "--runroot", run,
		"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none", "--storage-driver", "overlay"}
}

// timeRun runs a command and returns its wall time and peak RSS, the
// high-water mark of its memory sampled while it runs (wait4's maxrss
// would count this process's memory: Go starts children from its own
// address space).
func timeRun(ctx context.Context, argv []string) (time.Duration, int64, error) {
	var errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stderr = &errOut
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF=/dev/null", "CONTAINERS_REGISTRIES_CONF=/dev/null")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	var rss atomic.Int64
	stop := make(chan struct{})
	go func() {
		status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		for {
			if kib := vmHWM(status); kib > rss.Load() {
				rss.Store(kib)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	d := time.Since(start)
	close(stop)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(errOut.String()))
	}
	return d, rss.Load(), nil
}

// vmHWM reads a process's peak resident set in KiB.
func vmHWM(status string) int64 {
	b, err := os.ReadFile(status)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var n int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &n)
			return n
		}
	}
	return 0
}

func imageBytes(img v1.Image) int64 {
	layers, _ := img.Layers()
	var n int64
	for _, l := range layers {
		s, _ := l.Size()
		n += s
	}
	return n
}

// landmarkBytes pulls an optimized image lazily and sums, over its
// layers, the compressed bytes before the prefetch landmark: what the
// workload reads.
func landmarkBytes(ctx context.Context, strata, root, ref string) (int64, error) {
	defer os.RemoveAll(root)
	if out, err := exec.CommandContext(ctx, strata, "--root", root, "pull", "-q", ref).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	return lazypull.PrefetchBytes(root)
}

// coldStartImage is the image the workloads run in.
func coldStartImage(ctx context.Context, o ColdStartOptions) (v1.Image, error) {
	switch o.Image {
	case "busybox":
		img, err := testimage.Busybox()
		if err != nil {
			return nil, err
		}
		return withCmd(img, "sh", "-c", "echo app")
	case "debian", "":
		script := filepath.Join(sourceDir(), "build-coldstart.sh")
		cmd := exec.CommandContext(ctx, "sh", script, o.WorkDir)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%s: %w", script, err)
		}
		img, err := layersImage(ctx, filepath.Join(o.WorkDir, "coldstart", "layers"), filepath.Join(o.WorkDir, "coldstart", "blobs"))
		if err != nil {
			return nil, err
		}
		return withCmd(img, "python3", "/app/app.py")
	}
	return nil, fmt.Errorf("unknown cold-start image %q (want debian or busybox)", o.Image)
}

// withCmd gives the image a default command and Debian's PATH.
func withCmd(img v1.Image, cmd ...string) (v1.Image, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Cmd = cmd
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return mutate.ConfigFile(img, cfg)
}

// Markdown renders the report.
func (r *ColdStartReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Link: %.0f Mbit/s, %v round trip (shaper in process). Image: %.1f MB gzip, %.1f MB eStargz.\n\n",
		float64(r.Link.BytesPerSecond)*8/1e6, r.Link.RTT, float64(r.GzipBytes)/1e6, float64(r.EstargzBytes)/1e6)
	b.WriteString("| workload | mode | cold start | fetched | vs podman | warm start | warm, chunk cache only | peak RSS |\n|---|---|---|---|---|---|---|---|\n")
	podman := map[string]time.Duration{}
	for _, row := range r.Rows {
		if row.Mode == ModePodman && len(row.Cold) > 0 {
			podman[row.Workload] = median(row.Cold)
		}
	}
	for _, row := range r.Rows {
		if row.Skipped != "" {
			fmt.Fprintf(&b, "| %s | %s | — | — | — | — | — | skipped: %s |\n", row.Workload, row.Mode, row.Skipped)
			continue
		}
		cold := median(row.Cold)
		vs := "—"
		if p := podman[row.Workload]; p > 0 {
			vs = fmt.Sprintf("%.2fx", cold.Seconds()/p.Seconds())
		}
		warm, chunks, rss := "—", "—", "—"
		if row.Warm > 0 {
			warm = fmt.Sprintf("%.0f ms", row.Warm.Seconds()*1000)
		}
		if row.WarmChunks > 0 {
			chunks = fmt.Sprintf("%.0f ms", row.WarmChunks.Seconds()*1000)
		}
		if row.Mode != ModePodman && row.MaxRSSKiB > 0 {
			rss = fmt.Sprintf("%.0f MiB", float64(row.MaxRSSKiB)/1024)
		}
		fmt.Fprintf(&b, "| %s | %s | %.2f s | %.1f MB | %s | %s | %s | %s |\n", row.Workload, row.Mode, cold.Seconds(), float64(medianInt(row.Bytes))/1e6, vs, warm, chunks, rss)
	}
	if chart := r.Chart(); chart != "" {
		b.WriteString("\n```text\n" + chart + "```\n")
	}
	if len(r.ReadBytes) > 0 {
		b.WriteString("\nCompressed bytes of the files each workload reads (before the prefetch landmarks of its optimized image): ")
		var parts []string
		for _, w := range sortedKeys(r.ReadBytes) {
			parts = append(parts, fmt.Sprintf("%s %.1f MB", w, float64(r.ReadBytes[w])/1e6))
		}
		b.WriteString(strings.Join(parts, "; ") + ".\n")
	}
	fmt.Fprintf(&b, "\nCold: empty store and caches, page cache dropped, pull through the shaper; lazy modes with --background-fetch=false. Warm: the same store again, median of 3 (lazy: once a container with background fetch on has completed the layers). Peak RSS: the `strata run` process, which is the monitor and the FUSE server.\nMachine: %s\nCommand: `%s`\n", r.Machine, r.Command)
	return b.String()
}

func medianInt(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]int64{}, v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func sortedKeys(m map[string]int64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
