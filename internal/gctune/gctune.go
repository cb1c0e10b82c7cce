// Package gctune sets the Go garbage collector of a process that serves a
// union filesystem.
package gctune

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// UnionFloor is the floor strata's union servers pass ForUnion: the heap
// stays under 48 MiB while the live heap is under half that.
const UnionFloor = 48 << 20

// ForUnion tunes the collector of a process serving a union. A walk of a
// tree allocates a record and an inode per entry, and the heap grows
// for as long as it goes on: with the default (a collection each time the
// heap doubles) a walk of a large image spent a quarter of its time
// collecting; with a fixed soft limit under the live heap, the collector
// would run without end. So: a collection when the heap has grown
// fivefold (GOGC 400), but at most at floor or at twice the live heap,
// whichever is more, a soft memory limit raised after every collection
// as the live heap grows. A small heap is collected seldom and stays
// under floor; a large one as often as by default.
func ForUnion(floor int64) {
	debug.SetGCPercent(400)
	debug.SetMemoryLimit(floor)
	afterEachGC(func() {
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		metrics.Read(s)
		if s[0].Value.Kind() == metrics.KindUint64 {
			debug.SetMemoryLimit(max(floor, 2*int64(s[0].Value.Uint64())))
		}
	})
}

// afterEachGC calls f after each collection, from the runtime's cleanup
// goroutine: a cleanup of an object nothing holds runs once a collection
// has found it, and arms the next.
func afterEachGC(f func()) {
	type sentinel struct{ _ [16]byte } // not a tiny allocation
	runtime.AddCleanup(new(sentinel), func(struct{}) {
		f()
		afterEachGC(f)
	}, struct{}{})
}
