package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// UnionOptions configure the union filesystem scenario.
type UnionOptions struct {
	StrataOverlay string // the strata-overlay binary measured
	WorkDir       string // scratch space; datasets are cached in WorkDir/union
	DebianLayers  string // the Debian image's layer directories (1..4), from build-debian.sh
	Runs          int
	Scenarios     []string // default: all
	BigSize       int64    // the large file's size (default 1 GiB)
	ManyEntries   int      // entries of the large directory (default 100,000)
	Log           *slog.Logger
}

// Peer names, in the order the table shows them.
const (
	PeerNative = "native"
	PeerKernel = "overlayfs"
	PeerFuseOv = "fuse-overlayfs"
	PeerStrata = "strata"
)

var unionPeers = []string{PeerNative, PeerKernel, PeerFuseOv, PeerStrata}

// UnionScenarios lists the scenarios, in order.
var UnionScenarios = []string{"seqread-cold", "seqread-warm", "randread-4k", "walk", "readdir-100k", "smallfiles", "copyup-1g", "lookup-2", "lookup-64", "lookup-500", "rss"}

// UnionRow is one scenario's figures per peer.
type UnionRow struct {
	Scenario string
	Unit     string             // "s", "MB/s", "MiB"
	Values   map[string]float64 // median per peer; missing: not applicable
	Note     string
}

// UnionReport is the scenario's outcome.
type UnionReport struct {
	Rows    []UnionRow
	Machine string
	Command string
	Runs    int
}

// stack is a set of layers (top first) with a flattened copy of them.
type stack struct {
	dir    string   // cwd for the mounts: layer paths are relative to it
	layers []string // relative to dir, top first
	native string   // flattened copy, absolute
}

// Union measures the union filesystem against kernel overlayfs,
// fuse-overlayfs and a native directory over the same layers.
func Union(ctx context.Context, o UnionOptions) (*UnionReport, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("bench union needs root (kernel overlayfs mounts, dropping caches)")
	}
	for _, tool := range []string{"fuse-overlayfs", "fusermount3"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("bench union needs %s (apt-get install fuse-overlayfs fuse3)", tool)
		}
	}
	if o.Runs <= 0 {
		o.Runs = 3
	}
	if o.BigSize <= 0 {
		o.BigSize = 1 << 30
	}
	if o.ManyEntries <= 0 {
		o.ManyEntries = 100_000
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = UnionScenarios
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	root := filepath.Join(o.WorkDir, "union")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	img, err := imageStack(root, o)
	if err != nil {
		return nil, err
	}
	rep := &UnionReport{Machine: machine([]string{"dpkg-query", "-W", "-f", "fuse-overlayfs ${Version}", "fuse-overlayfs"}), Runs: o.Runs}
	// The lookup depths are measured in one loop, a run of each in turn,
	// so that their ratio compares runs made under the same conditions.
	var groups [][]string
	for i, sc := range o.Scenarios {
		if i > 0 && strings.HasPrefix(sc, "lookup-") && strings.HasPrefix(o.Scenarios[i-1], "lookup-") {
			groups[len(groups)-1] = append(groups[len(groups)-1], sc)
			continue
		}
		groups = append(groups, []string{sc})
	}
	for _, g := range groups {
		var scs []*scenario
		for _, sc := range g {
			s, err := prepareScenario(sc, img, root, o)
			if err != nil {
				return nil, fmt.Errorf("scenario %s: %w", sc, err)
			}
			scs = append(scs, s)
		}
		if err := runScenarios(ctx, scs, root, o); err != nil {
			return nil, err
		}
		for _, s := range scs {
			o.Log.Info("scenario", "name", s.row.Scenario, "values", s.row.Values)
			rep.Rows = append(rep.Rows, s.row)
		}
	}
	return rep, nil
}

// imageStack builds (once) the image the scenarios read: the Debian
// layers when present, a layer with a 100k-entry directory and a layer
// with one large file.
func imageStack(root string, o UnionOptions) (*stack, error) {
	var debian []string
	if ents, err := os.ReadDir(o.DebianLayers); err == nil && o.DebianLayers != "" {
		for i := len(ents); i >= 1; i-- {
			debian = append(debian, filepath.Join(o.DebianLayers, strconv.Itoa(i)))
		}
	}
	// The cache is keyed by what it holds.
	dir := filepath.Join(root, fmt.Sprintf("image-%d-debian%d-%d", o.BigSize, len(debian), o.ManyEntries))
	s := &stack{dir: dir, native: filepath.Join(dir, "native"), layers: debian}
	s.layers = append(s.layers, "many", "big")
	if _, err := os.Stat(filepath.Join(dir, ".done")); err == nil {
		return s, nil
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, "many/many"), 0o755); err != nil {
		return nil, err
	}
	for i := 0; i < o.ManyEntries; i++ {
		f, err := os.Create(filepath.Join(dir, "many/many", fmt.Sprintf("entry-%06d", i)))
		if err != nil {
			return nil, err
		}
		f.Close()
	}
	if err := os.MkdirAll(filepath.Join(dir, "big/data"), 0o755); err != nil {
		return nil, err
	}
	if err := writeRandomFile(filepath.Join(dir, "big/data/big"), o.BigSize); err != nil {
		return nil, err
	}
	// The native peer: the layers flattened into one directory, bottom
	// layer first (these layers have no whiteouts).
	if err := os.MkdirAll(s.native, 0o755); err != nil {
		return nil, err
	}
	for i := len(s.layers) - 1; i >= 0; i-- {
		src := s.abs(s.layers[i])
		if out, err := exec.Command("cp", "-a", src+"/.", s.native+"/").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("cp -a %s: %v: %s", src, err, out)
		}
	}
	return s, os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644)
}

func (s *stack) abs(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(s.dir, p)
}

func writeRandomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		for i := 0; i+8 <= len(buf); i += 8 {
			v := r.Uint64()
			for j := 0; j < 8; j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		n := min(left, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// lookupStack builds (once) n layers: each has d/own-K; the bottom one
// also has d/f0000…f0999, the files the lookups find.
func lookupStack(root string, n int) (*stack, error) {
	dir := filepath.Join(root, fmt.Sprintf("lookup-%d", n))
	s := &stack{dir: dir, native: filepath.Join(dir, "native")}
	for i := 0; i < n; i++ {
		s.layers = append(s.layers, fmt.Sprintf("l/%d", i))
	}
	if _, err := os.Stat(filepath.Join(dir, ".done")); err == nil {
		return s, nil
	}
	os.RemoveAll(dir)
	for i, l := range s.layers {
		d := filepath.Join(dir, l, "d")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("own-%d", i)), nil, 0o644); err != nil {
			return nil, err
		}
	}
	bottom := filepath.Join(dir, s.layers[n-1], "d")
	for i := 0; i < 1000; i++ {
		if err := os.WriteFile(filepath.Join(bottom, fmt.Sprintf("f%04d", i)), nil, 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(s.native, 0o755); err != nil {
		return nil, err
	}
	for i := n - 1; i >= 0; i-- {
		if out, err := exec.Command("cp", "-a", s.abs(s.layers[i])+"/.", s.native+"/").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("cp -a: %v: %s", err, out)
		}
	}
	return s, os.WriteFile(filepath.Join(dir, ".done"), nil, 0o644)
}

// mounted is one peer's view of a stack, fresh for one run.
type mounted struct {
	peer, mnt, scratch string
	pid                int // the FUSE server, when there is one
}

// mount gives peer a fresh view of s: a new upper and work directory.
func mount(ctx context.Context, peer string, s *stack, root string, o UnionOptions) (*mounted, error) {
	if peer == PeerNative {
		return &mounted{peer: peer, mnt: s.native}, nil
	}
	scratch, err := os.MkdirTemp(root, "run-"+peer+"-")
	if err != nil {
		return nil, err
	}
	m := &mounted{peer: peer, mnt: filepath.Join(scratch, "mnt"), scratch: scratch}
	upper, work := filepath.Join(scratch, "upper"), filepath.Join(scratch, "work")
	for _, d := range []string{m.mnt, upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	opts := "lowerdir=" + strings.Join(s.layers, ":") + ",upperdir=" + upper + ",workdir=" + work
	var cmd *exec.Cmd
	switch peer {
	case PeerKernel:
		cmd = exec.CommandContext(ctx, "mount", "-t", "overlay", "overlay", "-o", opts+",redirect_dir=on,index=on", m.mnt)
	case PeerFuseOv:
		cmd = exec.CommandContext(ctx, "fuse-overlayfs", "-o", opts, m.mnt)
	case PeerStrata:
		cmd = exec.CommandContext(ctx, o.StrataOverlay, "-o", opts, m.mnt)
	default:
		return nil, fmt.Errorf("unknown peer %q", peer)
	}
	cmd.Dir = s.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(scratch)
		return nil, fmt.Errorf("%s: %v: %s", strings.Join(cmd.Args, " "), err, out)
	}
	if peer != PeerKernel {
		m.pid = serverPID(m.mnt)
	}
	return m, nil
}

func (m *mounted) unmount() {
	if m.scratch == "" {
		return
	}
	if err := syscall.Unmount(m.mnt, 0); err != nil {
		syscall.Unmount(m.mnt, syscall.MNT_DETACH)
	}
	// The server exits once unmounted; wait so runs do not overlap.
	for i := 0; i < 500 && m.pid != 0 && syscall.Kill(m.pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	os.RemoveAll(m.scratch)
}

// serverPID finds the process serving mnt by its command line.
func serverPID(mnt string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 0 && args[len(args)-1] == mnt {
			return pid
		}
	}
	return 0
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// op is one measured operation over a mount; it returns the figure.
type op func(m *mounted) (float64, error)

// scenario is one scenario ready to run: its stack, its peers, what is
// measured on each fresh mount, and the row its medians go to.
type scenario struct {
	row     UnionRow
	stack   *stack
	peers   []string
	measure op
	cold    bool // caches dropped after mounting
	repeat  int
}

func prepareScenario(sc string, img *stack, root string, o UnionOptions) (*scenario, error) {
	prepared := &scenario{row: UnionRow{Scenario: sc, Unit: "s", Values: map[string]float64{}}}
	row := &prepared.row // measures may note what they found
	s := img
	peers := unionPeers
	var measure op
	cold := true
	switch sc {
	case "seqread-cold", "seqread-warm":
		row.Unit = "MB/s"
		cold = sc == "seqread-cold"
		row.Note = fmt.Sprintf("read a %d MiB file with 1 MiB reads", o.BigSize>>20)
		measure = func(m *mounted) (float64, error) {
			p := filepath.Join(m.mnt, "data/big")
			if !cold {
				if _, err := readAll(p); err != nil {
					return 0, err
				}
			}
			start := time.Now()
			n, err := readAll(p)
			return float64(n) / 1e6 / time.Since(start).Seconds(), err
		}
	case "randread-4k":
		row.Unit = "MB/s"
		cold = false
		row.Note = "20,000 random 4 KiB preads of the large file, in the page cache"
		measure = func(m *mounted) (float64, error) {
			p := filepath.Join(m.mnt, "data/big")
			if _, err := readAll(p); err != nil {
				return 0, err
			}
			f, err := os.Open(p)
			if err != nil {
				return 0, err
			}
			defer f.Close()
			r := rand.New(rand.NewPCG(3, 4))
			buf := make([]byte, 4096)
			blocks := o.BigSize / 4096
			start := time.Now()
			for i := 0; i < 20000; i++ {
				if _, err := f.ReadAt(buf, r.Int64N(blocks)*4096); err != nil {
					return 0, err
				}
			}
			return 20000 * 4096 / 1e6 / time.Since(start).Seconds(), nil
		}
	case "walk":
		row.Note = "lstat every entry of the image (fresh mount, caches dropped)"
		measure = func(m *mounted) (float64, error) {
			start := time.Now()
			n := 0
			err := filepath.WalkDir(m.mnt, func(p string, d os.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if p == filepath.Join(m.mnt, "many") {
					return filepath.SkipDir // readdir-100k's
				}
				var st syscall.Stat_t
				n++
				return syscall.Lstat(p, &st)
			})
			row.Note = fmt.Sprintf("lstat every entry of the image, %d entries (fresh mount, caches dropped)", n)
			return time.Since(start).Seconds(), err
		}
	case "readdir-100k":
		row.Note = fmt.Sprintf("list a %d-entry lower directory (fresh mount, caches dropped)", o.ManyEntries)
		measure = func(m *mounted) (float64, error) {
			start := time.Now()
			f, err := os.Open(filepath.Join(m.mnt, "many"))
			if err != nil {
				return 0, err
			}
			names, err := f.Readdirnames(-1)
			f.Close()
			if err == nil && len(names) != o.ManyEntries {
				err = fmt.Errorf("listed %d entries", len(names))
			}
			return time.Since(start).Seconds(), err
		}
	case "smallfiles":
		cold = false
		row.Note = "create, write 4 KiB, close, then delete 5,000 files in a new directory"
		measure = func(m *mounted) (float64, error) {
			d := filepath.Join(m.mnt, "smallfiles")
			if err := os.Mkdir(d, 0o755); err != nil {
				return 0, err
			}
			data := make([]byte, 4096)
			start := time.Now()
			for i := 0; i < 5000; i++ {
				if err := os.WriteFile(filepath.Join(d, strconv.Itoa(i)), data, 0o644); err != nil {
					return 0, err
				}
			}
			for i := 0; i < 5000; i++ {
				if err := os.Remove(filepath.Join(d, strconv.Itoa(i))); err != nil {
					return 0, err
				}
			}
			t := time.Since(start).Seconds()
			return t, os.Remove(d)
		}
	case "copyup-1g":
		peers = unionPeers[1:]
		row.Note = fmt.Sprintf("open a %d MiB lower file for writing (copy-up) and append a byte (caches dropped)", o.BigSize>>20)
		measure = func(m *mounted) (float64, error) {
			start := time.Now()
			f, err := os.OpenFile(filepath.Join(m.mnt, "data/big"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return 0, err
			}
			_, err = f.Write([]byte{1})
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return time.Since(start).Seconds(), err
		}
	case "lookup-2", "lookup-64", "lookup-500":
		n, _ := strconv.Atoi(strings.TrimPrefix(sc, "lookup-"))
		var err error
		if s, err = lookupStack(root, n); err != nil {
			return nil, err
		}
		row.Note = fmt.Sprintf("stat 1,000 files of the bottom layer under a directory every one of the %d layers has (fresh mount, page cache warm)", n)
		cold = false
		measure = func(m *mounted) (float64, error) {
			start := time.Now()
			for i := 0; i < 1000; i++ {
				var st syscall.Stat_t
				if err := syscall.Lstat(filepath.Join(m.mnt, "d", fmt.Sprintf("f%04d", i)), &st); err != nil {
					return 0, err
				}
			}
			return time.Since(start).Seconds(), nil
		}
	case "rss":
		peers = []string{PeerFuseOv, PeerStrata}
		row.Unit = "MiB"
		row.Note = "the FUSE server's resident memory after walking the whole image"
		measure = func(m *mounted) (float64, error) {
			err := filepath.WalkDir(m.mnt, func(p string, d os.DirEntry, err error) error {
				if err != nil {
					return err
				}
				var st syscall.Stat_t
				return syscall.Lstat(p, &st)
			})
			return rssMiB(m.pid), err
		}
	default:
		return nil, fmt.Errorf("unknown scenario (want one of %s)", strings.Join(UnionScenarios, ", "))
	}
	repeat := o.Runs
	if strings.HasPrefix(sc, "lookup-") {
		// A lookup's round trip costs about 18 or 47 us here, as client
		// and server threads share a CPU or not, and a run mostly keeps
		// one placement: medians of few runs flip between the two.
		repeat *= 3
	}
	prepared.stack, prepared.peers, prepared.measure, prepared.cold, prepared.repeat = s, peers, measure, cold, repeat
	return prepared, nil
}

// runScenarios runs the scenarios' runs in turn, and in each run the
// peers in turn, so that drift affects them alike; each row gets its
// medians.
func runScenarios(ctx context.Context, scs []*scenario, root string, o UnionOptions) error {
	runs := make([]map[string][]float64, len(scs))
	for i := range runs {
		runs[i] = map[string][]float64{}
	}
	for r := 0; ; r++ {
		more := false
		for i, sc := range scs {
			if r >= sc.repeat {
				continue
			}
			more = true
			for _, peer := range sc.peers {
				if err := ctx.Err(); err != nil {
					return err
				}
				m, err := mount(ctx, peer, sc.stack, root, o)
				if err != nil {
					return fmt.Errorf("scenario %s: %w", sc.row.Scenario, err)
				}
				if sc.cold {
					dropCaches()
				}
				v, err := sc.measure(m)
				m.unmount()
				if err != nil {
					return fmt.Errorf("scenario %s: %s: %w", sc.row.Scenario, peer, err)
				}
				o.Log.Info("run", "scenario", sc.row.Scenario, "peer", peer, "value", v)
				runs[i][peer] = append(runs[i][peer], v)
			}
		}
		if !more {
			break
		}
	}
	for i, sc := range scs {
		for peer, vs := range runs[i] {
			sc.row.Values[peer] = medianFloat(vs)
		}
	}
	return nil
}

func readAll(p string) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, make([]byte, 1<<20))
}

func medianFloat(vs []float64) float64 {
	s := append([]float64{}, vs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// Markdown renders the report: each peer's figure and strata's ratio to
// kernel overlayfs and to fuse-overlayfs (above 1: strata is better).
func (r *UnionReport) Markdown() string {
	var b strings.Builder
	b.WriteString("| scenario | unit | native | kernel overlayfs | fuse-overlayfs | strata | strata vs overlayfs | strata vs fuse-overlayfs |\n|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "| %s | %s |", row.Scenario, row.Unit)
		for _, p := range unionPeers {
			if v, ok := row.Values[p]; ok {
				fmt.Fprintf(&b, " %s |", figure(v, row.Unit))
			} else {
				b.WriteString(" — |")
			}
		}
		for _, p := range []string{PeerKernel, PeerFuseOv} {
			b.WriteString(" " + ratio(row, p) + " |")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nMedians of %d runs (lookups: three times as many); peers take turns within each run. Ratios: above 1.00x strata is better (faster, or less memory).\n", r.Runs)
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "- %s: %s\n", row.Scenario, row.Note)
	}
	fmt.Fprintf(&b, "\nMachine: %s\nCommand: `%s`\n", r.Machine, r.Command)
	return b.String()
}

func figure(v float64, unit string) string {
	switch unit {
	case "s":
		if v < 1 {
			return fmt.Sprintf("%.1f ms", v*1000)
		}
		return fmt.Sprintf("%.2f s", v)
	case "MB/s":
		return fmt.Sprintf("%.0f MB/s", v)
	default:
		return fmt.Sprintf("%.1f %s", v, unit)
	}
}

// ratio is how strata compares with peer: for times and memory the
// peer's over strata's, for throughput strata's over the peer's.
func ratio(row UnionRow, peer string) string {
	sv, ok1 := row.Values[PeerStrata]
	pv, ok2 := row.Values[peer]
	if !ok1 || !ok2 || sv == 0 || pv == 0 {
		return "—"
	}
	if row.Unit == "MB/s" {
		return fmt.Sprintf("%.2fx", sv/pv)
	}
	return fmt.Sprintf("%.2fx", pv/sv)
}
