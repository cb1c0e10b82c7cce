package runtime

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A container's state is not synced to the disk; one a crash left empty
// reads as exited, with the reason, and the container can be removed.
func TestStateLostInACrash(t *testing.T) {
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &Container{Image: "busybox"}
	if err := s.Create(context.Background(), c); err != nil {
		t.Fatal(err)
	}
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
