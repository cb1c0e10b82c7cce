package fusefs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stratafs/strata/layertree"
)

// mountPrefetching mounts the union of the layer directories (top first),
// each counted, and returns the union too, to see its read-ahead.
func mountPrefetching(t *testing.T, dirs ...string) (string, *Union, []*countingTree) {
	t.Helper()
	var layers []layertree.Tree
	var counted []*countingTree
	for _, d := range dirs {
		l, err := layertree.NewDir(d)
		if err != nil {
			t.Fatal(err)
		}
		ct := &countingTree{Tree: l, listings: map[string]int{}}
		layers, counted = append(layers, ct), append(counted, ct)
	}
	mnt, u := mountTreesUnion(t, layers...)
	return mnt, u, counted
}

func writeFiles(t *testing.T, root string, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(root, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func waitIdle(t *testing.T, u *Union) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !u.pre.idle(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("read-ahead still busy after 10s")
		}
	}
}

func names(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return strings.Join(out, ",")
}

// Listing a directory reads its subdirectories' lower listings ahead, and
// theirs, once each: listing them then reads no layer again, and shows
// what a merge without read-ahead shows (whiteouts from the layer above
// honoured). Deeper directories wait for their parents' listings.
func TestListingReadsSubdirectoriesAhead(t *testing.T) {
	top, bottom := t.TempDir(), t.TempDir()
	writeFiles(t, bottom, "a/z", "b/y", "b/w", "c/d/f", "c/d/e/g")
	writeFiles(t, top, "a/x", "b/.wh.y", "c/d/g")
	mnt, u, layers := mountPrefetching(t, top, bottom)

	if got := names(t, mnt); got != "a,b,c" {
		t.Fatalf("root lists %s", got)
	}
	waitIdle(t, u)
	for _, d := range []string{"a", "b", "c", "c/d"} {
		for i, l := range layers {
			if n := l.listed(d); n != 1 {
				t.Errorf("%s in layer %d read %d times after listing the root, want 1 (ahead)", d, i, n)
			}
		}
	}
	if n := layers[1].listed("c/d/e"); n != 0 {
		t.Errorf("c/d/e read %d times before c was listed", n)
	}
	// In the order of a walk: a parent is listed before its children.
	list := func(dirs ...string) {
		for _, dw := range dirs {
			d, want, _ := strings.Cut(dw, "=")
			if got := names(t, filepath.Join(mnt, d)); got != want {
				t.Errorf("%s lists %s, want %s", d, got, want)
			}
		}
	}
	list("a=x,z", "b=w", "c=d")
	waitIdle(t, u)
	if n := layers[1].listed("c/d/e"); n != 1 {
		t.Errorf("c/d/e read %d times after c was listed, want 1 (ahead)", n)
	}
	list("c/d=e,f,g", "c/d/e=g")
	for _, d := range []string{"a", "b", "c", "c/d", "c/d/e"} {
		for i, l := range layers {
			if d == "c/d/e" && i == 0 {
				continue // not in the top layer
			}
			if n := l.listed(d); n != 1 {
				t.Errorf("%s in layer %d read %d times, want once", d, i, n)
			}
		}
	}
}

// What is read ahead and not asked for is bounded: past the bound the
// oldest listings are dropped, and a directory whose listing was dropped
// is read again when listed, with the same result.
func TestReadAheadIsBounded(t *testing.T) {
	layer := t.TempDir()
	var files []string
	for i := range 10 {
		for j := range 3 {
			files = append(files, fmt.Sprintf("d%d/f%d", i, j))
		}
	}
	writeFiles(t, layer, files...)
	mnt, u, layers := mountPrefetching(t, layer)
	u.pre.mu.Lock()
	u.pre.maxEntries = 10
	u.pre.mu.Unlock()

	names(t, mnt)
	waitIdle(t, u)
	u.pre.mu.Lock()
	held, kept := u.pre.readEntries, len(u.pre.state)
	u.pre.mu.Unlock()
	if held > 10 || kept > 3 {
		t.Errorf("read ahead holds %d entries in %d listings; the bound is 10 entries", held, kept)
	}
	reread := 0
	for i := range 10 {
		d := fmt.Sprintf("d%d", i)
		if got := names(t, filepath.Join(mnt, d)); got != "f0,f1,f2" {
			t.Errorf("%s lists %s", d, got)
		}
		if layers[0].listed(d) > 1 {
			reread++
		}
	}
	if reread < 7 {
		t.Errorf("%d of 10 directories read again; with 3 of them held, want at least 7", reread)
	}
}

// A directory whose own size says its listing is long is not read ahead:
// one nobody enters would cost a whole listing.
func TestLargeDirectoriesAreNotReadAhead(t *testing.T) {
	layer := t.TempDir()
	big := filepath.Join(layer, "big")
	if err := os.Mkdir(big, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 5000 {
		f, err := os.Create(filepath.Join(big, fmt.Sprintf("a-rather-long-file-name-to-grow-the-dir-%05d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	writeFiles(t, layer, "small/f")
	if fi, err := os.Stat(big); err != nil || fi.Size() <= prefetchDirBytes {
		t.Skipf("this file system reports a %d-byte directory of 5000 names (%v): no size hint to test", fi.Size(), err)
	}
	mnt, u, layers := mountPrefetching(t, layer)
	names(t, mnt)
	waitIdle(t, u)
	if n := layers[0].listed("big"); n != 0 {
		t.Errorf("the large directory was read ahead (%d times)", n)
	}
	if n := layers[0].listed("small"); n != 1 {
		t.Errorf("the small directory was read %d times, want 1 (ahead)", n)
	}
	got := strings.Split(names(t, filepath.Join(mnt, "big")), ",")
	if len(got) != 5000 || !slices.IsSorted(got) {
		t.Errorf("big lists %d names", len(got))
	}
}

// The root is merged as the union is made: the first lookups and the
// first listing read no layer's root again.
func TestRootMergedAhead(t *testing.T) {
	top, bottom := t.TempDir(), t.TempDir()
	writeFiles(t, bottom, "a/z", "b")
	writeFiles(t, top, "a/x", ".wh.b")
	mnt, _, layers := mountPrefetching(t, top, bottom)
	for i, l := range layers {
		if n := l.listed(""); n != 1 {
			t.Errorf("layer %d's root read %d times once the union is made, want 1", i, n)
		}
	}
	if _, err := os.Lstat(filepath.Join(mnt, "b")); !os.IsNotExist(err) {
		t.Errorf("b, whited out: %v", err)
	}
	if got := names(t, mnt); got != "a" {
		t.Errorf("root lists %q, want a", got)
	}
	for i, l := range layers {
		if n := l.listed(""); n != 1 {
			t.Errorf("layer %d's root read %d times after a lookup and a listing, want 1", i, n)
		}
	}
}
