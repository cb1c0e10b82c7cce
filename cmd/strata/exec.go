package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"sync"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/internal/term"
	"github.com/stratafs/strata/runtime"
)

// Exit code of exec for strata's own failures (the container not running,
// bad flags), as podman gives; 126 and 127 as for run.
const exitExecFailure = 125

func execVerb() *verb {
	return &verb{name: "exec", args: "CONTAINER COMMAND [ARG...]", summary: "Run a command in a running container", minArgs: 2, maxArgs: -1,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			interactive := fs.BoolP("interactive", "i", false, "keep standard input open")
			tty := fs.BoolP("tty", "t", false, "allocate a terminal")
			detach := fs.BoolP("detach", "d", false, "run the command in the background")
			env := fs.StringArrayP("env", "e", nil, "set environment variable KEY=VALUE")
			envFiles := fs.StringArray("env-file", nil, "read environment variables from a file")
			workdir := fs.StringP("workdir", "w", "", "working directory inside the container")
			user := fs.StringP("user", "u", "", "user to run as: NAME|UID[:GROUP|GID]")
			privileged := fs.Bool("privileged", false, "give the command all capabilities")
			return func(ctx context.Context, a *app, args []string) error {
				if err := needTerminal(*interactive && *tty && !*detach); err != nil {
					return err
				}
				code, err := a.execIn(args[0], args[1:], execOptions{
					interactive: *interactive, tty: *tty, detach: *detach, env: *env, envFiles: *envFiles,
					workdir: *workdir, user: *user, privileged: *privileged,
				})
				if err != nil {
					return err
				}
				if code != 0 {
					return &exitError{code: code, err: errSilent}
				}
				return nil
			}
		}}
}

type execOptions struct {
	interactive, tty, detach, privileged bool
	env, envFiles                        []string
	workdir, user                        string
}

// execIn runs a command in a running container and returns its exit code.
func (a *app) execIn(ref string, argv []string, o execOptions) (int, error) {
	failed := func(err error) (int, error) {
		var ue *usageError
		var ie *runtime.InitError
		switch {
		case errors.As(err, &ue):
			return 0, err
		case errors.As(err, &ie):
			return 0, &exitError{code: ie.Code, err: err}
		}
		return 0, &exitError{code: exitExecFailure, err: err}
	}
	var relay *signalRelay
	if !o.detach {
		relay = relaySignals()
	}
	if o.workdir != "" && !path.IsAbs(o.workdir) {
		return failed(&usageError{msg: fmt.Sprintf("the working directory %q is invalid: it needs to be an absolute path", o.workdir)})
	}
	env, err := envFromFlags(o.env, o.envFiles)
	if err != nil {
		return failed(err)
	}
	cs, c, err := a.containerArg(ref)
	if err != nil {
		return failed(err)
	}
	spec := c.Spec
	spec.Args = argv
	spec.Env = append(slices.Clone(spec.Env), env...)
	spec.Tty, spec.Init = o.tty, false
	if o.workdir != "" {
		spec.Cwd = o.workdir
	}
	if o.user != "" {
		spec.User = o.user
	}
	if o.privileged {
		spec.Capabilities = runtime.AllCapabilities()
	}
	var stdio runtime.Stdio
	if !o.detach {
		stdio = runtime.Stdio{Stdout: os.Stdout, Stderr: os.Stderr}
		if o.interactive {
			stdio.Stdin = os.Stdin
		}
	}
	terminal := o.tty && !o.detach && term.IsTerminal(os.Stdin.Fd())
	if terminal {
		spec.ConsoleSize = runtime.TerminalSize(os.Stdin)
	}
	var sigs <-chan os.Signal
	if relay != nil {
		sigs = relay.signals()
	}
	p, err := cs.Exec(c, &spec, stdio)
	if err != nil {
		return failed(err)
	}
	if o.detach {
		// Its parent gone, the container's init adopts it.
		return 0, nil
	}
	relay.commandStarted()
	var copying sync.WaitGroup
	if p.Console != nil {
		if terminal {
			defer runtime.FollowTerminalSize(p.Console, os.Stdin)()
			if o.interactive {
				restore, err := term.MakeRaw(os.Stdin.Fd())
				if err != nil {
					p.Signal(syscall.SIGKILL)
					p.Wait()
					return failed(fmt.Errorf("terminal: raw mode: %w", err))
				}
				defer restore()
			}
		}
		if o.interactive {
			go io.Copy(p.Console, os.Stdin)
		}
		copying.Go(func() {
			io.Copy(os.Stdout, p.Console)
			p.Console.Close()
		})
	}
	stopForward := p.Forward(sigs)
	code, err := p.Wait()
	stopForward()
	copying.Wait()
	if err != nil {
		return failed(err)
	}
	return code, nil
}
