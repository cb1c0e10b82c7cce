//go:build !strata_noregistry

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/spf13/pflag"

	"github.com/stratafs/strata/fusefs"
	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/lazypull"
)

func mountVerb() *verb {
	return &verb{name: "mount", args: "IMAGE DIR", summary: "Mount an image's root filesystem at DIR, writable; returns once it is live", minArgs: 2, maxArgs: 2,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			upper := fs.String("upper", "", "keep changes in this directory (kept after umount; its work directory is DIR.work); default a fresh one removed at umount")
			readOnly := fs.Bool("read-only", false, "mount read-only")
			background := fs.Bool("background-fetch", true, "fetch lazy (eStargz) layers whole in the background")
			return func(ctx context.Context, a *app, args []string) error {
				s, err := a.Store()
				if err != nil {
					return err
				}
				if _, err := s.Lookup(args[0]); err != nil {
					return fmt.Errorf("%w (pull it first: strata pull %s)", err, args[0])
				}
				dir, err := filepath.Abs(args[1])
				if err != nil {
					return err
				}
				if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
					return fmt.Errorf("mount point %s: not a directory", args[1])
				}
				mode := "fresh"
				switch {
				case *readOnly && *upper != "":
					return &usageError{msg: "--read-only and --upper exclude each other"}
				case *readOnly:
					mode = "ro"
				case *upper != "":
					u, err := filepath.Abs(*upper)
					if err != nil {
						return err
					}
					mode = u
				}
				return a.startMountServer(ctx, args[0], dir, mode, *background)
			}
		}}
}

// startMountServer runs the FUSE server in a process of its own (strata
// mount-server, detached in a new session) and waits until it reports the
// mount live or failed.
func (a *app) startMountServer(ctx context.Context, image, dir, upper string, background bool) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logDir := filepath.Join(a.store.Root(), "mounts")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(logDir, mountID(dir)+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, "--root", a.store.Root(), "--log-level", a.logLevel, "mount-server", fmt.Sprintf("--background-fetch=%t", background), image, dir, upper)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := daemon.Start(cmd); err != nil {
		if b, _ := os.ReadFile(logPath); len(b) > 0 && strings.HasPrefix(err.Error(), "server exited") {
			return fmt.Errorf("mount server exited: %s", strings.TrimSpace(string(b)))
		}
		return err
	}
	return nil
}

// mountServerVerb is the process that serves a mount: it reports to
// strata mount once the mount is live, and exits when it is unmounted.
func mountServerVerb() *verb {
	return &verb{name: "mount-server", args: "IMAGE DIR UPPER", summary: "(internal) serve a mount", hidden: true, minArgs: 3, maxArgs: 3,
		flags: func(fs *pflag.FlagSet) func(context.Context, *app, []string) error {
			background := fs.Bool("background-fetch", true, "fetch lazy layers whole in the background")
			return func(ctx context.Context, a *app, args []string) error {
				ready := daemon.Notifier()
				err := a.serveMount(ctx, args[0], args[1], args[2], *background, func() { ready(nil) })
				if err != nil {
					ready(err)
				}
				return err
			}
		}}
}

// serveMount serves image at dir with upper: "ro" for none, "fresh" for a
// new one under <root>/mounts removed at unmount, or a directory to keep.
func (a *app) serveMount(ctx context.Context, image, dir, upper string, background bool, live func()) error {
	serverMemory()
	s, err := a.Store()
	if err != nil {
		return err
	}
	rec, err := s.Lookup(image)
	if err != nil {
		return err
	}
	unpin, err := s.Pin(rec, "mount-"+mountID(dir))
	if err != nil {
		return err
	}
	defer unpin()
	var upperDir, workDir string
	switch upper {
	case "ro":
	case "fresh":
		scratch := filepath.Join(s.Root(), "mounts", mountID(dir))
		defer os.RemoveAll(scratch)
		upperDir, workDir = filepath.Join(scratch, "upper"), filepath.Join(scratch, "work")
	default:
		upperDir, workDir = upper, upper+".work"
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv, err := a.mountImage(ctx, rec, dir, upperDir, workDir, "strata:"+lazypull.ShortID(rec.ConfigDigest), background)
	if err != nil {
		return err
	}
	daemon.Serve(srv, live)
	return nil
}

// mountImage mounts an image's layers under upper (none: read-only) at
// dir as a container root, served by this process.
// Lazy layers fetch their prioritized files at once and, with background,
// the rest after, until ctx ends.
func (a *app) mountImage(ctx context.Context, rec *lazypull.ImageRecord, dir, upper, work, fsName string, background bool) (*fuse.Server, error) {
	u, err := a.imageUnion(ctx, rec, upper, work, background, nil)
	if err != nil {
		return nil, err
	}
	// The serving process reads the mount only through raw syscalls.
	return fusefs.Mount(dir, u, fusefs.MountOptions{FsName: fsName, Container: true, NoLocalClients: true})
}
