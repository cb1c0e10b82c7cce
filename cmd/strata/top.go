package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/runtime"
)

// topVerb is docker top: the host's ps, with its options (default -ef),
// cut down to the container's processes (those in its cgroups).
func topVerb() *verb {
	return &verb{name: "top", args: "CONTAINER [ps OPTIONS]", summary: "Show the processes of a running container", minArgs: 1, maxArgs: -1, raw: true,
		flags: func(*pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				if len(args) == 0 {
					return &exitError{code: exitUsage, err: errors.New("usage: strata top CONTAINER [ps OPTIONS]")}
				}
				cs, c, err := a.containerArg(args[0])
				if err != nil {
					return err
				}
				if st, err := cs.State(c.ID); err != nil || (st.Status != runtime.StatusRunning && st.Status != runtime.StatusPaused) {
					return fmt.Errorf("container %s is not running", args[0])
				}
				pids, err := runtime.OpenCgroup(c.ID).Pids()
				if err != nil {
					return err
				}
				psArgs := args[1:]
				if len(psArgs) == 0 {
					psArgs = []string{"-ef"}
				}
				out, err := exec.CommandContext(ctx, "ps", psArgs...).Output()
				if err != nil {
					var ee *exec.ExitError
					if errors.As(err, &ee) {
						return fmt.Errorf("ps %s: %s", strings.Join(psArgs, " "), strings.TrimSpace(string(ee.Stderr)))
					}
					return fmt.Errorf("ps: %w", err)
				}
				lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
				col := slices.Index(strings.Fields(lines[0]), "PID")
				if col < 0 {
					return fmt.Errorf("ps %s: no PID column", strings.Join(psArgs, " "))
				}
				fmt.Fprintln(a.stdout, lines[0])
				for _, l := range lines[1:] {
					if f := strings.Fields(l); len(f) > col {
						if pid, err := strconv.Atoi(f[col]); err == nil && slices.Contains(pids, pid) {
							fmt.Fprintln(a.stdout, l)
						}
					}
				}
				return nil
			}
		}}
}
