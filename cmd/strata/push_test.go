package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testregistry"
)

// TestPushAndConvertLocal pushes a pulled image (layers with whiteouts,
// opaque directories, hardlinks) to another repository and converts it
// from the local store to eStargz: both, pulled back, unpack to the same
// tree as the original.
func TestPushAndConvertLocal(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, reg, "demo/app:v1")
	ref := reg.Ref("demo/app:v1")
	work := t.TempDir()
	store := filepath.Join(work, "store")
	mustStrata(t, store, "pull", "-q", ref)
	orig := filepath.Join(work, "orig")
	mustStrata(t, store, "unpack", ref, orig)
	want, err := describeTree(orig)
	if err != nil {
		t.Fatal(err)
	}

	copyRef, esgzRef := reg.Ref("copy/app:v1"), reg.Ref("esgz/app:v1")
	if out := mustStrata(t, store, "push", ref, copyRef); !strings.Contains(out, "Digest: sha256:") {
		t.Errorf("push: %s", out)
	}
	mustStrata(t, store, "convert", ref, esgzRef)
	for _, r := range []string{copyRef, esgzRef} {
		other := filepath.Join(work, strings.ReplaceAll(filepath.Dir(strings.SplitN(r, "/", 2)[1]), "/", "-"))
		mustStrata(t, other+"-store", "pull", "-q", "--lazy=false", r)
		mustStrata(t, other+"-store", "unpack", r, other)
		got, err := describeTree(other)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(r, func(t *testing.T) { diffTrees(t, got, want) })
	}
	if r := strata(t, store, "push", "sha256:0000"); r.code == 0 {
		t.Errorf("push of an unknown image: exit 0")
	}
}
