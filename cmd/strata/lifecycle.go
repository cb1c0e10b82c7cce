package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/runtime"
	"github.com/stratafs/strata/volumes"
)

func createVerb() *verb {
	return &verb{name: "create", args: "IMAGE [COMMAND] [ARG...]", summary: "Create a container without starting it", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			var f createFlags
			f.register(fs)
			return func(ctx context.Context, a *app, args []string) error {
				f.entrypointSet = fs.Changed("entrypoint")
				c, err := a.newContainer(ctx, &f, args[0], args[1:])
				if err != nil {
					return runError(err)
				}
				fmt.Fprintln(a.stdout, c.ID)
				return nil
			}
		}}
}

// containerArg finds the container an argument names.
func (a *app) containerArg(ref string) (*runtime.Store, *runtime.Container, error) {
	cs, err := a.containers()
	if err != nil {
		return nil, nil, err
	}
	c, err := cs.Get(ref)
	return cs, c, err
}

// eachContainer runs f for every argument, printing the argument on
// success as docker does, and joins the failures.
func (a *app) eachContainer(args []string, f func(cs *runtime.Store, c *runtime.Container) error) error {
	var errs []error
	for _, ref := range args {
		cs, c, err := a.containerArg(ref)
		if err == nil {
			err = f(cs, c)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(a.stdout, ref)
	}
	return errors.Join(errs...)
}

func startVerb() *verb {
	return &verb{name: "start", args: "CONTAINER", summary: "Start a created or stopped container", minArgs: 1, maxArgs: 1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			attach := fs.BoolP("attach", "a", false, "attach to the output and wait for the exit code")
			interactive := fs.BoolP("interactive", "i", false, "attach standard input")
			return func(ctx context.Context, a *app, args []string) error {
				var relay *signalRelay
				if *attach || *interactive {
					relay = relaySignals()
				}
				cs, c, err := a.containerArg(args[0])
				if err != nil {
					return err
				}
				st, err := cs.State(c.ID)
				if err != nil {
					return err
				}
				if st.Status == runtime.StatusRunning || st.Status == runtime.StatusPaused {
					if *attach {
						return errors.New("container is already running")
					}
					fmt.Fprintln(a.stdout, args[0])
					return nil
				}
				if err := needTerminal(*interactive && c.Spec.Tty); err != nil {
					return err
				}
				if err := a.servableID(c.ImageID); err != nil {
					return err
				}
				if *attach || *interactive {
					return a.runForeground(ctx, c, *interactive, relay, nil)
				}
				if err := a.startDetached(c); err != nil {
					if cs.MonitorAlive(c.ID) {
						// Started by another start at once (ours found
						// its monitor there): as when it was running.
						fmt.Fprintln(a.stdout, args[0])
						return nil
					}
					return a.failedStart(ctx, c, err)
				}
				fmt.Fprintln(a.stdout, args[0])
				return nil
			}
		}}
}

type psRow struct {
	ID         string `json:"ID"`
	Image      string `json:"Image"`
	Command    string `json:"Command"`
	Created    string `json:"CreatedAt"`
	RunningFor string `json:"RunningFor"`
	Status     string `json:"Status"`
	State      string `json:"State"`
	Names      string `json:"Names"`
}

func psVerb() *verb {
	return &verb{name: "ps", summary: "List containers", maxArgs: 0,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			all := fs.BoolP("all", "a", false, "show all containers (default: running ones)")
			quiet := fs.BoolP("quiet", "q", false, "print only container IDs")
			format := fs.String("format", "", "json (one object a line), or a Go template ({{.Names}} {{.Status}})")
			noTrunc := fs.Bool("no-trunc", false, "do not truncate IDs and commands")
			filters := fs.StringArrayP("filter", "f", nil, "show only containers that match: id=, name=, label=KEY[=VALUE], status=, ancestor=IMAGE, exited=CODE")
			return func(ctx context.Context, a *app, _ []string) error {
				match, filtersStatus, err := psFilter(*filters)
				if err != nil {
					return err
				}
				var tmpl *template.Template
				if *format != "" && *format != "json" && *format != "table" {
					var err error
					if tmpl, err = outputTemplate(*format); err != nil {
						return err
					}
				}
				cs, err := a.containers()
				if err != nil {
					return err
				}
				list, err := cs.List()
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
				if !*quiet && (*format == "" || *format == "table") {
					fmt.Fprintln(tw, "CONTAINER ID\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tNAMES")
				}
				for _, c := range list {
					st, err := cs.State(c.ID)
					if err != nil {
						continue
					}
					if !*all && !filtersStatus && st.Status != runtime.StatusRunning && st.Status != runtime.StatusPaused {
						continue
					}
					if !match(c, st) {
						continue
					}
					row := psRow{ID: c.ID[:12], Image: c.Image, Command: quoteCommand(c.Spec.Args, *noTrunc),
						Created: c.Created.Format(time.RFC3339), RunningFor: humanAgo(c.Created), Status: statusText(st), State: st.Status, Names: c.Name}
					if *noTrunc {
						row.ID = c.ID
					}
					switch {
					case *quiet:
						fmt.Fprintln(a.stdout, row.ID)
					case *format == "json":
						b, _ := json.Marshal(row)
						fmt.Fprintln(a.stdout, string(b))
					case tmpl != nil:
						if err := printTemplate(a.stdout, tmpl, row); err != nil {
							return err
						}
					default:
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", row.ID, row.Image, row.Command, row.RunningFor, row.Status, row.Names)
					}
				}
				return tw.Flush()
			}
		}}
}

// logTime reads a --since or --until value as docker takes them: an RFC
// 3339 time (or a date), Unix seconds (with a fraction), or a duration
// back from now. Empty is the zero time.
func logTime(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return now.Add(-d), nil
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Unix(0, int64(secs*1e9)), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, &usageError{msg: fmt.Sprintf("invalid %s %q: want a time (RFC 3339, Unix seconds) or a duration (10m)", flag, v)}
}

// psFilter reads ps's --filter KEY=VALUE flags as docker's: values of
// one key are alternatives, keys must all match. A status or exited
// filter looks at every container, as with -a.
func psFilter(flags []string) (match func(*runtime.Container, runtime.State) bool, allStates bool, err error) {
	want := map[string][]string{}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		switch k {
		case "id", "name", "label", "status", "ancestor", "exited":
		default:
			ok = false
		}
		if !ok {
			return nil, false, &usageError{msg: fmt.Sprintf("invalid --filter %q: want id=, name=, label=, status=, ancestor= or exited=", f)}
		}
		if k == "exited" {
			if _, err := strconv.Atoi(v); err != nil {
				return nil, false, &usageError{msg: fmt.Sprintf("invalid --filter %q: exited takes an exit code", f)}
			}
		}
		want[k] = append(want[k], v)
	}
	one := func(k, v string, c *runtime.Container, st runtime.State) bool {
		switch k {
		case "id":
			return strings.HasPrefix(c.ID, v)
		case "name":
			return strings.Contains(c.Name, v)
		case "label":
			lk, lv, hasValue := strings.Cut(v, "=")
			have, ok := c.Labels[lk]
			return ok && (!hasValue || have == lv)
		case "status":
			return st.Status == v
		case "ancestor":
			return c.Image == v || c.ImageID == v || strings.HasPrefix(strings.TrimPrefix(c.ImageID, "sha256:"), strings.TrimPrefix(v, "sha256:"))
		case "exited":
			return st.Status == runtime.StatusExited && strconv.Itoa(st.ExitCode) == v
		}
		return false
	}
	match = func(c *runtime.Container, st runtime.State) bool {
		for k, vs := range want {
			if !slices.ContainsFunc(vs, func(v string) bool { return one(k, v, c, st) }) {
				return false
			}
		}
		return true
	}
	return match, len(want["status"]) > 0 || len(want["exited"]) > 0, nil
}

func quoteCommand(args []string, full bool) string {
	s := strings.Join(args, " ")
	if len(s) > 20 && !full {
		s = s[:19] + "…"
	}
	return `"` + s + `"`
}

func statusText(st runtime.State) string {
	switch st.Status {
	case runtime.StatusRunning:
		return "Up " + humanDuration(time.Since(st.StartedAt))
	case runtime.StatusPaused:
		return "Up " + humanDuration(time.Since(st.StartedAt)) + " (Paused)"
	case runtime.StatusExited:
		return fmt.Sprintf("Exited (%d) %s", st.ExitCode, humanAgo(st.FinishedAt))
	}
	return "Created"
}

// stopContainer sends the stop signal and, after timeout, SIGKILL.
func (a *app) stopContainer(ctx context.Context, cs *runtime.Store, c *runtime.Container, timeout int, signal string) error {
	st, err := cs.State(c.ID)
	if err != nil {
		return err
	}
	if st.Status != runtime.StatusRunning && st.Status != runtime.StatusPaused {
		return nil
	}
	if st.Status == runtime.StatusPaused {
		runtime.OpenCgroup(c.ID).Freeze(false)
	}
	if signal == "" {
		signal = c.StopSignal
	}
	sig := syscall.SIGTERM
	if signal != "" {
		if sig, err = runtime.ParseSignal(signal); err != nil {
			return err
		}
	}
	if err := cs.Signal(c.ID, sig); err != nil && !errors.Is(err, runtime.ErrNotRunning) {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Duration(timeout)*time.Second)
	defer cancel()
	if cs.WaitExit(wctx, c.ID) == nil {
		return nil
	}
	return killContainer(ctx, cs, c)
}

// killContainer sends SIGKILL (thawing a paused container first) and
// waits until the monitor has recorded the exit. A container that ended
// meanwhile is no error.
func killContainer(ctx context.Context, cs *runtime.Store, c *runtime.Container) error {
	runtime.OpenCgroup(c.ID).Freeze(false)
	if err := cs.Signal(c.ID, syscall.SIGKILL); err != nil && !errors.Is(err, runtime.ErrNotRunning) && cs.MonitorAlive(c.ID) {
		return err
	}
	return cs.WaitExit(ctx, c.ID)
}

func stopVerb() *verb {
	return &verb{name: "stop", args: "CONTAINER [CONTAINER...]", summary: "Stop containers: the stop signal, then SIGKILL after a timeout", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			timeout := fs.IntP("time", "t", -1, "seconds to wait before SIGKILL (default: the container's, 10)")
			signal := fs.StringP("signal", "s", "", "signal to send (default: the image's StopSignal, else SIGTERM)")
			return func(ctx context.Context, a *app, args []string) error {
				return a.eachContainer(args, func(cs *runtime.Store, c *runtime.Container) error {
					t := c.StopTimeout
					if *timeout >= 0 {
						t = *timeout
					}
					return a.stopContainer(ctx, cs, c, t, *signal)
				})
			}
		}}
}

func killVerb() *verb {
	return &verb{name: "kill", args: "CONTAINER [CONTAINER...]", summary: "Send a signal to running containers", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			signal := fs.StringP("signal", "s", "KILL", "signal to send")
			return func(ctx context.Context, a *app, args []string) error {
				sig, err := runtime.ParseSignal(*signal)
				if err != nil {
					return &usageError{msg: err.Error()}
				}
				return a.eachContainer(args, func(cs *runtime.Store, c *runtime.Container) error {
					return cs.Signal(c.ID, sig)
				})
			}
		}}
}

func rmVerb() *verb {
	return &verb{name: "rm", args: "CONTAINER [CONTAINER...]", summary: "Remove containers", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			force := fs.BoolP("force", "f", false, "kill a running container first")
			vols := fs.BoolP("volumes", "v", false, "also remove the container's anonymous volumes")
			return func(ctx context.Context, a *app, args []string) error {
				return a.eachContainer(args, func(cs *runtime.Store, c *runtime.Container) error {
					if *force && cs.MonitorAlive(c.ID) {
						if err := killContainer(ctx, cs, c); err != nil {
							return err
						}
					}
					if st, err := cs.State(c.ID); err == nil && (st.Status == runtime.StatusRunning || st.Status == runtime.StatusPaused) {
						return fmt.Errorf("cannot remove container %s: it is %s: stop it first, or use rm -f", c.ID[:12], st.Status)
					}
					return a.removeContainer(ctx, c, *vols)
				})
			}
		}}
}

func logsVerb() *verb {
	return &verb{name: "logs", args: "CONTAINER", summary: "Show a container's output", minArgs: 1, maxArgs: 1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			follow := fs.BoolP("follow", "f", false, "keep printing output until the container stops")
			tail := fs.String("tail", "all", "number of lines from the end to show")
			timestamps := fs.BoolP("timestamps", "t", false, "show timestamps")
			sinceFlag := fs.String("since", "", "show output since a time (RFC 3339, Unix seconds) or for a duration back (10m)")
			untilFlag := fs.String("until", "", "show output before a time (RFC 3339, Unix seconds) or a duration ago (10m)")
			return func(ctx context.Context, a *app, args []string) error {
				now := time.Now()
				since, err := logTime("--since", *sinceFlag, now)
				if err != nil {
					return err
				}
				until, err := logTime("--until", *untilFlag, now)
				if err != nil {
					return err
				}
				within := func(e runtime.LogEntry) bool {
					return !e.Time.Before(since) && (until.IsZero() || !e.Time.After(until))
				}
				cs, c, err := a.containerArg(args[0])
				if err != nil {
					return err
				}
				n := -1
				if *tail != "all" {
					if _, err := fmt.Sscan(*tail, &n); err != nil || n < 0 {
						return &usageError{msg: fmt.Sprintf("invalid --tail %q: want a number or all", *tail)}
					}
				}
				print := func(e runtime.LogEntry) {
					w := a.stdout
					if e.Stream == "stderr" {
						w = a.stderr
					}
					if *timestamps {
						fmt.Fprintf(w, "%s %s", e.Time.Format(time.RFC3339Nano), e.Log)
					} else {
						io.WriteString(w, e.Log)
					}
				}
				entries, offset, err := cs.ReadLogs(c.ID, 0)
				if err != nil {
					return err
				}
				entries = slices.DeleteFunc(entries, func(e runtime.LogEntry) bool { return !within(e) })
				if n >= 0 && n < len(entries) {
					entries = entries[len(entries)-n:]
				}
				for _, e := range entries {
					print(e)
				}
				if !*follow {
					return nil
				}
				for {
					alive := cs.MonitorAlive(c.ID)
					more, next, err := cs.ReadLogs(c.ID, offset)
					if err != nil {
						return err
					}
					for _, e := range more {
						if within(e) {
							print(e)
						}
					}
					offset = next
					if !alive || !until.IsZero() && time.Now().After(until) {
						return nil
					}
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
		}}
}

func waitVerb() *verb {
	return &verb{name: "wait", args: "CONTAINER [CONTAINER...]", summary: "Wait for containers to stop and print their exit codes", minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				var errs []error
				for _, ref := range args {
					cs, c, err := a.containerArg(ref)
					var st runtime.State
					if err == nil {
						st, err = cs.Wait(ctx, c.ID)
					}
					if err != nil {
						errs = append(errs, err)
						continue
					}
					fmt.Fprintln(a.stdout, st.ExitCode)
				}
				return errors.Join(errs...)
			}
		}}
}

func renameVerb() *verb {
	return &verb{name: "rename", args: "CONTAINER NEW_NAME", summary: "Rename a container", minArgs: 2, maxArgs: 2,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				cs, c, err := a.containerArg(args[0])
				if err != nil {
					return err
				}
				return cs.Rename(ctx, c, args[1])
			}
		}}
}

func pauseVerb(pause bool) *verb {
	name, summary := "pause", "Freeze every process of containers (cgroup freezer)"
	if !pause {
		name, summary = "unpause", "Resume paused containers"
	}
	return &verb{name: name, args: "CONTAINER [CONTAINER...]", summary: summary, minArgs: 1, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				return a.eachContainer(args, func(cs *runtime.Store, c *runtime.Container) error {
					st, err := cs.State(c.ID)
					if err != nil {
						return err
					}
					want, from := runtime.StatusPaused, runtime.StatusRunning
					if !pause {
						want, from = from, want
					}
					if st.Status != from {
						return fmt.Errorf("container %s is %s, not %s", c.ID[:12], st.Status, from)
					}
					if err := runtime.OpenCgroup(c.ID).Freeze(pause); err != nil {
						return err
					}
					st.Status = want
					return cs.SetState(c.ID, st)
				})
			}
		}}
}

// inspectContainer returns the container ref names, if it names one.
func (a *app) inspectContainer(ref string) (any, bool) {
	cs, c, err := a.containerArg(ref)
	if err != nil {
		return nil, false
	}
	st, err := cs.State(c.ID)
	if err != nil {
		return nil, false
	}
	return inspectJSON(c, st), true
}

func volumeVerb() *verb {
	return &verb{name: "volume", args: "create|ls|inspect|rm|prune ...", summary: "Manage volumes", minArgs: 1, maxArgs: -1, raw: true,
		flags: func(*pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				if len(args) == 0 {
					return &exitError{code: exitUsage, err: errors.New("usage: strata volume create|ls|inspect|rm|prune")}
				}
				fs := pflag.NewFlagSet("strata volume "+args[0], pflag.ContinueOnError)
				fs.SetOutput(io.Discard)
				quiet := fs.BoolP("quiet", "q", false, "ls: print only names")
				force := fs.BoolP("force", "f", false, "rm: no error for a missing volume; prune: no prompt")
				all := fs.BoolP("all", "a", false, "prune: named volumes too, not only anonymous ones")
				if err := fs.Parse(args[1:]); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				vs, err := volumes.Open(a.root)
				if err != nil {
					return err
				}
				rest := fs.Args()
				if (args[0] == "inspect" || args[0] == "rm") && len(rest) == 0 {
					return &exitError{code: exitUsage, err: fmt.Errorf("usage: strata volume %s VOLUME...", args[0])}
				}
				switch args[0] {
				case "create":
					if len(rest) > 1 {
						return &exitError{code: exitUsage, err: errors.New("usage: strata volume create [NAME]")}
					}
					name := ""
					if len(rest) == 1 {
						name = rest[0]
					}
					v, _, err := vs.Create(ctx, name, false)
					if err != nil {
						return err
					}
					fmt.Fprintln(a.stdout, v.Name)
				case "ls":
					list, err := vs.List()
					if err != nil {
						return err
					}
					tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
					if !*quiet {
						fmt.Fprintln(tw, "DRIVER\tVOLUME NAME")
					}
					for _, v := range list {
						if *quiet {
							fmt.Fprintln(a.stdout, v.Name)
						} else {
							fmt.Fprintf(tw, "%s\t%s\n", v.Driver, v.Name)
						}
					}
					return tw.Flush()
				case "inspect":
					var out []*volumes.Volume
					var errs []error
					for _, n := range rest {
						v, err := vs.Get(n)
						if err != nil {
							errs = append(errs, err)
							continue
						}
						out = append(out, v)
					}
					b, _ := json.MarshalIndent(out, "", "    ")
					fmt.Fprintln(a.stdout, string(b))
					return errors.Join(errs...)
				case "rm":
					var errs []error
					for _, n := range rest {
						err := vs.Remove(ctx, n, a.volumeUsers)
						if err != nil && !(*force && errors.As(err, new(*volumes.NotFoundError))) {
							errs = append(errs, err)
							continue
						}
						fmt.Fprintln(a.stdout, n)
					}
					return errors.Join(errs...)
				case "prune":
					if !*force {
						what := "all anonymous volumes no container uses"
						if *all {
							what = "all volumes no container uses"
						}
						if err := a.confirm(what); err != nil {
							return err
						}
					}
					names, freed, err := vs.Prune(ctx, *all, a.volumeUsers)
					if len(names) > 0 {
						fmt.Fprintln(a.stdout, "Deleted Volumes:")
						for _, n := range names {
							fmt.Fprintln(a.stdout, n)
						}
						fmt.Fprintln(a.stdout)
					}
					fmt.Fprintf(a.stdout, "Total reclaimed space: %s\n", humanSize(freed))
					return err
				default:
					return &exitError{code: exitUsage, err: fmt.Errorf("unknown volume command %q: want create, ls, inspect, rm or prune", args[0])}
				}
				return nil
			}
		}}
}

// confirm asks before a prune removes what, as docker's prune commands
// do: anything but y or yes is no.
func (a *app) confirm(what string) error {
	fmt.Fprintf(a.stdout, "This will remove %s.\nAre you sure you want to continue? [y/N] ", what)
	line, _ := bufio.NewReader(a.stdin).ReadString('\n')
	if ans := strings.TrimSpace(strings.ToLower(line)); ans != "y" && ans != "yes" {
		return errors.New("aborted: nothing removed (-f to skip the question)")
	}
	return nil
}
