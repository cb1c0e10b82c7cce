package fusefs

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/stratafs/strata/internal/testenv"
)

// mountWritable mounts a union of dirs (top first) under a fresh upper.
func mountWritable(t *testing.T, dirs []string) (mnt, upper string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	base := t.TempDir()
	upper, work, mnt := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)
	mountStrata(t, dirs, upper, work, mnt)
	return mnt, upper
}

// TestPOSIX runs go-fuse's POSIX suite in a directory of the union in
// each position a directory can have: new in the upper, merged from two
// lower layers, and in the bottom layer only, under a lower file and
// directory of the same names in the layers above.
func TestPOSIX(t *testing.T) {
	lowerDirs := func(t *testing.T) []string {
		base := t.TempDir()
		top, mid, bottom := filepath.Join(base, "top"), filepath.Join(base, "mid"), filepath.Join(base, "bottom")
		for _, p := range []string{
			top + "/merged", mid + "/merged", bottom + "/merged",
			bottom + "/deep/a/b",
		} {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		os.WriteFile(top+"/merged/top-file", []byte("top"), 0o644)
		os.WriteFile(mid+"/merged/mid-file", []byte("mid"), 0o644)
		os.WriteFile(bottom+"/merged/bottom-file", []byte("bottom"), 0o644)
		return []string{top, mid, bottom}
	}
	positions := map[string]string{"upper": "fresh", "merged": "merged", "bottom": "deep/a/b"}
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for pos, dir := range positions {
		t.Run(pos, func(t *testing.T) {
			for _, name := range names {
				t.Run(name, func(t *testing.T) {
					mnt, _ := mountWritable(t, lowerDirs(t))
					d := filepath.Join(mnt, dir)
					if pos == "upper" {
						if err := os.Mkdir(d, 0o755); err != nil {
							t.Fatal(err)
						}
					}
					// The suite expects an empty directory.
					ents, _ := os.ReadDir(d)
					for _, e := range ents {
						if err := os.Remove(filepath.Join(d, e.Name())); err != nil {
							t.Fatal(err)
						}
					}
					posixtest.All[name](t, d)
				})
			}
		})
	}
}
