package bench

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/stratafs/strata/internal/testenv"
)

// TestPullScenarioDemo runs the pull scenario once on the small image: it
// checks the scenario works and reports both peers, not how fast they are.
func TestPullScenarioDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "skopeo")
	testenv.RequireBinary(t, "umoci")
	testenv.RequireBinary(t, "busybox")
	bin := buildBinary(t, "strata")
	rep, err := Pull(context.Background(), PullOptions{Strata: bin, Images: []string{"demo"}, Runs: 1, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 1 {
		t.Fatalf("results: %+v", rep.Results)
	}
	r := rep.Results[0]
	if r.Layers != 4 || r.CompressedBytes <= 0 || r.Strata <= 0 || r.Peer <= 0 {
		t.Errorf("result: %+v", r)
	}
	md := rep.Markdown()
	for _, want := range []string{"| demo | 4 |", "skopeo copy + umoci unpack", "Command:"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestUnknownImage(t *testing.T) {
	if _, err := buildImage(context.Background(), "nope", PullOptions{WorkDir: os.TempDir()}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown image: %v", err)
	}
}
