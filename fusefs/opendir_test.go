package fusefs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// listingLayers makes a directory big enough to take many READDIRPLUS
// requests: 1,500 long names below, 10 above, one of the lower ones
// whited out.
func listingLayers(t *testing.T) ([]string, []string) {
	t.Helper()
	base := t.TempDir()
	top, bottom := filepath.Join(base, "top"), filepath.Join(base, "bottom")
	var want []string
	for _, d := range []string{top + "/many", bottom + "/many"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 1500; i++ {
		name := fmt.Sprintf("lower-%04d-%s", i, strings.Repeat("n", 48))
		if err := os.WriteFile(filepath.Join(bottom, "many", name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if i != 7 {
			want = append(want, name)
		}
	}
	os.WriteFile(filepath.Join(top, "many", ".wh."+fmt.Sprintf("lower-%04d-%s", 7, strings.Repeat("n", 48))), nil, 0o644)
	for i := 0; i < 10; i++ {
		name := fmt.Sprintf("upper-%d", i)
		os.WriteFile(filepath.Join(top, "many", name), nil, 0o644)
		want = append(want, name)
	}
	slices.Sort(want)
	return []string{top, bottom}, want
}

// getdents reads one batch of names from fd, without . and .. (nil at
// the end).
func getdents(t *testing.T, fd int, buf []byte) []string {
	t.Helper()
	n, err := unix.Getdents(fd, buf)
	if err != nil {
		t.Fatalf("getdents: %v", err)
	}
	_, _, names := unix.ParseDirent(buf[:n], -1, nil)
	if n > 0 && len(names) == 0 {
		return []string{} // only . and ..
	}
	return names
}

// listingDir mounts listingLayers; it returns the merged directory, the
// names it must show, and an opener of it whose descriptors close at the
// end of the test.
func listingDir(t *testing.T) (dir string, want []string, open func() int) {
	t.Helper()
	layers, want := listingLayers(t)
	mnt, _ := mountWritable(t, layers)
	dir = filepath.Join(mnt, "many")
	return dir, want, func() int {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
}

func readRest(t *testing.T, fd int, got []string) []string {
	t.Helper()
	return readRestWith(t, fd, got, make([]byte, 2048))
}

// readRestWith reads the rest of a listing in batches of len(buf).
func readRestWith(t *testing.T, fd int, got []string, buf []byte) []string {
	t.Helper()
	for {
		names := getdents(t, fd, buf)
		if names == nil {
			return got
		}
		got = append(got, names...)
	}
}

func sameNames(t *testing.T, what string, got, want []string) {
	t.Helper()
	got = slices.Clone(got)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("%s: %d names, want %d (first difference near %q)", what, len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return a[i] + " / " + b[i]
		}
	}
	return "the end"
}

// The union answers the kernel's first OPENDIR with ENOSYS and serves
// listings without handles from then on: listings read in many requests,
// two at once, abandoned half-way, resumed at a saved offset and taken
// after a change must all show exactly the merged directory.
func TestListingsWithoutOpendir(t *testing.T) {
	dir, want, open := listingDir(t)
	small := make([]byte, 1024)

	// Two listings at once, interleaved, neither finished when the other
	// starts; then one abandoned after its first batch.
	a, b := open(), open()
	gotA := getdents(t, a, small)
	gotB := getdents(t, b, small)
	gotA = append(gotA, getdents(t, a, small)...)
	abandoned := open()
	getdents(t, abandoned, small)
	unix.Close(abandoned)
	sameNames(t, "first listing", readRest(t, a, gotA), want)
	sameNames(t, "second listing", readRest(t, b, gotB), want)

	// Resuming at an offset told by lseek gives the rest, nothing twice.
	c := open()
	first := getdents(t, c, small)
	pos, err := unix.Seek(c, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	d := open()
	if _, err := unix.Seek(d, pos, 0); err != nil {
		t.Fatal(err)
	}
	sameNames(t, "resumed listing", readRest(t, d, first), want)

	// A change shows in the next listing; a removed name is gone.
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, want[0])); err != nil {
		t.Fatal(err)
	}
	changed := append(slices.Clone(want[1:]), "new")
	slices.Sort(changed)
	sameNames(t, "listing after a change", strings.Split(names(t, dir), ","), changed)
}

// Two listings of one directory at once, read in batches of different
// sizes, each see every name once: a request of one may start inside
// the batch the other just read, and must not be taken for a repeat of
// that batch.
func TestListingsOfDifferentBatchSizesAtOnce(t *testing.T) {
	_, want, open := listingDir(t)
	// Batches as Go's os.ReadDir and ls(1) read them.
	small, big := open(), open()
	smallBuf, bigBuf := make([]byte, 8192), make([]byte, 32768)
	gotSmall := getdents(t, small, smallBuf)
	gotBig := getdents(t, big, bigBuf)
	gotSmall = append(gotSmall, getdents(t, small, smallBuf)...)
	sameNames(t, "listing in small batches", readRestWith(t, small, gotSmall, smallBuf), want)
	sameNames(t, "listing in big batches", readRestWith(t, big, gotBig, bigBuf), want)
}

// Listings that go on after the directory changed list every name that
// was there all along exactly once, whether the rest comes from the
// kernel's cache of the listing, refilled since by another listing, or
// from the server's fresh snapshot of the directory.
func TestListingsGoOnAcrossChanges(t *testing.T) {
	dir, want, open := listingDir(t)
	buf := make([]byte, 8192)
	a, b := open(), open()
	gotA, gotB := getdents(t, a, buf), getdents(t, b, buf)
	// Names that sort (and used to be placed) before those listed, and
	// one listed gone.
	for i := range 40 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("a-new-%02d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, gotA[3])); err != nil {
		t.Fatal(err)
	}
	stayed := slices.DeleteFunc(slices.Clone(want), func(n string) bool { return n == gotA[3] })
	now := append(slices.Clone(stayed), newNames()...)
	slices.Sort(now)
	sameNames(t, "a listing after the change", readRest(t, open(), nil), now)
	for name, got := range map[string][]string{"first": readRest(t, a, gotA), "second": readRest(t, b, gotB)} {
		seen := map[string]int{}
		for _, n := range got {
			seen[n]++
		}
		for _, n := range stayed {
			if seen[n] != 1 {
				t.Errorf("%s listing: %s listed %d times", name, n, seen[n])
			}
		}
	}
}

func newNames() []string {
	var out []string
	for i := range 40 {
		out = append(out, fmt.Sprintf("a-new-%02d", i))
	}
	return out
}
