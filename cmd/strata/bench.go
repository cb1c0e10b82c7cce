package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/pflag"
)

// benchVerb hands over to strata-bench, a binary of its own so that the
// in-process registry and image builders stay out of strata.
func benchVerb() *verb {
	return &verb{name: "bench", args: "[OPTIONS] SCENARIO", summary: "Run a benchmark scenario against its peers (see strata bench --help)", maxArgs: -1, raw: true,
		flags: func(*pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(ctx context.Context, a *app, args []string) error {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				bin := filepath.Join(filepath.Dir(self), "strata-bench")
				if _, err := os.Stat(bin); err != nil {
					if bin, err = exec.LookPath("strata-bench"); err != nil {
						return fmt.Errorf("strata-bench not found beside %s or on PATH (make build)", self)
					}
				}
				cmd := exec.CommandContext(ctx, bin, append([]string{"--strata", self}, args...)...)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, a.stderr
				err = cmd.Run()
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return &exitError{code: ee.ExitCode(), err: fmt.Errorf("strata-bench exited %d", ee.ExitCode())}
				}
				return err
			}
		}}
}
