// strata-init is the process strata starts in a container: its init, and
// the helper `strata exec` enters a container with. It is the hidden
// `strata init` verb in a program of its own, which starts about a
// millisecond sooner than the whole strata binary (fewer pages, no
// package initialisation of registry and FUSE code) — twice per
// container start. strata uses it when it lies beside the strata binary,
// and runs itself otherwise.
package main

import (
	"fmt"
	"os"
	goruntime "runtime"

	"github.com/stratafs/strata/runtime"
)

// The main goroutine stays on the process's first thread, which enters
// the container's cgroups by itself (runtime.Spec.CgroupTasks): the
// kernel charges the process's memory to that thread's memory cgroup.
func init() { goruntime.LockOSThread() }

func main() {
	if len(os.Args) != 2 || os.Args[1] != "init" {
		fmt.Fprintln(os.Stderr, "strata-init: run by strata to start containers, not by hand")
		os.Exit(125)
	}
	os.Exit(runtime.Init())
}
