package gctune

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// The soft memory limit starts at the floor and follows the live heap up:
// at twice it once the live heap passes half the floor, so a large tree
// is never collected without end.
func TestForUnionRaisesTheLimitWithTheLiveHeap(t *testing.T) {
	const floor = 8 << 20
	ForUnion(floor)
	if got := debug.SetMemoryLimit(-1); got != floor {
		t.Fatalf("limit %d, want the floor %d", got, floor)
	}
	if prev := debug.SetGCPercent(400); prev != 400 {
		t.Errorf("GOGC %d, want 400", prev)
	}
	var live [][]byte
	for range 48 {
		live = append(live, make([]byte, 1<<20))
	}
	deadline := time.Now().Add(5 * time.Second)
	for debug.SetMemoryLimit(-1) < 2*48<<20 && time.Now().Before(deadline) {
		runtime.GC() // the limit is set again after each collection
		time.Sleep(10 * time.Millisecond)
	}
	if got := debug.SetMemoryLimit(-1); got < 2*48<<20 {
		t.Errorf("limit %d MiB with 48 MiB live, want at least 96", got>>20)
	}
	runtime.KeepAlive(live)
}
