package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
)

// strataBin is the strata binary built once for the end-to-end tests, which
// run it the way a user does.
var strataBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	strataBin = filepath.Join(dir, "strata")
	// As make builds and installs them: static, strata without registry
	// code, and strata-full and strata-init beside it.
	for _, b := range []struct{ out, pkg, tags string }{
		{"strata", ".", "strata_noregistry"},
		{"strata-full", ".", ""},
		{"strata-init", "../strata-init", ""},
	} {
		cmd := exec.Command("go", "build", "-tags", b.tags, "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.out, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// strata runs the binary with a store root and returns what it printed.
func strata(t *testing.T, root string, args ...string) result {
	t.Helper()
	r, err := runStrata(root, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// runStrata is strata for any goroutine: an error is one of running the
// binary at all.
func runStrata(root string, args ...string) (result, error) {
	cmd := exec.Command(strataBin, append([]string{"--root", root}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return result{o.String(), e.String(), ee.ExitCode()}, nil
	}
	return result{o.String(), e.String(), 0}, err
}

func mustStrata(t *testing.T, root string, args ...string) string {
	t.Helper()
	r := strata(t, root, args...)
	if r.code != 0 {
		t.Fatalf("strata %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// TestThinAndFullListTheSameVerbs: strata (built without registry code)
// and strata-full offer one command line.
func TestThinAndFullListTheSameVerbs(t *testing.T) {
	thin, err := exec.Command(strataBin, "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	full, err := exec.Command(filepath.Join(filepath.Dir(strataBin), "strata-full"), "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(thin) != string(full) {
		t.Errorf("strata --help:\n%s\nstrata-full --help:\n%s", thin, full)
	}
	if !strings.Contains(string(thin), "  pull ") {
		t.Errorf("strata --help lists no pull:\n%s", thin)
	}
}

// TestWithoutStrataFull: a strata installed without strata-full says so
// for what needs a registry, leaves nothing behind, and does the rest.
func TestWithoutStrataFull(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"strata", "strata-init"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(strataBin), name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root := t.TempDir()
	run := func(args ...string) (string, int) {
		cmd := exec.Command(filepath.Join(dir, "strata"), append([]string{"--root", root}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return string(out), cmd.ProcessState.ExitCode()
	}
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"pull", "127.0.0.1:1/missing"}, 1},
		{[]string{"run", "--rm", "127.0.0.1:1/missing", "true"}, 125},
	} {
		out, code := run(c.args...)
		if code != c.code || !strings.Contains(out, "strata-full") {
			t.Errorf("strata %s without strata-full: exit %d (want %d): %s", strings.Join(c.args, " "), code, c.code, out)
		}
	}
	if out, code := run("ps", "-a", "-q"); code != 0 || out != "" {
		t.Errorf("containers left: exit %d %q", code, out)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "containers")); len(entries) != 0 {
		t.Errorf("container directories left: %v", entries)
	}
	if out, code := run("images", "-q"); code != 0 {
		t.Errorf("strata images without strata-full: exit %d: %s", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	root := t.TempDir()
	for _, c := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{nil, 125, "Usage: strata"},
		{[]string{"frobnicate"}, 125, `unknown command "frobnicate"`},
		{[]string{"--no-such-flag", "images"}, 125, "no-such-flag"},
		{[]string{"pull", "--no-such-flag", "x"}, 125, "no-such-flag"},
		{[]string{"pull"}, 125, "wrong number of arguments"},
		{[]string{"images", "--format", "{{.Repository"}, 125, "invalid --format"},
		{[]string{"--log-level", "loud", "images"}, 125, "loud"},
		{[]string{"pull", "--platform", "linux", "busybox"}, 125, "linux"},
		{[]string{"pull", "Not_A/Valid:ref:x"}, 1, "Not_A/Valid:ref:x"},
		{[]string{"inspect", "nothing-here"}, 1, "nothing-here"},
		{[]string{"rmi", "nothing-here"}, 1, "nothing-here"},
	} {
		r := strata(t, root, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.stderr) {
			t.Errorf("strata %q: exit %d, stderr %q; want exit %d and stderr containing %q", c.args, r.code, r.stderr, c.code, c.stderr)
		}
	}
	for _, v := range []string{"pull", "images", "rmi", "inspect", "unpack", "version"} {
		r := strata(t, root, v, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: strata "+v) {
			t.Errorf("strata %s --help: exit %d, stdout %q", v, r.code, r.stdout)
		}
	}
	if out := mustStrata(t, root, "version"); !strings.HasPrefix(out, "strata ") {
		t.Errorf("version printed %q", out)
	}
	// As docker --version and -v.
	for _, flag := range []string{"--version", "-v"} {
		if out := mustStrata(t, root, flag); out != mustStrata(t, root, "version") {
			t.Errorf("strata %s printed %q", flag, out)
		}
	}
}

func TestRootFromEnvironment(t *testing.T) {
	root := filepath.Join(t.TempDir(), "from-env")
	cmd := exec.Command(strataBin, "images")
	cmd.Env = append(os.Environ(), "STRATA_ROOT="+root)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, "blobs")); err != nil {
		t.Errorf("STRATA_ROOT not used: %v", err)
	}
}

func pushMultiLayer(t *testing.T, reg *testregistry.Registry, ref string) {
	t.Helper()
	testenv.RequireBinary(t, "busybox")
	img, err := testimage.MultiLayer(testimage.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	if err := testimage.Push(context.Background(), reg.Ref(ref), img); err != nil {
		t.Fatal(err)
	}
}

func TestPullImagesInspectRmi(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, reg, "demo/app:v1")
	root := t.TempDir()
	ref := reg.Ref("demo/app:v1")

	out := mustStrata(t, root, "pull", ref)
	if !strings.Contains(out, "Pull complete") || !strings.Contains(out, "Downloaded newer image for "+ref) {
		t.Errorf("pull output:\n%s", out)
	}
	out = mustStrata(t, root, "pull", ref)
	if !strings.Contains(out, "Image is up to date for "+ref) || !strings.Contains(out, "Already exists") {
		t.Errorf("second pull output:\n%s", out)
	}
	id := strings.TrimSpace(mustStrata(t, root, "pull", "-q", ref))
	if !strings.HasPrefix(id, "sha256:") || strings.Contains(id, "\n") {
		t.Errorf("pull -q printed %q; want only the image ID", id)
	}

	out = mustStrata(t, root, "images")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "REPOSITORY") {
		t.Fatalf("images:\n%s", out)
	}
	for _, want := range []string{reg.Addr + "/demo/app", "v1", strings.TrimPrefix(id, "sha256:")[:12]} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("images line %q lacks %q", lines[1], want)
		}
	}
	var row map[string]any
	if err := json.Unmarshal([]byte(mustStrata(t, root, "images", "--format", "json")), &row); err != nil {
		t.Fatal(err)
	}
	if row["ID"] != id || row["Tag"] != "v1" {
		t.Errorf("images --format json: %v", row)
	}

	var insp []struct {
		ID             string `json:"Id"`
		ManifestDigest string
		RepoTags       []string
		Config         struct{ Cmd []string }
		RootFS         struct {
			DiffIDs []string `json:"diff_ids"`
		}
		Layers []struct{ Digest, DiffID string }
	}
	if err := json.Unmarshal([]byte(mustStrata(t, root, "inspect", ref)), &insp); err != nil {
		t.Fatal(err)
	}
	if len(insp) != 1 || insp[0].ID != id || !strings.HasPrefix(insp[0].ManifestDigest, "sha256:") || len(insp[0].Layers) < 3 {
		t.Fatalf("inspect: %+v", insp)
	}
	for i, l := range insp[0].Layers {
		if l.DiffID != insp[0].RootFS.DiffIDs[i] || !strings.HasPrefix(l.Digest, "sha256:") {
			t.Errorf("inspect layer %d: %+v vs diff IDs %v", i, l, insp[0].RootFS.DiffIDs)
		}
	}
	// By ID prefix too.
	mustStrata(t, root, "inspect", strings.TrimPrefix(id, "sha256:")[:12])

	out = mustStrata(t, root, "rmi", ref)
	if !strings.Contains(out, "Untagged: "+ref) || !strings.Contains(out, "Deleted: "+id) {
		t.Errorf("rmi output:\n%s", out)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "layers"))
	if len(ents) != 0 {
		t.Errorf("layers left after rmi of the only image: %d", len(ents))
	}
	if out := mustStrata(t, root, "images", "-q"); out != "" {
		t.Errorf("images after rmi: %q", out)
	}
}

func TestPullNotFoundExitCode(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	r := strata(t, t.TempDir(), "pull", reg.Ref("no/such:thing"))
	if r.code != 1 || !strings.Contains(r.stderr, reg.Ref("no/such:thing")) || !strings.Contains(r.stderr, "not found") {
		t.Errorf("pull of a missing image: exit %d, stderr %q", r.code, r.stderr)
	}
}

// slowBlobs throttles blob downloads so a test can interrupt a pull midway.
func slowBlobs(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			w = &slowWriter{ResponseWriter: w}
		}
		next.ServeHTTP(w, r)
	})
}

type slowWriter struct{ http.ResponseWriter }

func (s *slowWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		c := min(len(b), 16<<10)
		m, err := s.ResponseWriter.Write(b[:c])
		n += m
		if err != nil {
			return n, err
		}
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		b = b[c:]
		time.Sleep(20 * time.Millisecond)
	}
	return n, nil
}

func TestKillDuringPullThenPullAgain(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{Middleware: slowBlobs})
	pushMultiLayer(t, reg, "demo/app:v1")
	root := t.TempDir()
	ref := reg.Ref("demo/app:v1")

	cmd := exec.Command(strataBin, "--root", root, "pull", ref)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until a layer is being extracted, then kill -9.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(root, "layers"))
		tmp := false
		for _, e := range ents {
			tmp = tmp || strings.HasPrefix(e.Name(), ".tmp-")
		}
		if tmp {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("pull never started extracting")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	mustStrata(t, root, "pull", ref)
	ents, _ := os.ReadDir(filepath.Join(root, "layers"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("stale temporary layer %s after the second pull", e.Name())
		}
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	mustStrata(t, root, "unpack", ref, dir)
	if err := testimage.CheckMultiLayer(dir); err != nil {
		t.Error(err)
	}
}

func TestTwoPullProcessesAtOnce(t *testing.T) {
	testenv.RequireRoot(t)
	reg := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, reg, "demo/app:v1")
	root := t.TempDir()
	ref := reg.Ref("demo/app:v1")
	var wg sync.WaitGroup
	res := make([]result, 2)
	for i := range res {
		wg.Add(1)
		go func() { defer wg.Done(); res[i] = strata(t, root, "pull", ref) }()
	}
	wg.Wait()
	for _, r := range res {
		if r.code != 0 {
			t.Fatalf("concurrent pull failed: %s", r.stderr)
		}
	}
	if out := mustStrata(t, root, "images", "-q"); len(strings.Fields(out)) != 1 {
		t.Errorf("images after two concurrent pulls: %q", out)
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	mustStrata(t, root, "unpack", ref, dir)
	if err := testimage.CheckMultiLayer(dir); err != nil {
		t.Error(err)
	}
}

func TestUnpackMatchesUmoci(t *testing.T) {
	testenv.RequireRoot(t)
	skopeo := testenv.RequireBinary(t, "skopeo")
	umoci := testenv.RequireBinary(t, "umoci")
	reg := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, reg, "demo/app:v1")
	ref := reg.Ref("demo/app:v1")
	work := t.TempDir()

	mustStrata(t, filepath.Join(work, "store"), "pull", ref)
	mine := filepath.Join(work, "strata-rootfs")
	mustStrata(t, filepath.Join(work, "store"), "unpack", ref, mine)

	layout := filepath.Join(work, "layout")
	if out, err := exec.Command(skopeo, "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":v1").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	bundle := filepath.Join(work, "bundle")
	if out, err := exec.Command(umoci, "unpack", "--image", layout+":v1", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	want, err := describeTree(filepath.Join(bundle, "rootfs"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := describeTree(mine)
	if err != nil {
		t.Fatal(err)
	}
	diffTrees(t, got, want)
}

// describeTree lists every path under root with what `strata unpack` must
// agree with umoci on: type, mode, owner, size, link target.
func describeTree(root string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			desc += fmt.Sprintf(" size=%d nlink=%d", st.Size, st.Nlink)
		case syscall.S_IFLNK:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case syscall.S_IFCHR, syscall.S_IFBLK:
			desc += fmt.Sprintf(" rdev=%d", st.Rdev)
		}
		out[rel] = desc
		return nil
	})
	return out, err
}

func diffTrees(t *testing.T, got, want map[string]string) {
	t.Helper()
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	bad := 0
	for _, k := range keys {
		if got[k] != want[k] {
			if bad++; bad <= 20 {
				t.Errorf("%s: strata %q, umoci %q", k, got[k], want[k])
			}
		}
	}
	if bad > 20 {
		t.Errorf("... %d differences in all", bad)
	}
	if len(want) < 50 {
		t.Errorf("umoci's tree has only %d entries; the test image is too small to mean much", len(want))
	}
}

func TestMountUmount(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	reg := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, reg, "demo/app:v1")
	root := t.TempDir()
	ref := reg.Ref("demo/app:v1")
	mustStrata(t, root, "pull", "-q", ref)
	mnt := t.TempDir()
	mustStrata(t, root, "mount", ref, mnt)
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	if err := testimage.CheckMultiLayer(mnt); err != nil {
		t.Error(err)
	}
	if r := strata(t, root, "rmi", "-f", ref); r.code == 0 || !strings.Contains(r.stderr, "in use") {
		t.Errorf("rmi of a mounted image: exit %d, %s", r.code, r.stderr)
	}
	// Writable: changes land in the upper, and a kept upper survives.
	if err := os.WriteFile(filepath.Join(mnt, "etc/motd"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustStrata(t, root, "umount", mnt)
	if _, err := os.Stat(filepath.Join(mnt, "etc/motd")); !os.IsNotExist(err) {
		t.Errorf("still mounted after umount: %v", err)
	}
	upper := filepath.Join(t.TempDir(), "upper")
	mustStrata(t, root, "mount", "--upper", upper, ref, mnt)
	if b, _ := os.ReadFile(filepath.Join(mnt, "etc/motd")); string(b) != "hello again\n" {
		t.Errorf("a fresh mount shows %q: the last one's changes leaked", b)
	}
	os.Remove(filepath.Join(mnt, "etc/motd"))
	mustStrata(t, root, "umount", mnt)
	mustStrata(t, root, "mount", "--upper", upper, ref, mnt)
	if _, err := os.Stat(filepath.Join(mnt, "etc/motd")); !os.IsNotExist(err) {
		t.Errorf("deletion not kept in --upper: %v", err)
	}
	mustStrata(t, root, "umount", mnt)
	mustStrata(t, root, "mount", "--read-only", ref, mnt)
	if err := os.WriteFile(filepath.Join(mnt, "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a --read-only mount: %v", err)
	}
	mustStrata(t, root, "umount", mnt)
	// umount -l: while a process holds a directory in the mount open, a
	// plain umount is refused, and a lazy one detaches it at once.
	mustStrata(t, root, "mount", ref, mnt)
	busy, err := os.Open(filepath.Join(mnt, "etc"))
	if err != nil {
		t.Fatal(err)
	}
	if r := strata(t, root, "umount", mnt); r.code == 0 {
		t.Errorf("umount of a busy mount succeeded")
	}
	mustStrata(t, root, "umount", "-l", mnt)
	if _, err := os.Stat(filepath.Join(mnt, "etc/motd")); !os.IsNotExist(err) {
		t.Errorf("still mounted after umount -l: %v", err)
	}
	if names, err := busy.Readdirnames(-1); err != nil || !slices.Contains(names, "motd") {
		t.Errorf("the open directory after umount -l: %v %v", names, err)
	}
	busy.Close()
	mustStrata(t, root, "rmi", ref)

	if r := strata(t, root, "mount", "no-such-image", mnt); r.code != 1 || !strings.Contains(r.stderr, "no-such-image") {
		t.Errorf("mount of a missing image: exit %d, %s", r.code, r.stderr)
	}
	if r := strata(t, root, "umount", mnt); r.code != 1 || !strings.Contains(r.stderr, "not a mount point") {
		t.Errorf("umount of a plain directory: exit %d, %s", r.code, r.stderr)
	}
}

// TestRegistryMirrorFlagAndConfig: --registry-mirror REGISTRY=URL, and
// the mirrors of <root>/config.json, serve a pull (and a run's pull)
// whose origin is down.
func TestRegistryMirrorFlagAndConfig(t *testing.T) {
	mirror := testregistry.Start(t, testregistry.Options{})
	pushMultiLayer(t, mirror, "demo/app:v1")
	// Nothing listens on port 1: the origin is down.
	origin := "127.0.0.1:1"
	ref := origin + "/demo/app:v1"
	root := t.TempDir()
	if r := strata(t, root, "pull", "-q", ref); r.code == 0 {
		t.Fatalf("pull from a down origin without a mirror succeeded")
	}
	mustStrata(t, root, "--registry-mirror", origin+"=http://"+mirror.Addr, "pull", "-q", ref)
	if out := mustStrata(t, root, "images", "--format", "{{.Repository}}:{{.Tag}}"); out != ref+"\n" {
		t.Errorf("images after a mirrored pull: %q", out)
	}
	before := mirror.Requests().ManifestGets
	root2 := t.TempDir()
	cfg, _ := json.Marshal(map[string][]string{"mirrors": {origin + "=http://" + mirror.Addr}})
	if err := os.WriteFile(filepath.Join(root2, "config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	mustStrata(t, root2, "pull", "-q", ref)
	if mirror.Requests().ManifestGets == before {
		t.Errorf("the config.json mirror was not asked")
	}
	if r := strata(t, root, "--registry-mirror", "not a url", "pull", ref); r.code != 125 || !strings.Contains(r.stderr, "not a url") {
		t.Errorf("a bad --registry-mirror: exit %d %s", r.code, r.stderr)
	}
}
