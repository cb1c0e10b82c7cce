// Command strata runs containers straight from registry images.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/internal/term"
	"github.com/stratafs/strata/lazypull"
)

// version is set by the Makefile through -ldflags.
var version = "dev"

// Exit codes follow the docker CLI: 1 for a failed operation, 125 for
// strata's own failure to understand the command.
const (
	exitFailure = 1
	exitUsage   = 125
)

// usageError is a bad verb, flag or argument count.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// app is what every verb receives: global settings and the streams.
type app struct {
	root             string
	logLevel         string
	mirrors          []string
	insecure         []string
	cacheMax         string
	readTimeout      time.Duration
	stdin            io.Reader
	stdout, stderr   io.Writer
	log              *slog.Logger
	store            *lazypull.Store
	storeErr         error
	storeOpened      bool
	config           lazypull.Config
	stdoutIsTerminal bool
	// looked are the images this process has looked up, by config
	// digest: a container's rootfs is made from the record its creation
	// just read, not from a second read of the store's index.
	looked map[string]*lazypull.ImageRecord
}

// Store opens the local store on first use.
func (a *app) Store() (*lazypull.Store, error) {
	if !a.storeOpened {
		a.storeOpened = true
		a.store, a.storeErr = lazypull.OpenStore(a.root)
		if a.storeErr == nil {
			a.config, a.storeErr = lazypull.LoadConfig(a.store.Root())
		}
	}
	return a.store, a.storeErr
}

type verb struct {
	name    string
	args    string // usage of the positional arguments
	summary string
	hidden  bool
	minArgs int
	maxArgs int // -1: any
	// raw verbs get their arguments unparsed (they hand them on).
	raw   bool
	flags func(*pflag.FlagSet) func(ctx context.Context, a *app, args []string) error
}

func verbs() []*verb {
	return append(registryVerbs(),
		imagesVerb(), rmiVerb(), inspectVerb(), unpackVerb(), versionVerb(), benchVerb(), umountVerb(),
		runVerb(), execVerb(), createVerb(), startVerb(), psVerb(), stopVerb(), killVerb(), rmVerb(), logsVerb(),
		waitVerb(), renameVerb(), diffVerb(), topVerb(), cpVerb(), pauseVerb(true), pauseVerb(false), volumeVerb(), monitorVerb(), initVerb(),
	)
}

// interruptible is a context that SIGINT and SIGTERM cancel. The signals
// are registered on a goroutine, not before the command goes on: the
// first registration starts the Go runtime's signal thread and loop, and
// each is a round trip to that thread, which a container's start would
// wait for. It is never stopped: the process exits when its command
// returns. (One of them in the first moment ends the process as it
// would have before it started.)
func interruptible() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		cancel()
	}()
	return ctx
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(argv []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, stdoutIsTerminal: isTerminal(stdout)}
	global := pflag.NewFlagSet("strata", pflag.ContinueOnError)
	global.SetInterspersed(false)
	global.SetOutput(io.Discard)
	global.StringVar(&a.root, "root", lazypull.DefaultRoot(), "store root directory (env STRATA_ROOT)")
	global.StringVar(&a.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	global.StringArrayVar(&a.mirrors, "registry-mirror", nil, "registry mirror, tried before the origin: URL (for Docker Hub) or REGISTRY=URL; repeatable")
	global.StringArrayVar(&a.insecure, "insecure-registry", nil, "registry host[:port] to reach over plain HTTP; repeatable")
	global.DurationVar(&a.readTimeout, "lazy-read-timeout", 30*time.Second, "how long a read of a lazy layer waits for an unreachable registry before it fails with EIO")
	global.StringVar(&a.cacheMax, "cache-max", "", "bound the chunk cache of lazy layers (e.g. 10g): least recently used chunks of layers not in use are evicted")
	help := global.BoolP("help", "h", false, "show help")
	showVersion := global.BoolP("version", "v", false, "show the strata version (as strata version)")
	vs := verbs()
	if err := global.Parse(argv); err != nil {
		fmt.Fprintf(stderr, "strata: %v\n", err)
		globalUsage(stderr, global, vs)
		return exitUsage
	}
	if *showVersion {
		fmt.Fprintf(stdout, "strata %s\n", version)
		return 0
	}
	if *help || global.NArg() == 0 {
		w := stdout
		code := 0
		if !*help {
			w, code = stderr, exitUsage
		}
		globalUsage(w, global, vs)
		return code
	}
	level, err := parseLevel(a.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "strata: %v\n", err)
		return exitUsage
	}
	a.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	name := global.Arg(0)
	var v *verb
	for _, c := range vs {
		if c.name == name {
			v = c
		}
	}
	if v == nil {
		fmt.Fprintf(stderr, "strata: unknown command %q\n", name)
		globalUsage(stderr, global, vs)
		return exitUsage
	}
	if v.raw {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := handOver(v.flags(nil)(ctx, a, global.Args()[1:]), argv); err != nil {
			fmt.Fprintf(stderr, "strata %s: %v\n", v.name, err)
			var ee *exitError
			if errors.As(err, &ee) {
				return ee.code
			}
			return exitFailure
		}
		return 0
	}
	fs := pflag.NewFlagSet("strata "+v.name, pflag.ContinueOnError)
	fs.SetInterspersed(false)
	fs.SetOutput(io.Discard)
	runVerb := v.flags(fs)
	// -h is help unless the verb uses it (run's --hostname, as docker's).
	var vhelp *bool
	if fs.ShorthandLookup("h") == nil {
		vhelp = fs.BoolP("help", "h", false, "show help")
	} else {
		vhelp = fs.Bool("help", false, "show help")
	}
	if err := fs.Parse(global.Args()[1:]); err != nil {
		fmt.Fprintf(stderr, "strata %s: %v\n", v.name, err)
		verbUsage(stderr, v, fs)
		return exitUsage
	}
	if *vhelp {
		verbUsage(stdout, v, fs)
		return 0
	}
	args := fs.Args()
	if len(args) < v.minArgs || (v.maxArgs >= 0 && len(args) > v.maxArgs) {
		fmt.Fprintf(stderr, "strata %s: wrong number of arguments\n", v.name)
		verbUsage(stderr, v, fs)
		return exitUsage
	}
	err = handOver(runVerb(interruptible(), a, args), argv)
	if err == nil {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "strata %s: %v\n", v.name, err)
		verbUsage(stderr, v, fs)
		return exitUsage
	}
	if err.Error() != "" {
		fmt.Fprintf(stderr, "strata %s: %v\n", v.name, err)
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

// isTerminal tells whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(f.Fd())
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func globalUsage(w io.Writer, global *pflag.FlagSet, vs []*verb) {
	fmt.Fprintf(w, "Usage: strata [OPTIONS] COMMAND [ARGS...]\n\nRun containers straight from registry images.\n\nCommands:\n")
	sort.Slice(vs, func(i, j int) bool { return vs[i].name < vs[j].name })
	for _, v := range vs {
		if !v.hidden {
			fmt.Fprintf(w, "  %-10s %s\n", v.name, v.summary)
		}
	}
	fmt.Fprintf(w, "\nGlobal options:\n%s\nRun 'strata COMMAND --help' for a command's options.\n", global.FlagUsages())
}

func verbUsage(w io.Writer, v *verb, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage: strata %s [OPTIONS] %s\n\n%s\n", v.name, v.args, v.summary)
	if u := fs.FlagUsages(); strings.TrimSpace(u) != "" {
		fmt.Fprintf(w, "\nOptions:\n%s", u)
	}
}

func versionVerb() *verb {
	return &verb{name: "version", summary: "Show the strata version", maxArgs: 0,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(_ context.Context, a *app, _ []string) error {
				fmt.Fprintf(a.stdout, "strata %s\n", version)
				return nil
			}
		}}
}
