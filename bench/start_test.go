package bench

import (
	"context"
	"strings"
	"testing"

	"github.com/stratafs/strata/internal/testenv"
)

// TestStartScenario runs the start scenario twice per peer: it checks the
// scenario starts containers with strata and reports every peer (or why
// it was skipped), not how fast they are.
func TestStartScenario(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, "busybox")
	bin := buildBinary(t, "strata")
	rep, err := Start(context.Background(), StartOptions{Strata: bin, Runs: 2, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Peers) != 4 || rep.Peers[0].Name != "strata" || len(rep.Peers[0].Runs) != 2 || len(rep.Peers[0].IdleRuns) != 2 {
		t.Fatalf("peers: %+v", rep.Peers)
	}
	for _, p := range rep.Peers {
		if p.Skipped == "" && (len(p.Runs) != 2 || len(p.IdleRuns) != 2) {
			t.Errorf("%s: %d runs and no reason", p.Name, len(p.Runs))
		}
		// runc is what the tests install; it works on this kind of host.
		if p.Name == "runc" && p.Skipped != "" && (testenv.InCI() || !strings.Contains(p.Skipped, "not installed")) {
			t.Errorf("runc skipped: %s", p.Skipped)
		}
	}
	md := rep.Markdown()
	for _, want := range []string{"| strata |", "| crun |", "| runc |", "| podman |", "Command:"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
