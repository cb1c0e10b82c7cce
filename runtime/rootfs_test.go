package runtime

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stratafs/strata/fusefs"
	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/layertree"
)

// A container's root filesystem, a union served from this process, is
// the same whether the monitor mounts it ahead, attached nowhere, for
// init to attach (ServeRootfs), or init mounts it from the device, as on
// kernels without the new mount API: the container sees the union as its
// root, and its writes land in the upper directory.
func TestRootfsAttachedOrMountedByInit(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, testimage.BusyboxPath)
	layer := t.TempDir()
	for _, d := range []string{"bin", "etc", "proc", "dev", "sys"} {
		if err := os.Mkdir(filepath.Join(layer, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin, err := os.ReadFile(testimage.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"bin/busybox": string(bin), "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n"}
	for p, data := range files {
		if err := os.WriteFile(filepath.Join(layer, p), []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"sh", "grep", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(layer, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, attach := range []bool{true, false} {
		name := map[bool]string{true: "attached", false: "mounted by init"}[attach]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			upper := filepath.Join(dir, "upper")
			if err := os.Mkdir(upper, 0o755); err != nil {
				t.Fatal(err)
			}
			lower, err := layertree.NewDir(layer)
			if err != nil {
				t.Fatal(err)
			}
			u, err := fusefs.New(fusefs.Options{Layers: []layertree.Tree{lower}, UpperDir: upper, WorkDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			l, err := Launch(LaunchOptions{Network: "none", fallback: filepath.Join(dir, "init")})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Abort()
			dev, err := fusefs.NewDevice(l.Device, fusefs.MountOptions{FsName: "strata:test", Container: true})
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close(5 * time.Second)
			rootfs := &Rootfs{
				Mount: DeviceMount{Source: dev.Source, FSType: dev.FSType, Flags: dev.Flags, Data: dev.Data},
				Serve: func() error { return dev.Serve(u) },
			}
			if attach {
				l.ServeRootfs(rootfs)
				if l.attach == nil {
					t.Skip("this kernel cannot make a detached FUSE mount (fsopen, fsmount)")
				}
			}
			out := make(chan string, 1)
			stdout := l.Stdout
			go func() {
				b, _ := io.ReadAll(stdout)
				out <- string(b)
			}()
			spec := Spec{Rootfs: upper, Hostname: "t", Network: "none", Env: []string{"PATH=/bin"},
				Args: []string{"sh", "-c", "grep ' / ' /proc/mounts; echo written > /new; cat /new"}}
			p, err := l.Start(&spec, nil, rootfs)
			if err != nil {
				t.Fatal(err)
			}
			code, err := p.Wait()
			got := <-out
			stdout.Close()
			l.Stderr.Close()
			if err != nil || code != 0 || !strings.HasPrefix(got, "strata:test / fuse.strata ") || !strings.HasSuffix(got, "\nwritten\n") {
				t.Errorf("exit %d (%v), output:\n%s", code, err, got)
			}
			if b, err := os.ReadFile(filepath.Join(upper, "new")); err != nil || string(b) != "written\n" {
				t.Errorf("the container's write in the upper directory: %q, %v", b, err)
			}
		})
	}
}

// A root that cannot be served fails the start with the reason, also when
// serving it ended init before its spec went out (where sending the spec
// then fails on a closed socket).
func TestRootfsServeFailureIsTheReason(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	l, err := Launch(LaunchOptions{Network: "none", fallback: filepath.Join(t.TempDir(), "init")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Abort()
	dev, err := fusefs.NewDevice(l.Device, fusefs.MountOptions{FsName: "strata:test", Container: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(time.Second)
	gone := errors.New("layer 0123 is gone")
	rootfs := &Rootfs{
		Mount: DeviceMount{Source: dev.Source, FSType: dev.FSType, Flags: dev.Flags, Data: dev.Data},
		Serve: func() error { return gone },
	}
	l.ServeRootfs(rootfs)
	if l.attach == nil {
		t.Skip("this kernel cannot make a detached FUSE mount (fsopen, fsmount)")
	}
	l.proc.Wait()          // ended by the failure to serve
	defer l.Stdout.Close() // the caller's once Start is called
	defer l.Stderr.Close()
	_, err = l.Start(&Spec{Rootfs: t.TempDir(), Network: "none", Args: []string{"true"}}, nil, rootfs)
	if !errors.Is(err, gone) {
		t.Errorf("start with a root that cannot be served: %v, want %v", err, gone)
	}
}
