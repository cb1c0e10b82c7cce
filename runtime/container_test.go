package runtime

import (
	"context"
	"os"
	"path/filepath"
	"testing"

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
