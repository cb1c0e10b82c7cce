package runtime

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReadLogsFollows reads a log as a follower does: whole entries only,
// going on from where it stopped, a half-written line left for later.
func TestReadLogsFollows(t *testing.T) {
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id := "0123456789ab"
	if err := os.MkdirAll(s.Dir(id), 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(s.Dir(id), "container.log")
	one := `{"log":"one\n","stream":"stdout","time":"2026-01-01T00:00:00Z"}` + "\n"
	two := `{"log":"two\n","stream":"stderr","time":"2026-01-01T00:00:01Z"}` + "\n"
	if err := os.WriteFile(p, []byte(one+two[:20]), 0o600); err != nil {
		t.Fatal(err)
	}
	got, off, err := s.ReadLogs(id, 0)
	if err != nil || len(got) != 1 || got[0].Log != "one\n" || off != int64(len(one)) {
		t.Fatalf("first read: %+v at %d, %v", got, off, err)
	}
	if err := os.WriteFile(p, []byte(one+two), 0o600); err != nil {
		t.Fatal(err)
	}
	got, off, err = s.ReadLogs(id, off)
	if err != nil || len(got) != 1 || got[0].Log != "two\n" || got[0].Stream != "stderr" || off != int64(len(one+two)) {
		t.Fatalf("second read: %+v at %d, %v", got, off, err)
	}
	if got, _, err := s.ReadLogs("no-such", 0); err != nil || got != nil {
		t.Errorf("no log yet: %+v %v", got, err)
	}
}
