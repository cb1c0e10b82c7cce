// Command strata-bench runs strata's benchmark scenarios; `strata bench`
// runs it. It is a binary of its own so that the registry and image
// builders it needs stay out of the strata binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/stratafs/strata/bench"
	"github.com/stratafs/strata/internal/netshape"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("strata-bench", flag.ContinueOnError)
	strataBin := fs.String("strata", "", "the strata binary to measure (default: strata beside this binary)")
	images := fs.String("image", "demo,debian", "pull: images to pull, comma-separated (demo, debian)")
	runs := fs.Int("runs", 3, "repetitions per peer; medians are reported")
	workDir := fs.String("workdir", "/var/tmp/strata-bench", "scratch space and the cache of built images")
	drop := fs.Bool("drop-caches", os.Geteuid() == 0, "drop the page cache before each measured command")
	verbose := fs.Bool("v", false, "log each run")
	scenarios := fs.String("scenario", "", "union: scenarios to run, comma-separated (default all: "+strings.Join(bench.UnionScenarios, ",")+")")
	bigSize := fs.Int64("big-size", 1<<30, "union: size of the large file in bytes")
	overlayBin := fs.String("strata-overlay", "", "union: the strata-overlay binary to measure (default: beside this binary)")
	mbits := fs.Float64("mbit", 100, "coldstart: bandwidth of the shaped link in Mbit/s")
	rtt := fs.Duration("rtt", 20*time.Millisecond, "coldstart: round-trip time of the shaped link")
	csImage := fs.String("coldstart-image", "debian", "coldstart: debian (built from Debian packages) or busybox (small)")
	csWorkloads := fs.String("workloads", "", "coldstart: workloads to run, comma-separated (default all: python3 hello, gcc hello, import numpy, app)")
	csChart := fs.String("chart", "", "coldstart: also write the chart as an SVG image to this file")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: strata bench [OPTIONS] SCENARIO\n\nScenarios:\n  pull   full pull of a multi-layer image: strata vs skopeo copy + umoci unpack\n  union  the union filesystem: strata vs kernel overlayfs, fuse-overlayfs and a native directory\n  start  warm container start: strata run vs crun and runc on a bundle, and podman\n  coldstart  cold start through a shaped link: strata lazy (eStargz, optimized), strata full pull, podman\n\nOptions:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 125
	}
	if fs.NArg() != 1 || (fs.Arg(0) != "pull" && fs.Arg(0) != "union" && fs.Arg(0) != "start" && fs.Arg(0) != "coldstart") {
		fs.Usage()
		return 125
	}
	self, _ := os.Executable()
	if *strataBin == "" {
		*strataBin = filepath.Join(filepath.Dir(self), "strata")
	}
	if *overlayBin == "" {
		*overlayBin = filepath.Join(filepath.Dir(self), "strata-overlay")
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if fs.Arg(0) == "coldstart" {
		var ws []bench.Workload
		for _, w := range bench.ColdStartWorkloads() {
			if *csWorkloads == "" || strings.Contains(","+*csWorkloads+",", ","+w.Name+",") {
				ws = append(ws, w)
			}
		}
		rep, err := bench.ColdStart(ctx, bench.ColdStartOptions{Strata: *strataBin, WorkDir: *workDir, Runs: *runs, Image: *csImage, Log: log, Workloads: ws,
			Link: netshape.Link{BytesPerSecond: int64(*mbits * 1e6 / 8), RTT: *rtt}})
		if err != nil {
			fmt.Fprintf(os.Stderr, "strata bench coldstart: %v\n", err)
			return 1
		}
		rep.Command = "strata bench " + strings.Join(os.Args[1:], " ")
		fmt.Print(rep.Markdown())
		if *csChart != "" {
			if err := os.WriteFile(*csChart, rep.SVG(), 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "strata bench coldstart: chart: %v\n", err)
				return 1
			}
		}
		return 0
	}
	if fs.Arg(0) == "start" {
		rep, err := bench.Start(ctx, bench.StartOptions{Strata: *strataBin, Runs: *runs, WorkDir: *workDir, Log: log})
		if err != nil {
			fmt.Fprintf(os.Stderr, "strata bench start: %v\n", err)
			return 1
		}
		rep.Command = "strata bench " + strings.Join(os.Args[1:], " ")
		fmt.Print(rep.Markdown())
		return 0
	}
	if fs.Arg(0) == "union" {
		// The Debian image's layers, built by the pull scenario or here.
		if err := bench.BuildDebian(ctx, *workDir); err != nil {
			fmt.Fprintf(os.Stderr, "strata bench union: %v\n", err)
			return 1
		}
		rep, err := bench.Union(ctx, bench.UnionOptions{StrataOverlay: *overlayBin, WorkDir: *workDir, DebianLayers: filepath.Join(*workDir, "debian", "layers"),
			Runs: *runs, Scenarios: splitComma(*scenarios), BigSize: *bigSize, Log: log})
		if err != nil {
			fmt.Fprintf(os.Stderr, "strata bench union: %v\n", err)
			return 1
		}
		rep.Command = "strata bench " + strings.Join(os.Args[1:], " ")
		fmt.Print(rep.Markdown())
		return 0
	}
	rep, err := bench.Pull(ctx, bench.PullOptions{Strata: *strataBin, Images: splitComma(*images), Runs: *runs, WorkDir: *workDir, DropCaches: *drop, Log: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "strata bench pull: %v\n", err)
		return 1
	}
	fmt.Print(rep.Markdown())
	return 0
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
