package runtime

import (
	"encoding/json"
	"os"
	"reflect"
	"strconv"
	"strings"
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
	pid := l.cmd.Process.Pid
	self, _ := os.Readlink("/proc/self/ns/pid")
	its, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	if err != nil || its == self {
		t.Errorf("launched init's PID namespace %q (%v), want one of its own (ours: %q)", its, err, self)
	}
	l.Abort()
	if l.cmd.ProcessState == nil {
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
