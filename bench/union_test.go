package bench

import (
	"context"
	"strings"
	"testing"

	"github.com/stratafs/strata/internal/testenv"
)

// TestUnionScenarioSmall runs every union scenario once on a small
// dataset: it checks that each peer mounts the same layers and does the
// work (a scenario fails on a wrong listing or a missing file), not how
// fast they are.
func TestUnionScenarioSmall(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, "fuse-overlayfs")
	testenv.RequireBinary(t, "fusermount3")
	bin := buildBinary(t, "strata-overlay")
	rep, err := Union(context.Background(), UnionOptions{StrataOverlay: bin, WorkDir: t.TempDir(), Runs: 1, BigSize: 4 << 20, ManyEntries: 2000})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != len(UnionScenarios) {
		t.Fatalf("%d rows for %d scenarios", len(rep.Rows), len(UnionScenarios))
	}
	for i, row := range rep.Rows {
		if row.Scenario != UnionScenarios[i] {
			t.Errorf("row %d is %s, want %s", i, row.Scenario, UnionScenarios[i])
		}
		if row.Scenario == "walk" && !strings.Contains(row.Note, " entries ") {
			t.Errorf("walk's note does not say how many entries it walked: %q", row.Note)
		}
		want := unionPeers
		switch row.Scenario {
		case "copyup-1g":
			want = unionPeers[1:]
		case "rss":
			want = []string{PeerFuseOv, PeerStrata}
		}
		for _, p := range want {
			if v, ok := row.Values[p]; !ok || v <= 0 {
				t.Errorf("%s: %s = %v", row.Scenario, p, v)
			}
		}
	}
	md := rep.Markdown()
	for _, want := range []string{"| lookup-500 | s |", "| readdir-100k | s |", "strata vs fuse-overlayfs"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
