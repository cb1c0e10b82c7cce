// Command strata-overlay mounts a union of directories as fuse-overlayfs
// does, with strata's union filesystem: a drop-in mount program for
// podman (overlay.mount_program) and for mount -t fuse.strata-overlay.
//
//	strata-overlay [-f] [-d] -o lowerdir=TOP:…:BOTTOM[,upperdir=U,workdir=W][,OPTS] [SOURCE] MOUNTPOINT
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"

	"github.com/spf13/pflag"

	"github.com/stratafs/strata/fusefs"
	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/gctune"
	"github.com/stratafs/strata/layertree"
)

var version = "dev"

const usage = `Usage: strata-overlay [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=DIR,workdir=DIR][,OPTIONS] [SOURCE] MOUNTPOINT

Mounts the union of the lower directories (top first) under the upper
directory at MOUNTPOINT, as fuse-overlayfs does, and returns once the
mount is live; the server stays in the background (-f: in the foreground).
Without upperdir the mount is read-only.

Options (-o, comma-separated, repeatable):
  lowerdir=A:B:C     the read-only layers, top first ("\:" for a colon in a path)
  upperdir=DIR       where changes go (kernel overlayfs format)
  workdir=DIR        staging for copy-ups, on the upper's filesystem
  timeout=SECONDS    how long the kernel caches entries and attributes (default 3600)
  fsync=0|1, volatile  fsync=0/volatile: copy-ups are not synced before they show
  fsname=NAME, subtype=NAME  what /proc/mounts shows
  ro, rw, nosuid, nodev, noexec, noatime, allow_other, default_permissions,
  context=... and the other kernel mount options
  fast_ino, threaded, writeback, noacl, static_nlink: accepted; strata always
                     behaves well there
`

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	c, err := parseArgs(args)
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Fprint(stderr, usage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "strata-overlay: %v\n%s", err, usage)
		return 2
	}
	if c.version {
		fmt.Fprintf(os.Stdout, "strata-overlay %s\n", version)
		return 0
	}
	if !c.foreground {
		// Serve from a detached copy of this program and return once the
		// mount is live, as a mount helper must.
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "strata-overlay: %v\n", err)
			return 1
		}
		cmd := exec.Command(self, append([]string{"-f"}, args...)...)
		if err := daemon.Start(cmd); err != nil {
			fmt.Fprintf(stderr, "strata-overlay: %v\n", err)
			return 1
		}
		return 0
	}
	ready := daemon.Notifier()
	if err := serve(&c.config, func() { ready(nil) }, stderr); err != nil {
		ready(err)
		fmt.Fprintf(stderr, "strata-overlay: %v\n", err)
		return 1
	}
	return 0
}

type cmdline struct {
	config
	version bool
}

func parseArgs(args []string) (*cmdline, error) {
	fl := pflag.NewFlagSet("strata-overlay", pflag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.SetInterspersed(true)
	fg := fl.BoolP("foreground", "f", false, "stay in the foreground")
	debug := fl.BoolP("debug", "d", false, "log every FUSE request (implies -f)")
	opts := fl.StringArrayP("options", "o", nil, "mount options")
	ver := fl.BoolP("version", "V", false, "print the version")
	if err := fl.Parse(args); err != nil {
		return nil, err
	}
	c := &cmdline{version: *ver}
	if c.version {
		return c, nil
	}
	c.foreground, c.debug = *fg || *debug, *debug
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	for _, o := range *opts {
		if err := c.parseOptions(o, cwd); err != nil {
			return nil, err
		}
	}
	switch pos := fl.Args(); len(pos) {
	case 1:
		c.mountpoint = absFrom(cwd, pos[0])
	case 2:
		c.source, c.mountpoint = pos[0], absFrom(cwd, pos[1])
	default:
		return nil, fmt.Errorf("want [SOURCE] MOUNTPOINT, got %d arguments", len(pos))
	}
	return c, c.check()
}

// serve mounts and serves until the mount goes away.
func serve(c *config, live func(), stderr io.Writer) error {
	level := slog.LevelWarn
	if c.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if fi, err := os.Stat(c.mountpoint); err != nil || !fi.IsDir() {
		return fmt.Errorf("mount point %s: not a directory", c.mountpoint)
	}
	// As strata's own union servers: a walk not spent collecting.
	gctune.ForUnion(gctune.UnionFloor)
	var layers []layertree.Tree
	for _, d := range c.lower {
		// xattr_permissions=0, as fuse-overlayfs's default: ownership
		// and mode are the files' own.
		l, err := layertree.NewDirWith(d, layertree.DirOptions{IgnoreOverrideStat: true})
		if err != nil {
			return fmt.Errorf("lowerdir %s: %w", d, err)
		}
		layers = append(layers, l)
	}
	u, err := fusefs.New(fusefs.Options{Layers: layers, UpperDir: c.upper, WorkDir: c.work, Timeout: c.timeout, NoSync: c.noSync, Logger: log})
	if err != nil {
		return err
	}
	fsName := c.fsName
	if fsName == "" {
		fsName = c.source
	}
	if fsName == "" {
		fsName = "strata-overlay"
	}
	subtype := c.subtype
	if subtype == "" {
		subtype = "strata-overlay"
	}
	srv, err := fusefs.Mount(c.mountpoint, u, fusefs.MountOptions{FsName: fsName, Subtype: subtype, Options: c.kernel, Debug: c.debug, NoLocalClients: true})
	if err != nil {
		return err
	}
	daemon.Serve(srv, live)
	return nil
}
