package fusefs

import (
	"runtime"
	"testing"
)

// A process that serves a union keeps Ps to spare beyond go-fuse's
// readers, which each hold one while they wait on the device; a
// GOMAXPROCS the user set stays as set.
func TestSpareProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GOMAXPROCS", "") // restored after, and empty is unset
	runtime.GOMAXPROCS(runtime.NumCPU())
	SpareProcs()
	readers := min(max(runtime.NumCPU(), 2), 16)
	if got := runtime.GOMAXPROCS(0); got <= readers+1 {
		t.Errorf("GOMAXPROCS %d after SpareProcs, want more than go-fuse's %d readers and one", got, readers)
	}
	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	SpareProcs()
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("GOMAXPROCS %d after SpareProcs, want the user's 3", got)
	}
}
