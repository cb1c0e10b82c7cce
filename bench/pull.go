// Package bench holds strata's benchmark scenarios. Every figure is a
// ratio against a peer measured in the same run, printed with the command
// that reproduces it.
package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
	"github.com/stratafs/strata/whiteout"
)

// PullOptions configure the pull scenario.
type PullOptions struct {
	Strata     string   // the strata binary measured, run as a user runs it
	Images     []string // "demo", "debian"
	Runs       int      // repetitions per peer; medians are reported
	WorkDir    string   // scratch space and the cache of built layers
	DropCaches bool     // drop the page cache before each measured command (root)
	Log        *slog.Logger
}

// PullResult is one image's figures.
type PullResult struct {
	Image            string
	Layers           int
	CompressedBytes  int64
	Strata, Peer     time.Duration // medians
	StrataRuns       []time.Duration
	PeerRuns         []time.Duration
	UnpackedEntries  int
	ReproduceCommand string
}

// Ratio is the peer's time over strata's: above 1, strata is faster.
func (r PullResult) Ratio() float64 { return r.Peer.Seconds() / r.Strata.Seconds() }

// PullReport is the whole scenario's outcome.
type PullReport struct {
	Results []PullResult
	Machine string
	Command string
}

// Pull measures a full pull from a local registry: strata pull against
// skopeo copy + umoci unpack, which together do the same job (fetch,
// verify, unpack every layer).
func Pull(ctx context.Context, o PullOptions) (*PullReport, error) {
	if o.Runs <= 0 {
		o.Runs = 3
	}
	if len(o.Images) == 0 {
		o.Images = []string{"demo", "debian"}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	for _, tool := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("bench pull needs %s (apt-get install %s)", tool, tool)
		}
	}
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, err
	}
	regDir, err := os.MkdirTemp(o.WorkDir, "registry-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(regDir)
	reg, err := testregistry.New(ctx, testregistry.Options{StorageDir: regDir})
	if err != nil {
		return nil, err
	}
	defer reg.Close()

	rep := &PullReport{Machine: machine([]string{"skopeo", "--version"}, []string{"umoci", "--version"}), Command: "make bench  # = bin/strata bench pull --runs " + fmt.Sprint(o.Runs)}
	for _, imgName := range o.Images {
		img, err := buildImage(ctx, imgName, o)
		if err != nil {
			return nil, fmt.Errorf("build image %s: %w", imgName, err)
		}
		ref := reg.Ref("bench/" + imgName + ":latest")
		o.Log.Info("pushing", "image", imgName, "ref", ref)
		r, err := name.ParseReference(ref)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
			return nil, fmt.Errorf("push %s: %w", ref, err)
		}
		res, err := measurePull(ctx, o, imgName, ref, img)
		if err != nil {
			return nil, err
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

func buildImage(ctx context.Context, imgName string, o PullOptions) (v1.Image, error) {
	switch imgName {
	case "demo":
		return testimage.MultiLayer(testimage.Gzip)
	case "debian":
		if err := BuildDebian(ctx, o.WorkDir); err != nil {
			return nil, err
		}
		return layersImage(ctx, filepath.Join(o.WorkDir, "debian", "layers"), filepath.Join(o.WorkDir, "debian", "blobs"))
	}
	return nil, fmt.Errorf("unknown bench image %q (want demo or debian)", imgName)
}

// BuildDebian builds (once; cached in workDir/debian) the Debian image's
// layer directories with build-debian.sh.
func BuildDebian(ctx context.Context, workDir string) error {
	script := filepath.Join(sourceDir(), "build-debian.sh")
	cmd := exec.CommandContext(ctx, "sh", script, workDir)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", script, err)
	}
	return nil
}

// sourceDir finds bench/ for its scripts: beside the binary's checkout
// (STRATA_SOURCE), or the working directory.
func sourceDir() string {
	if d := os.Getenv("STRATA_SOURCE"); d != "" {
		return filepath.Join(d, "bench")
	}
	if _, err := os.Stat("bench/build-debian.sh"); err == nil {
		return "bench"
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// layersImage makes an image of the numbered layer directories under dir,
// each written with whiteout.WriteTar and gzip-compressed once into cache.
func layersImage(ctx context.Context, dir, cache string) (v1.Image, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, e := range ents {
		tarPath := filepath.Join(cache, e.Name()+".tar")
		if _, err := os.Stat(tarPath); err != nil {
			f, err := os.Create(tarPath + ".tmp")
			if err != nil {
				return nil, err
			}
			err = whiteout.WriteTar(ctx, filepath.Join(dir, e.Name()), f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
			if err := os.Rename(tarPath+".tmp", tarPath); err != nil {
				return nil, err
			}
		}
		l, err := tarball.LayerFromFile(tarPath, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Cmd = []string{"/bin/bash"}
	return mutate.ConfigFile(img, cfg)
}

func measurePull(ctx context.Context, o PullOptions, imgName, ref string, img v1.Image) (PullResult, error) {
	res := PullResult{Image: imgName}
	layers, err := img.Layers()
	if err != nil {
		return res, err
	}
	res.Layers = len(layers)
	for _, l := range layers {
		n, _ := l.Size()
		res.CompressedBytes += n
	}
	res.ReproduceCommand = fmt.Sprintf("strata --root R pull -q %s  vs  skopeo copy docker://%s oci:L:t && umoci unpack --image L:t B", ref, ref)
	for i := 0; i < o.Runs; i++ {
		// Alternate who goes first, so neither always meets a warmer machine.
		order := []bool{i%2 == 0, i%2 != 0}
		for _, strataTurn := range order {
			scratch, err := os.MkdirTemp(o.WorkDir, "run-")
			if err != nil {
				return res, err
			}
			if o.DropCaches {
				dropCaches()
			}
			var d time.Duration
			if strataTurn {
				d, err = timeCommands(ctx, [][]string{{o.Strata, "--root", filepath.Join(scratch, "root"), "pull", "-q", ref}})
				res.StrataRuns = append(res.StrataRuns, d)
			} else {
				layout := filepath.Join(scratch, "layout")
				args := [][]string{
					{"skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://" + ref, "oci:" + layout + ":bench"},
					{"umoci", "unpack", "--image", layout + ":bench", filepath.Join(scratch, "bundle")},
				}
				if os.Geteuid() != 0 {
					args[1] = append([]string{"umoci", "unpack", "--rootless"}, args[1][2:]...)
				}
				d, err = timeCommands(ctx, args)
				res.PeerRuns = append(res.PeerRuns, d)
			}
			os.RemoveAll(scratch)
			if err != nil {
				return res, err
			}
			o.Log.Info("run", "image", imgName, "strata", strataTurn, "seconds", d.Seconds())
		}
	}
	res.Strata, res.Peer = median(res.StrataRuns), median(res.PeerRuns)
	return res, nil
}

func timeCommands(ctx context.Context, cmds [][]string) (time.Duration, error) {
	start := time.Now()
	for _, c := range cmds {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, c[0], c[1:]...)
		cmd.Stdout, cmd.Stderr = io.Discard, &out
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("%s: %w\n%s", strings.Join(c, " "), err, out.String())
		}
	}
	return time.Since(start), nil
}

func dropCaches() {
	exec.Command("sync").Run()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration{}, ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// machine describes the host and the versions of the peer tools, each
// given as the command that prints its version.
func machine(tools ...[]string) string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	parts := []string{fmt.Sprintf("%d cores, Linux %s, %s", runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version())}
	for _, cmd := range tools {
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		v := "?"
		if err == nil {
			v = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		}
		parts = append(parts, v)
	}
	return strings.Join(parts, ", ")
}

// Markdown renders the report as a table with its command.
func (r *PullReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| image | layers | compressed | strata pull | skopeo copy + umoci unpack | peer / strata |\n|---|---|---|---|---|---|\n")
	for _, x := range r.Results {
		fmt.Fprintf(&b, "| %s | %d | %.1f MB | %.3f s | %.3f s | %.2fx |\n", x.Image, x.Layers, float64(x.CompressedBytes)/1e6, x.Strata.Seconds(), x.Peer.Seconds(), x.Ratio())
	}
	fmt.Fprintf(&b, "\nMedians of %d runs each, page cache dropped before every command, registry (Distribution, filesystem storage) in process on 127.0.0.1.\nMachine: %s\nCommand: `%s`\n", runsOf(r), r.Machine, r.Command)
	for _, x := range r.Results {
		fmt.Fprintf(&b, "Per run (%s): strata %v; peer %v\n", x.Image, secs(x.StrataRuns), secs(x.PeerRuns))
	}
	return b.String()
}

func runsOf(r *PullReport) int {
	if len(r.Results) == 0 {
		return 0
	}
	return len(r.Results[0].StrataRuns)
}

func secs(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, fmt.Sprintf("%.3f", d.Seconds()))
	}
	return strings.Join(s, ", ")
}
