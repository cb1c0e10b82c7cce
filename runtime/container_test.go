package runtime

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/fsutil"
)

// createdContainer makes a store and a container in it.
func createdContainer(t *testing.T) (*Store, *Container) {
	t.Helper()
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &Container{Image: "busybox"}
	if err := s.Create(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	return s, c
}

// A container's state is not synced to the disk; one a crash left empty
// reads as exited, with the reason, and the container can be removed.
func TestStateLostInACrash(t *testing.T) {
	s, c := createdContainer(t)
	if err := s.SetState(c.ID, State{Status: StatusRunning, Pid: 1}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir(c.ID), "state.json"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := s.State(c.ID)
	if err != nil || st.Status != StatusExited || st.Error == "" {
		t.Fatalf("state after a crash emptied it: %+v, %v", st, err)
	}
	if err := s.Remove(context.Background(), c); err != nil {
		t.Errorf("remove: %v", err)
	}
	if _, err := os.Stat(s.Dir(c.ID)); !os.IsNotExist(err) {
		t.Errorf("container directory left: %v", err)
	}
}

// The record of a run --rm container is not synced: a crash can leave its
// directory with an empty configuration, and a removal half done. The next
// Create removes both, and leaves real containers alone.
func TestCreateRemovesWhatACrashLeft(t *testing.T) {
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kept := &Container{Image: "busybox"}
	if err := s.Create(ctx, kept); err != nil {
		t.Fatal(err)
	}
	lost := &Container{Image: "busybox", AutoRemove: true}
	if err := s.Create(ctx, lost); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir(lost.ID), "config.json"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	halfRemoved := filepath.Join(s.dir, removing+"0123456789ab")
	if err := os.MkdirAll(filepath.Join(halfRemoved, "upper", "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if all, err := s.List(); err != nil || len(all) != 1 || all[0].ID != kept.ID {
		t.Fatalf("list with a broken record: %v, %v", all, err)
	}
	if err := s.Create(ctx, &Container{Image: "busybox"}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{s.Dir(lost.ID), halfRemoved} {
		if _, err := os.Stat(gone); !os.IsNotExist(err) {
			t.Errorf("%s left after Create: %v", gone, err)
		}
	}
	if _, err := s.Get(kept.ID); err != nil {
		t.Errorf("a whole container went: %v", err)
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"web": true, "/web": true, "a": true, "A1_b.c-d": true, "9lives": true,
		"": false, "/": false, "_x": false, ".x": false, "-x": false, "a b": false,
		"a/b": false, "//a": false, "é": false, "aé": false, "a:b": false,
	} {
		if got := validName(name); got != want {
			t.Errorf("validName(%q) = %v, want %v", name, got, want)
		}
	}
}

// A container's monitor holds a lock on its directory; one of an older
// strata holds monitor.lock instead, and is still seen alive.
func TestMonitorAlive(t *testing.T) {
	s, c := createdContainer(t)
	if s.MonitorAlive(c.ID) {
		t.Fatal("alive with no monitor")
	}
	l, ok := s.lockMonitor(c.ID)
	if !ok {
		t.Fatal("monitor lock not taken")
	}
	if !s.MonitorAlive(c.ID) {
		t.Error("not alive while its monitor holds the lock")
	}
	if _, again := s.lockMonitor(c.ID); again {
		t.Error("a second monitor took the lock")
	}
	l.Unlock()
	legacy, ok := fsutil.TryLock(s.legacyMonitorLock(c.ID))
	if !ok {
		t.Fatal("legacy lock not taken")
	}
	if !s.MonitorAlive(c.ID) {
		t.Error("not alive while an older monitor holds monitor.lock")
	}
	legacy.Unlock()
	if s.MonitorAlive(c.ID) {
		t.Error("alive after every monitor let go")
	}
	ents, _ := os.ReadDir(s.Dir(c.ID))
	for _, e := range ents {
		if e.Name() != "config.json" && e.Name() != "monitor.lock" {
			t.Errorf("a created container has %s", e.Name())
		}
	}
}

// A removed container's directory, emptied, serves the next container:
// on a disk mounted with discard, removing a directory costs far more
// than making one. What the old container left or changed never reaches
// the new one: its files, its state, a container layer whose root it
// changed.
func TestRemovedDirectoriesServeNewContainers(t *testing.T) {
	ctx := context.Background()
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// create makes a container whose container layer is as run makes it.
	create := func() (*Container, string) {
		t.Helper()
		c := &Container{Image: "busybox", AutoRemove: true}
		if err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		upper := filepath.Join(s.Dir(c.ID), "upper")
		if err := os.MkdirAll(upper, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(upper, 0o755); err != nil {
			t.Fatal(err)
		}
		return c, upper
	}
	inode := func(p string) uint64 {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	for _, tc := range []struct {
		name string
		// change is what the old container does to its directory; keep
		// whether the new one may have its container layer.
		change func(dir, upper string) error
		keep   bool
	}{
		{"ran and wrote its log", func(dir, upper string) error {
			if err := s.SetState(filepath.Base(dir), State{Status: StatusExited, ExitCode: 3}); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, "container.log"), []byte("{}\n"), 0o600)
		}, true},
		{"wrote to its container layer", func(dir, upper string) error {
			if err := os.MkdirAll(filepath.Join(upper, "etc"), 0o755); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(upper, "etc", "motd"), []byte("old"), 0o644)
		}, false},
		{"changed its root's mode", func(dir, upper string) error { return os.Chmod(upper, 0o700) }, false},
		{"changed its root's owner", func(dir, upper string) error { return os.Chown(upper, 1000, 1000) }, false},
		{"set an attribute on its root", func(dir, upper string) error {
			if err := unix.Setxattr(upper, "user.strata-test", []byte("x"), 0); err != nil {
				t.Skipf("extended attributes on %s: %v", upper, err)
			}
			return nil
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, upper := create()
			dirIno, upperIno := inode(s.Dir(old.ID)), inode(upper)
			if err := tc.change(s.Dir(old.ID), upper); err != nil {
				t.Fatal(err)
			}
			if err := s.Remove(ctx, old); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(s.Dir(old.ID)); !os.IsNotExist(err) {
				t.Fatalf("removed container's directory still there: %v", err)
			}
			if all, err := s.List(); err != nil || len(all) != 0 {
				t.Fatalf("containers after the removal: %v, %v", all, err)
			}
			c := &Container{Image: "busybox"}
			if err := s.Create(ctx, c); err != nil {
				t.Fatal(err)
			}
			dir := s.Dir(c.ID)
			if inode(dir) != dirIno {
				t.Errorf("new container's directory is not the removed one's")
			}
			names, err := dirNames(dir)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(names)
			want := []string{"config.json"}
			if tc.keep {
				want = []string{"config.json", "upper"}
			}
			if !slices.Equal(names, want) {
				t.Errorf("new container's directory holds %v, want %v", names, want)
			}
			if tc.keep && inode(filepath.Join(dir, "upper")) != upperIno {
				t.Errorf("new container's layer is not the removed one's")
			}
			if st, err := s.State(c.ID); err != nil || st.Status != StatusCreated {
				t.Errorf("new container's state: %+v, %v", st, err)
			}
			if err := s.Remove(ctx, c); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Only a few spare directories are kept, and nothing lists them as
// containers or removes them as broken.
func TestSpareDirectoriesAreFew(t *testing.T) {
	ctx := context.Background()
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var made []*Container
	for range maxSpares + 3 {
		c := &Container{Image: "busybox"}
		if err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		made = append(made, c)
	}
	for _, c := range made {
		if err := s.Remove(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	spareNames := func() []string {
		names, err := dirNames(filepath.Join(s.dir, spares))
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	if n := len(spareNames()); n != maxSpares {
		t.Errorf("%d spare directories after %d removals, want %d", n, len(made), maxSpares)
	}
	if all, err := s.List(); err != nil || len(all) != 0 {
		t.Errorf("containers: %v, %v", all, err)
	}
	if err := s.Create(ctx, &Container{Image: "busybox"}); err != nil {
		t.Fatal(err)
	}
	if n := len(spareNames()); n != maxSpares-1 {
		t.Errorf("%d spare directories after a create took one, want %d", n, maxSpares-1)
	}
}
