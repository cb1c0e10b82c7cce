// Package testenv lets tests state what they need from the machine. A test
// whose need is not met skips with the reason, except under CI (CI=true),
// where a skip would hide a missing install step, so it fails instead.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test with reason, or fails it under CI.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("cannot skip in CI: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// RequireFUSE skips unless /dev/fuse can be opened.
func RequireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		Skip(t, "needs /dev/fuse: "+err.Error())
		return
	}
	f.Close()
}

// RequireBinary skips unless name is on PATH, and returns its path.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, name+" not installed (apt-get install the Debian package that provides it)")
		return ""
	}
	return p
}
