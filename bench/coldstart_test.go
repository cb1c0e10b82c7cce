package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/netshape"
	"github.com/stratafs/strata/internal/testenv"
)

// TestColdStartScenario runs the cold-start scenario once on the small
// image over a shaped link: it checks every mode starts the workload and
// is reported, and that the lazy modes fetch less than the full pull
// does; not how fast anything is.
func TestColdStartScenario(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, "busybox")
	bin := buildBinary(t, "strata")
	rep, err := ColdStart(context.Background(), ColdStartOptions{Strata: bin, WorkDir: t.TempDir(), Image: "busybox",
		Workloads: []Workload{{"echo", "cat /etc/os-release"}}, Link: netshape.Link{BytesPerSecond: 50 << 20, RTT: 2 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	bytes := map[string]int64{}
	for _, row := range rep.Rows {
		if row.Skipped != "" {
			if row.Mode != ModePodman || testenv.InCI() {
				t.Errorf("%s skipped: %s", row.Mode, row.Skipped)
			}
			continue
		}
		if len(row.Cold) != 1 || len(row.Bytes) != 1 {
			t.Errorf("%s: %d runs", row.Mode, len(row.Cold))
			continue
		}
		bytes[row.Mode] = row.Bytes[0]
	}
	if bytes[ModeOptimized] >= bytes[ModeFull] || bytes[ModeLazy] > bytes[ModeFull]+bytes[ModeFull]/10 {
		t.Errorf("bytes fetched: %v; the lazy modes should fetch less than a full pull", bytes)
	}
	md := rep.Markdown()
	for _, want := range []string{ModeLazy, ModeOptimized, ModeFull, ModePodman, "Command:"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
