package fsutil

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// A file replaced again and again reads whole, old or new, at every
// moment, and no temporary file is left beside it.
func TestReplaceFileReadsWhole(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	versions := [][]byte{bytes.Repeat([]byte("a"), 3000), bytes.Repeat([]byte("b"), 5000)}
	if err := ReplaceFile(p, versions[0], 0o600); err != nil {
		t.Fatal(err) // no file there yet
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(p)
			if err != nil || !(bytes.Equal(b, versions[0]) || bytes.Equal(b, versions[1])) {
				t.Errorf("read %d bytes (%v) while replaced, want one version whole", len(b), err)
				return
			}
		}
	})
	for i := range 2000 {
		if err := ReplaceFile(p, versions[i%2], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	names, err := os.ReadDir(dir)
	if err != nil || len(names) != 1 {
		t.Errorf("directory holds %v (%v), want state.json alone", names, err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("replaced file: %v, %v", st, err)
	}
}
