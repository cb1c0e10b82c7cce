package runtime

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stratafs/strata/internal/testenv"
)

// The test binary stands in for strata-init (initBinary is this binary
// when no strata-init lies beside it).
func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == "init" {
		os.Exit(Init())
	}
	os.Exit(m.Run())
}

// A launched init waits for its spec in its new namespaces; aborted, it
// is killed and reaped and what Launch opened is closed.
func TestLaunchAbort(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	l, err := Launch(LaunchOptions{Network: "none"})
	if err != nil {
		t.Fatal(err)
	}
	pid := l.proc.pid
	self, _ := os.Readlink("/proc/self/ns/pid")
	its, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	if err != nil || its == self {
		t.Errorf("launched init's PID namespace %q (%v), want one of its own (ours: %q)", its, err, self)
	}
	l.Abort()
	if !l.proc.Exited() {
		t.Fatal("init not reaped after Abort")
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("init %d still exists after Abort", pid)
	}
	for _, f := range []*os.File{l.Device, l.specW, l.statusR, l.mountedR, l.Stdout, l.Stderr} {
		if f.Fd() != ^uintptr(0) {
			t.Errorf("%s still open after Abort", f.Name())
		}
	}
	l.Abort() // a second time does nothing
	if _, err := l.Start(&Spec{}, nil, nil); err == nil {
		t.Error("Start after Abort succeeded")
	}
}

// warmSpec names every field of a Spec, and only those, so that init's
// warm-up builds the decoder of each type the spec holds.
func TestWarmSpecCoversSpec(t *testing.T) {
	dec := json.NewDecoder(strings.NewReader(warmSpec))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		t.Fatal(err)
	}
	v := reflect.ValueOf(s)
	for i := range v.NumField() {
		if name := v.Type().Field(i).Name; name != "Protocol" && v.Field(i).IsZero() {
			t.Errorf("warmSpec has no %s", name)
		}
	}
}

// The lookups' goroutine gets the root as it was when they were started:
// init pivots away from the path right after (here: renames it), and a
// goroutine may only run then.
func TestResolvingHoldsTheRoot(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer goruntime.GOMAXPROCS(goruntime.GOMAXPROCS(1)) // the goroutine runs once this one blocks
	r := &resolving{done: make(chan struct{})}
	r.start(&Spec{}, root, false)
	if err := os.Rename(root, filepath.Join(dir, "elsewhere")); err != nil {
		t.Fatal(err)
	}
	c := r.wait()
	if c.userErr != nil || c.user.home != "/root" {
		t.Errorf("lookups after the root moved: %+v, %v", c.user, c.userErr)
	}
}

// A started process gives its exit code, docker's 128+N when killed by
// signal N, and, once reaped, takes no signal, so none can reach a process
// that took its PID.
func TestChildExitAndSignal(t *testing.T) {
	sh := &syscall.SysProcAttr{}
	for _, tc := range []struct {
		script string
		kill   bool
		want   int
	}{
		{"exit 3", false, 3},
		{"exec sleep 60", true, 128 + int(syscall.SIGKILL)},
	} {
		c, err := forkExec("/bin/sh", []string{"sh", "-c", tc.script}, make([]*os.File, 3), sh)
		if err != nil {
			t.Fatal(err)
		}
		if tc.kill {
			if err := c.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		ws, err := c.Wait()
		if err != nil || exitCode(ws) != tc.want {
			t.Errorf("sh -c %q: exit code %d (%v), want %d", tc.script, exitCode(ws), err, tc.want)
		}
		if ws2, _ := c.Wait(); ws2 != ws {
			t.Errorf("second Wait: %v, want %v", ws2, ws)
		}
		if err := c.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("signal after exit: %v, want os.ErrProcessDone", err)
		}
	}
}

// An init sent a spec by a strata of another protocol (one from before the
// spec's stream began with startByte, here) refuses it plainly, naming
// both numbers, with docker's code for strata's own failure.
func TestInitRefusesAnotherProtocol(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	l, err := Launch(LaunchOptions{Network: "none", fallback: filepath.Join(t.TempDir(), "init")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Abort()
	old := specProtocol - 1
	if err := json.NewEncoder(l.specW).Encode(map[string]any{"protocol": old, "args": []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	l.specW.Close()
	msg, err := io.ReadAll(l.statusR)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := l.proc.Wait()
	want := []string{"protocol " + strconv.Itoa(specProtocol), "sent " + strconv.Itoa(old)}
	if err != nil || exitCode(ws) != 125 || !strings.Contains(string(msg), want[0]) || !strings.Contains(string(msg), want[1]) {
		t.Errorf("init given protocol %d: exit %d (%v), status %s; want 125 and a message with %q and %q", old, exitCode(ws), err, msg, want[0], want[1])
	}
}
