package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/pflag"
)

// errNeedsRegistry is returned by a strata built without registry code
// (see noregistry.go) for a command it leaves to strata-full.
var errNeedsRegistry = errors.New("needs strata-full")

// delegatedVerb is a verb this strata leaves to strata-full whole.
func delegatedVerb(name, summary string, hidden bool) *verb {
	return &verb{name: name, summary: summary, hidden: hidden, raw: true, maxArgs: -1,
		flags: func(*pflag.FlagSet) func(context.Context, *app, []string) error {
			return func(context.Context, *app, []string) error { return errNeedsRegistry }
		}}
}

// handOver is err, unless it is errNeedsRegistry: then strata-full
// carries out argv in this process's place, and the error is why it
// could not, with the exit code err had.
func handOver(err error, argv []string) error {
	if !errors.Is(err, errNeedsRegistry) {
		return err
	}
	ferr := runFull(argv)
	var ee *exitError
	if errors.As(err, &ee) {
		return &exitError{code: ee.code, err: ferr}
	}
	return ferr
}

// runFull carries out the command line argv with strata-full, which is
// installed beside this strata, in this process's place.
func runFull(argv []string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find strata-full: %w", err)
	}
	full := filepath.Join(filepath.Dir(self), "strata-full")
	err = syscall.Exec(full, append([]string{full}, argv...), os.Environ())
	return fmt.Errorf("this strata leaves registries and lazy layers to strata-full, which did not run (install both from one build): %w", err)
}
