package runtime

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stratafs/strata/internal/testenv"
)

// Both ways of sealing the init binary give a file that runs and that
// nothing can open for writing: not through the descriptor or the path a
// container's process would find in /proc/PID/exe.
func TestSealedBinaryRunsAndIsReadOnly(t *testing.T) {
	testenv.RequireRoot(t)
	src := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho sealed\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, cmd *exec.Cmd, exe string) {
		t.Helper()
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != "sealed\n" {
			t.Errorf("running the sealed binary: %q, %v", out, err)
		}
		f, err := os.OpenFile(exe, os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("opening %s for writing: %v, want EROFS", exe, err)
		}
	}

	t.Run("detached", func(t *testing.T) {
		f, err := detachedReadOnly(src)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(sealedBinary{file: f}.executable(3))
		cmd.ExtraFiles = []*os.File{f}
		check(t, cmd, fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
		// Attached nowhere: the host's mount table does not change.
		if b, _ := os.ReadFile("/proc/self/mountinfo"); len(b) > 0 && containsPath(string(b), src) {
			t.Errorf("the detached mount shows in mountinfo:\n%s", b)
		}
	})
	t.Run("bind", func(t *testing.T) {
		at := filepath.Join(t.TempDir(), "init")
		release, err := readOnlyBind(src, at)
		if err != nil {
			t.Fatal(err)
		}
		check(t, exec.Command(sealedBinary{path: at}.executable(3)), at)
		release()
		if _, err := os.Lstat(at); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after release, %s: %v, want it gone", at, err)
		}
	})
}

// containsPath tells whether mountinfo has a mount at p or at its
// directory.
func containsPath(mountinfo, p string) bool {
	for _, line := range strings.Split(mountinfo, "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == p || f[4] == filepath.Dir(p)) {
			return true
		}
	}
	return false
}
