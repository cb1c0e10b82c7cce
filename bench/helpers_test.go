package bench

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// buildBinary builds the command in ../cmd/NAME for a scenario to run.
func buildBinary(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/"+name).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}
