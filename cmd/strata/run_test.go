package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
)

// runImage pushes Debian's busybox-static as an image whose config sets
// what docker run must honour: env, working directory, user, volumes.
func runImage(t *testing.T) (root, ref string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, testimage.BusyboxPath)
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	cfg.Env = []string{"PATH=/bin:/usr/bin", "FROM_IMAGE=yes"}
	cfg.WorkingDir = "/srv/app"
	cfg.Cmd = []string{"sh", "-c", "echo default command"}
	cfg.Volumes = map[string]struct{}{"/cache": {}}
	img, err = mutate.Config(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ref = reg.Ref("demo/run:v1")
	if err := testimage.Push(context.Background(), ref, img); err != nil {
		t.Fatal(err)
	}
	root = t.TempDir()
	mustStrata(t, root, "pull", "-q", ref)
	t.Cleanup(func() { cleanupContainers(t, root) })
	return root, ref
}

// cleanupContainers removes what a failed test left running.
func cleanupContainers(t *testing.T, root string) {
	ids := strings.Fields(strata(t, root, "ps", "-a", "-q").stdout)
	for _, id := range ids {
		strata(t, root, "rm", "-f", id)
	}
}

// TestRunPullsAMissingImage: run pulls what the store lacks, as docker
// run does (strata hands that run to strata-full), and runs it.
func TestRunPullsAMissingImage(t *testing.T) {
	_, ref := runImage(t)
	root := t.TempDir()
	t.Cleanup(func() { cleanupContainers(t, root) })
	r := strata(t, root, "run", "--rm", ref, "echo", "pulled and run")
	if r.code != 0 || r.stdout != "pulled and run\n" || !strings.Contains(r.stderr, "Unable to find image") {
		t.Errorf("run of a missing image: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if out := mustStrata(t, root, "images", "-q"); strings.TrimSpace(out) == "" {
		t.Errorf("the image run pulled is not in the store")
	}
	if out := mustStrata(t, root, "ps", "-a", "-q"); out != "" {
		t.Errorf("run --rm left containers: %q", out)
	}
}

// TestRunEnvFile: --env-file as docker reads it (comments and blank
// lines skipped, KEY alone taken from strata's environment or dropped,
// -e after it), its errors, and one that is a pipe, read once by the
// strata-full a run of a missing image is handed to.
func TestRunEnvFile(t *testing.T) {
	root, ref := runImage(t)
	t.Setenv("STRATA_TEST_FROM_HOST", "host value")
	dir := t.TempDir()
	file := filepath.Join(dir, "env")
	content := "# a comment\n\nA=1\n  B=two words\nSTRATA_TEST_FROM_HOST\nSTRATA_TEST_UNSET\n"
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `echo "$A|$B|$C|$STRATA_TEST_FROM_HOST|${STRATA_TEST_UNSET-unset}"`
	out := mustStrata(t, root, "run", "--rm", "--env-file", file, "-e", "C=3", "-e", "A=from -e", ref, "sh", "-c", script)
	if out != "from -e|two words|3|host value|unset\n" {
		t.Errorf("environment from --env-file and -e: %q", out)
	}

	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("OK=1\nBAD KEY=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ file, msg string }{
		{filepath.Join(dir, "missing"), "missing"},
		{bad, "line 2"},
	} {
		if r := strata(t, root, "run", "--rm", "--env-file", c.file, ref, "true"); r.code != 125 || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("--env-file %s: exit %d (want 125), stderr %q (want %q)", c.file, r.code, r.stderr, c.msg)
		}
	}

	fresh := t.TempDir()
	t.Cleanup(func() { cleanupContainers(t, fresh) })
	cmd := exec.Command(strataBin, "--root", fresh, "run", "--rm", "--env-file", "/dev/stdin", ref, "sh", "-c", `echo "$PIPED"`)
	cmd.Stdin = strings.NewReader("PIPED=through a pipe\n")
	b, err := cmd.Output()
	if err != nil || string(b) != "through a pipe\n" {
		t.Errorf("--env-file from a pipe, image pulled by the run: %q, %v", b, err)
	}
}

func TestRunExitCodes(t *testing.T) {
	root, ref := runImage(t)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{ref, "true"}, 0, ""},
		{[]string{ref, "sh", "-c", "exit 3"}, 3, ""},
		{[]string{ref, "no-such-command"}, 127, "executable file not found"},
		{[]string{ref, "/no/such/file"}, 127, "no such file"},
		{[]string{ref, "/etc/passwd"}, 126, "permission denied"},
		{[]string{"-u", "nobody-here", ref, "true"}, 125, "unable to find user nobody-here"},
		{[]string{"-u", "0:no-group", ref, "true"}, 125, "unable to find group no-group"},
		{[]string{"--pull", "never", ref + "-missing", "true"}, 125, "missing"},
		{[]string{"UPPER/Case::bad", "true"}, 125, "UPPER/Case::bad"},
		{[]string{"-v", "data:/data:bogus", ref, "true"}, 125, `unknown option "bogus"`},
		{[]string{"-v", "data:relative", ref, "true"}, 125, "must be absolute"},
		{[]string{"--mount", "type=bind,src=/no/such/dir,dst=/x", ref, "true"}, 125, "/no/such/dir"},
		{[]string{"--network", "bridge", ref, "true"}, 125, "invalid --network"},
		{[]string{"--cap-add", "NOT_A_CAP", ref, "true"}, 125, "unknown capability"},
	} {
		r := strata(t, root, append([]string{"run", "--rm"}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("run %v: exit %d (want %d), stderr %q (want %q)", c.args, r.code, c.code, r.stderr, c.msg)
		}
	}
	// Nothing half-made: no containers, no mounts, no volumes.
	if out := mustStrata(t, root, "ps", "-a", "-q"); out != "" {
		t.Errorf("failed runs left containers: %s", out)
	}
	if out := mustStrata(t, root, "volume", "ls", "-q"); out != "" {
		t.Errorf("failed runs left volumes: %s", out)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), root) {
		t.Errorf("failed runs left mounts under %s", root)
	}
}

func TestRunWhatAContainerGets(t *testing.T) {
	root, ref := runImage(t)
	hostDir := t.TempDir() // on the host, not to be seen inside
	script := `echo pid=$$; echo host=$(hostname); echo cwd=$PWD; echo env=$FROM_IMAGE,$EXTRA; id -u; ` +
		`grep -c . /proc/timer_list 2>/dev/null || echo masked; grep CapEff /proc/self/status; ` +
		`cat /proc/mounts; echo sys=$(touch /sys/x 2>&1 | grep -c Read-only); ls /dev`
	out := mustStrata(t, root, "run", "--rm", "-h", "box", "-e", "EXTRA=1", ref, "sh", "-c", script)
	for _, want := range []string{"pid=1\n", "host=box\n", "cwd=/srv/app\n", "env=yes,1\n", "\n0\n",
		"CapEff:\t00000000a80425fb\n", "sys=1\n", "null\n", "urandom\n", "pts\n", "shm\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, hostDir) || strings.Contains(out, "/tmp") {
		t.Errorf("host mounts visible in the container:\n%s", out)
	}
	if strings.Contains(out, "timer_list") && !strings.Contains(out, "masked") && !strings.Contains(out, "\n0\n") {
		t.Errorf("/proc/timer_list not masked:\n%s", out)
	}
	// A user from the container's passwd, without capabilities.
	out = mustStrata(t, root, "run", "--rm", "-u", "nobody", ref, "sh", "-c", "id; grep CapEff /proc/self/status")
	if !strings.Contains(out, "uid=65534(nobody)") || !strings.Contains(out, "CapEff:\t0000000000000000") {
		t.Errorf("-u nobody: %s", out)
	}
	// The image's command, and --entrypoint.
	if out := mustStrata(t, root, "run", "--rm", ref); out != "default command\n" {
		t.Errorf("image command: %q", out)
	}
	if out := mustStrata(t, root, "run", "--rm", "--entrypoint", "echo", ref, "a", "b"); out != "a b\n" {
		t.Errorf("--entrypoint: %q", out)
	}
	if r := strata(t, root, "run", "--rm", "--read-only", ref, "touch", "/x"); r.code == 0 || !strings.Contains(r.stderr, "Read-only") {
		t.Errorf("--read-only: exit %d %s", r.code, r.stderr)
	}
}

func TestContainerLayerGoesWithRm(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "--name", "c1", ref, "sh", "-c", "echo mine > /etc/motd; rm -f /bin/true")
	// The same container keeps its changes across starts.
	if out := mustStrata(t, root, "start", "-a", "c1"); out != "" {
		t.Errorf("start -a output: %q", out)
	}
	r := strata(t, root, "run", "--rm", ref, "sh", "-c", "cat /etc/motd; ls /bin/true")
	if strings.Contains(r.stdout, "mine") || r.code != 0 {
		t.Errorf("a new container sees another's changes: %q %s", r.stdout, r.stderr)
	}
	id := strings.TrimSpace(mustStrata(t, root, "ps", "-a", "-q"))
	if _, err := os.Stat(filepath.Join(root, "containers")); err != nil {
		t.Fatal(err)
	}
	mustStrata(t, root, "rm", "c1")
	// What stays: the store's lock, and emptied directories kept for new
	// containers (.spare/ID, with an empty upper/).
	containers := filepath.Join(root, "containers")
	filepath.WalkDir(containers, func(p string, d os.DirEntry, err error) error {
		rel, _ := filepath.Rel(containers, p)
		parts := strings.Split(rel, string(filepath.Separator))
		spare := parts[0] == ".spare" && (len(parts) < 3 || len(parts) == 3 && parts[2] == "upper") && d.IsDir()
		if err != nil || !(rel == "." || rel == ".lock" || spare) {
			t.Errorf("container %s left %s after rm (%v)", id, rel, err)
		}
		return nil
	})
	for _, d := range []string{"/run/strata", "/dev/shm/strata"} {
		if _, err := os.Stat(filepath.Join(d, id)); err == nil {
			t.Errorf("container %s left %s after it ended", id, filepath.Join(d, id))
		}
	}
	if r := strata(t, root, "rm", "c1"); r.code == 0 || !strings.Contains(r.stderr, "no such container") {
		t.Errorf("rm twice: exit %d %s", r.code, r.stderr)
	}
}

// A container made and never started is Created, and holds its image:
// rmi refuses it, even with -f, until the container is removed. One that
// wrote nothing has an empty log.
func TestCreatedContainerHoldsItsImage(t *testing.T) {
	root, ref := runImage(t)
	id := strings.TrimSpace(mustStrata(t, root, "create", "--name", "made", ref, "true"))
	if out := mustStrata(t, root, "ps", "-a"); !strings.Contains(out, "Created") || !strings.Contains(out, "made") {
		t.Errorf("ps -a of a created container:\n%s", out)
	}
	var got []struct{ State struct{ Status string } }
	if err := json.Unmarshal([]byte(mustStrata(t, root, "inspect", "made")), &got); err != nil || len(got) != 1 || got[0].State.Status != "created" {
		t.Errorf("inspect of a created container: %+v, %v", got, err)
	}
	// Started, it writes nothing: its log is empty.
	mustStrata(t, root, "start", "-a", "made")
	if r := strata(t, root, "logs", "made"); r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Errorf("logs of a container that wrote nothing: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	for _, args := range [][]string{{"rmi", ref}, {"rmi", "-f", ref}} {
		if r := strata(t, root, args...); r.code == 0 || !strings.Contains(r.stderr, "in use by 1 container") {
			t.Errorf("%v with a container made from it: exit %d, %s", args, r.code, r.stderr)
		}
	}
	mustStrata(t, root, "rm", id)
	mustStrata(t, root, "rmi", ref)
}

// The mount points a container needs and the image lacks (busybox has no
// /proc, /dev, /sys or /etc/hostname) come from beneath the image's
// layers, not from the container layer: a container that changes nothing
// leaves its layer empty. Where an image's layer hides them (an opaque
// /etc), they are made in the container layer, and still work.
func TestMountPointsOutsideTheContainerLayer(t *testing.T) {
	root, ref := runImage(t)
	base, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	opaque, err := testimage.LayerFromFiles([]testimage.File{
		{Path: "etc/", Type: tar.TypeDir, Mode: 0o755},
		{Path: "etc/.wh..wh..opq"},
		{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
	}, testimage.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, opaque)
	if err != nil {
		t.Fatal(err)
	}
	// The image runImage pushed has a working directory and a volume,
	// which are made in the container layer: these have neither.
	plainRef := strings.Replace(ref, "demo/run:v1", "demo/plain:v1", 1)
	opaqueRef := strings.Replace(ref, "demo/run:v1", "demo/opaque-etc:v1", 1)
	for r, img := range map[string]v1.Image{plainRef: base, opaqueRef: img} {
		if err := testimage.Push(context.Background(), r, img); err != nil {
			t.Fatal(err)
		}
	}
	script := "ls -d /proc/self /dev/null /sys/kernel; cat /etc/hostname; grep -c mp-host /etc/hosts; ls /etc"
	for _, c := range []struct {
		ref       string
		etc       string // what /etc lists besides the files strata gives
		upperKept bool
	}{
		{plainRef, "group", false},
		{opaqueRef, "passwd", true},
	} {
		out := mustStrata(t, root, "run", "--name", "mp", "-h", "mp-host", c.ref, "sh", "-c", script)
		for _, want := range []string{"/proc/self\n", "/dev/null\n", "/sys/kernel\n", "mp-host\n", "1\n", "hostname\n", "hosts\n", "resolv.conf\n", c.etc + "\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: output lacks %q:\n%s", c.ref, want, out)
			}
		}
		id := strings.TrimSpace(mustStrata(t, root, "ps", "-a", "-q", "--no-trunc"))
		var upper []string
		filepath.WalkDir(filepath.Join(root, "containers", id, "upper"), func(p string, d os.DirEntry, err error) error {
			if err == nil {
				upper = append(upper, p)
			}
			return nil
		})
		if kept := len(upper) > 1; kept != c.upperKept {
			t.Errorf("%s: container layer holds %v (want mount points there: %v)", c.ref, upper, c.upperKept)
		}
		mustStrata(t, root, "rm", "mp")
	}
}

// wait on a container of run -d --rm gives its exit code to every
// waiter, though the container is removed as it ends; and the waiters do
// not keep it from being removed. (Both failed under load: the waiters
// read the state after the removal, or made it think the monitor lived.)
func TestWaitOnRunRm(t *testing.T) {
	root, ref := runImage(t)
	stop := make(chan struct{})
	defer close(stop)
	for range 2 { // load, as on a busy host
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	for i := range 3 {
		id := strings.TrimSpace(mustStrata(t, root, "run", "-d", "--rm", ref, "sh", "-c", "sleep 0.3; exit 4"))
		outs := make([]result, 4)
		var wg sync.WaitGroup
		for w := range outs {
			wg.Go(func() { outs[w] = strata(t, root, "wait", id) })
		}
		wg.Wait()
		for w, r := range outs {
			if r.code != 0 || r.stdout != "4\n" {
				t.Errorf("round %d, waiter %d: exit %d, %q %s", i, w, r.code, r.stdout, r.stderr)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for strings.TrimSpace(mustStrata(t, root, "ps", "-a", "-q")) != "" && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if left := mustStrata(t, root, "ps", "-a"); strings.Count(left, "\n") > 1 {
			t.Fatalf("round %d: run --rm left its container:\n%s", i, left)
		}
	}
}

func TestDetachedLogsStopKill(t *testing.T) {
	root, ref := runImage(t)
	// sh as PID 1 ignores SIGTERM: stop must fall back to SIGKILL.
	id := strings.TrimSpace(mustStrata(t, root, "run", "-d", "--name", "ticker", ref, "sh", "-c", "echo started; echo oops >&2; while :; do sleep 0.1; done"))
	if len(id) != 64 {
		t.Fatalf("run -d printed %q", id)
	}
	if r := strata(t, root, "run", "-d", "--name", "ticker", ref, "true"); r.code != 125 || !strings.Contains(r.stderr, "already in use") {
		t.Errorf("second container named ticker: exit %d %s", r.code, r.stderr)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(strata(t, root, "logs", "ticker").stdout, "started") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	logs := strata(t, root, "logs", "-t", "ticker")
	if !strings.Contains(logs.stdout, "started\n") || !strings.Contains(logs.stderr, "oops\n") {
		t.Errorf("logs: stdout %q stderr %q", logs.stdout, logs.stderr)
	}
	if !strings.Contains(mustStrata(t, root, "ps"), "ticker") {
		t.Error("ps does not list the running container")
	}
	if r := strata(t, root, "rm", "ticker"); r.code == 0 || !strings.Contains(r.stderr, "running") {
		t.Errorf("rm of a running container: exit %d %s", r.code, r.stderr)
	}
	mustStrata(t, root, "stop", "-t", "1", "ticker")
	if out := mustStrata(t, root, "wait", "ticker"); out != "137\n" {
		t.Errorf("exit code after stop timed out: %q, want 137", out)
	}
	if out := mustStrata(t, root, "ps", "-a"); !strings.Contains(out, "Exited (137)") {
		t.Errorf("ps -a: %s", out)
	}
	// A signal the process handles ends it with its own code.
	mustStrata(t, root, "run", "-d", "--name", "trapper", ref, "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done")
	mustStrata(t, root, "kill", "-s", "TERM", "trapper")
	if out := mustStrata(t, root, "wait", "trapper"); out != "7\n" {
		t.Errorf("exit code after kill -s TERM: %q, want 7", out)
	}
	if r := strata(t, root, "kill", "trapper"); r.code == 0 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("kill of a stopped container: exit %d %s", r.code, r.stderr)
	}
	mustStrata(t, root, "rename", "trapper", "renamed")
	mustStrata(t, root, "rm", "renamed", "ticker")
}

func TestMonitorKilled(t *testing.T) {
	root, ref := runImage(t)
	id := strings.TrimSpace(mustStrata(t, root, "run", "-d", ref, "sleep", "1000"))
	// The root filesystem is mounted in the container's own mount
	// namespace only: the host's has no mount of it.
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), id) {
		t.Errorf("a running container's root filesystem is mounted in the host's namespace:\n%s", b)
	}
	if out := mustStrata(t, root, "exec", id, "sh", "-c", "grep ' / / ' /proc/self/mountinfo"); !strings.Contains(out, "fuse.strata") {
		t.Errorf("the container's root is not the union: %s", out)
	}
	// What the container has only while it runs (its hostname, hosts and
	// resolv.conf, in memory where a tmpfs allows) outlives a killed
	// monitor until strata next looks.
	runFiles := func() []string {
		m, _ := filepath.Glob(filepath.Join("/run/strata", id))
		m2, _ := filepath.Glob(filepath.Join("/dev/shm/strata", id))
		return append(m, m2...)
	}
	pid := monitorPID(t, id)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if out := mustStrata(t, root, "ps", "-a"); !strings.Contains(out, "Exited (137)") {
		t.Errorf("ps after the monitor was killed: %s", out)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), id) {
		t.Error("the dead monitor's mount is still there")
	}
	if left := runFiles(); len(left) > 0 {
		t.Errorf("the dead monitor's run files are still there: %v", left)
	}
	mustStrata(t, root, "rm", id)
}

// monitorPID finds the detached monitor of a container.
func monitorPID(t *testing.T, id string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "monitor\x00"+id) {
			var pid int
			if _, err := fmt.Sscan(e.Name(), &pid); err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no monitor for %s", id)
	return 0
}

func TestVolumes(t *testing.T) {
	root, ref := runImage(t)
	// A new named volume gets the image's content at its path, then keeps
	// what containers write.
	mustStrata(t, root, "run", "--rm", "-v", "etcvol:/etc", ref, "sh", "-c", "echo kept > /etc/new")
	out := mustStrata(t, root, "run", "--rm", "-v", "etcvol:/etc", ref, "sh", "-c", "cat /etc/new; grep -c root /etc/passwd")
	if out != "kept\n1\n" {
		t.Errorf("named volume: %q", out)
	}
	if r := strata(t, root, "run", "--rm", "-v", "etcvol:/etc:ro", ref, "touch", "/etc/x"); r.code == 0 || !strings.Contains(r.stderr, "Read-only") {
		t.Errorf("read-only volume: exit %d %s", r.code, r.stderr)
	}
	// volume-nocopy leaves a new volume empty.
	if out := mustStrata(t, root, "run", "--rm", "--mount", "type=volume,src=empty,dst=/etc,volume-nocopy", ref, "ls", "-A", "/etc"); out != "" {
		t.Errorf("volume-nocopy: %q", out)
	}
	// In use: refused.
	mustStrata(t, root, "create", "--name", "user", "-v", "etcvol:/etc", ref, "true")
	if r := strata(t, root, "volume", "rm", "etcvol"); r.code == 0 || !strings.Contains(r.stderr, "in use") {
		t.Errorf("volume rm of a used volume: exit %d %s", r.code, r.stderr)
	}
	mustStrata(t, root, "rm", "-v", "user")
	// Anonymous volumes (the image's /cache, and -v /path) go with rm -v
	// and --rm; named ones stay.
	mustStrata(t, root, "run", "--name", "anon", "-v", "/scratch", ref, "sh", "-c", "touch /cache/x /scratch/y")
	vols := strings.Fields(mustStrata(t, root, "volume", "ls", "-q"))
	if len(vols) != 4 {
		t.Errorf("volumes: %v, want etcvol, empty and two anonymous", vols)
	}
	mustStrata(t, root, "rm", "-v", "anon")
	vols = strings.Fields(mustStrata(t, root, "volume", "ls", "-q"))
	if strings.Join(vols, " ") != "empty etcvol" {
		t.Errorf("after rm -v: %v", vols)
	}
	mustStrata(t, root, "run", "--rm", ref, "true")
	if got := strings.Fields(mustStrata(t, root, "volume", "ls", "-q")); len(got) != 2 {
		t.Errorf("run --rm left anonymous volumes: %v", got)
	}
	// Host paths: bind, read-only bind, and --tmpfs.
	host := t.TempDir()
	mustStrata(t, root, "run", "--rm", "-v", host+":/host", ref, "sh", "-c", "echo from-container > /host/f")
	if b, _ := os.ReadFile(filepath.Join(host, "f")); string(b) != "from-container\n" {
		t.Errorf("bind mount: %q", b)
	}
	if r := strata(t, root, "run", "--rm", "--mount", "type=bind,src="+host+",dst=/host,readonly", ref, "rm", "/host/f"); r.code == 0 {
		t.Error("wrote through a read-only bind")
	}
	out = mustStrata(t, root, "run", "--rm", "--tmpfs", "/run/t:size=1m,mode=1777", ref, "sh", "-c", "stat -c %a /run/t; df /run/t | tail -1")
	if !strings.HasPrefix(out, "1777\n") || !strings.Contains(out, "tmpfs") {
		t.Errorf("--tmpfs: %q", out)
	}
	for _, v := range []string{"etcvol", "empty"} {
		mustStrata(t, root, "volume", "rm", v)
	}
}

// Containers started at once with one new volume each find it filled
// with the image's content, copied once: none fails on files another
// copied.
func TestNewVolumeFilledOnceByContainersAtOnce(t *testing.T) {
	root, ref := runImage(t)
	// /bin: hundreds of entries, so a copy takes long enough to meet.
	want := strings.TrimSpace(mustStrata(t, root, "run", "--rm", ref, "sh", "-c", "ls /bin | wc -l"))
	for round := range 3 {
		vol := fmt.Sprint("shared", round)
		for _, r := range strataAtOnce(t, root, 4, "run", "--rm", "-v", vol+":/bin", ref, "/bin/sh", "-c", "ls /bin | wc -l") {
			if r.code != 0 || strings.TrimSpace(r.stdout) != want {
				t.Errorf("round %d: exit %d, %q %s; want %s entries in /bin", round, r.code, r.stdout, r.stderr, want)
			}
		}
		mustStrata(t, root, "volume", "rm", vol)
	}
}

// rm -f of one running container by four at once: one removes it, the
// others say there is no such container (not that it runs, nor a file
// missing), and nothing of it is left.
func TestRemoveForceAtOnce(t *testing.T) {
	root, ref := runImage(t)
	for round := range 3 {
		name := fmt.Sprint("doomed", round)
		mustStrata(t, root, "run", "-d", "--name", name, ref, "sleep", "100")
		removed := 0
		for _, r := range strataAtOnce(t, root, 4, "rm", "-f", name) {
			switch {
			case r.code == 0:
				removed++
			case !strings.Contains(r.stderr, "no such container"):
				t.Errorf("round %d: exit %d: %s", round, r.code, r.stderr)
			}
		}
		if removed != 1 {
			t.Errorf("round %d: %d removals succeeded, want 1", round, removed)
		}
		if out := mustStrata(t, root, "ps", "-a", "-q"); out != "" {
			t.Errorf("round %d: left: %s", round, out)
		}
	}
}

// start of one created container by four at once: all succeed, as a
// start of a running container does, and it runs once.
func TestStartAtOnce(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "create", "--name", "once", ref, "sleep", "100")
	for _, r := range strataAtOnce(t, root, 4, "start", "once") {
		if r.code != 0 || r.stdout != "once\n" {
			t.Errorf("start: exit %d, %q %s", r.code, r.stdout, r.stderr)
		}
	}
	if out := mustStrata(t, root, "ps", "-q"); len(strings.Fields(out)) != 1 {
		t.Errorf("running: %q", out)
	}
	mustStrata(t, root, "rm", "-f", "once")
}

// A run with a named volume and a removal of that volume at once: the run
// succeeds either way (its volume made again if the removal came first),
// and the removal never takes a volume a container was made with.
func TestRunRacingVolumeRemoval(t *testing.T) {
	root, ref := runImage(t)
	for round := range 20 {
		mustStrata(t, root, "volume", "create", "raced")
		var wg sync.WaitGroup
		var run result
		wg.Add(1)
		go func() {
			defer wg.Done()
			run = strataAtOnce(t, root, 1, "run", "--name", "racer", "-v", "raced:/data", ref, "sh", "-c", "touch /data/x && echo ok")[0]
		}()
		strata(t, root, "volume", "rm", "raced")
		wg.Wait()
		if run.code != 0 || run.stdout != "ok\n" {
			t.Errorf("round %d: run: exit %d, %q %s", round, run.code, run.stdout, run.stderr)
		}
		if out := mustStrata(t, root, "volume", "ls", "-q"); !slices.Contains(strings.Fields(out), "raced") {
			t.Errorf("round %d: volumes %q, want the container's", round, out)
		}
		mustStrata(t, root, "rm", "-v", "racer")
		mustStrata(t, root, "volume", "rm", "raced")
	}
}

// strataAtOnce runs n strata commands with args at once.
func strataAtOnce(t *testing.T, root string, n int, args ...string) []result {
	t.Helper()
	out := make([]result, n)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := runStrata(root, args...)
			if err != nil {
				r = result{stderr: err.Error(), code: -1}
			}
			out[i] = r
		}()
	}
	wg.Wait()
	return out
}

func TestMemoryLimit(t *testing.T) {
	root, ref := runImage(t)
	r := strata(t, root, "run", "--name", "hog", "-m", "16m", ref, "sh", "-c", "head -c 200m /dev/zero | tail > /dev/null")
	if r.code != 137 {
		t.Errorf("a process over --memory: exit %d, want 137 (killed)\n%s", r.code, r.stderr)
	}
	if out := mustStrata(t, root, "inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}}", "hog"); out != "true 137\n" {
		t.Errorf("inspect does not say OOM-killed:\n%s", out)
	}
	if out := mustStrata(t, root, "run", "--rm", "-m", "64m", ref, "sh", "-c", "head -c 8m /dev/zero | tail | wc -c"); strings.TrimSpace(out) != "8388608" {
		t.Errorf("a process under --memory: %q", out)
	}
	mustStrata(t, root, "rm", "hog")
}

// Containers start from strata-init when it lies beside strata (PID 1 of
// an --init container is that binary), and from strata itself when it
// does not. Either way every thread of that PID 1 has the command's
// capabilities, no more.
func TestInitBinary(t *testing.T) {
	root, ref := runImage(t)
	size := func(p string) string {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return strconv.FormatInt(fi.Size(), 10)
	}
	script := `stat -L -c %s /proc/1/exe; cat /proc/1/task/*/status | grep -E '^Cap(Eff|Prm|Bnd)' | sort -u | tr '\n' ' '; echo; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status | sort | tr '\n' ' '`
	args := []string{"--root", root, "run", "--rm", "--init", ref, "sh", "-c", script}
	alone := filepath.Join(t.TempDir(), "strata")
	b, err := os.ReadFile(strataBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(alone, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ strata, init string }{
		{strataBin, filepath.Join(filepath.Dir(strataBin), "strata-init")},
		{alone, alone},
	} {
		out, err := exec.Command(tc.strata, args...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err != nil || len(lines) != 3 {
			t.Errorf("%s: %v\n%s", tc.strata, err, out)
			continue
		}
		if lines[0] != size(tc.init) {
			t.Errorf("%s: PID 1's binary has %s bytes, want %s's %s", tc.strata, lines[0], tc.init, size(tc.init))
		}
		if strings.TrimSpace(lines[1]) != strings.TrimSpace(lines[2]) {
			t.Errorf("%s: PID 1's threads have %q, the command %q", tc.strata, lines[1], lines[2])
		}
	}
}

// A root filesystem that cannot be served (a layer gone from the store)
// fails the start with strata's code and a message naming the layer; init,
// waiting for its mount, is not left behind, and --rm leaves nothing.
func TestRunWithALayerGone(t *testing.T) {
	root, ref := runImage(t)
	layers, err := os.ReadDir(filepath.Join(root, "layers"))
	if err != nil || len(layers) == 0 {
		t.Fatalf("layers: %v %v", layers, err)
	}
	fs := filepath.Join(root, "layers", layers[0].Name(), "fs")
	if err := os.Rename(fs, fs+".gone"); err != nil {
		t.Fatal(err)
	}
	defer os.Rename(fs+".gone", fs)
	done := make(chan result, 1)
	go func() { done <- strata(t, root, "run", "--rm", ref, "true") }()
	select {
	case r := <-done:
		if r.code != 125 || !strings.Contains(r.stderr, layers[0].Name()) {
			t.Errorf("run with a layer gone: exit %d, stderr %q", r.code, r.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run with a layer gone hangs")
	}
	if out := mustStrata(t, root, "ps", "-a", "-q"); out != "" {
		t.Errorf("containers left: %s", out)
	}
}

// --network none gives the container a network namespace of its own with
// lo up and nothing else; --network host shares the host's, and its name.
func TestRunNetwork(t *testing.T) {
	root, ref := runImage(t)
	ifaces := func(procNetDev string) []string {
		var out []string
		for _, line := range strings.Split(procNetDev, "\n") {
			if name, _, ok := strings.Cut(line, ":"); ok && !strings.Contains(name, "|") {
				out = append(out, strings.TrimSpace(name))
			}
		}
		slices.Sort(out)
		return out
	}
	out := mustStrata(t, root, "run", "--rm", ref, "sh", "-c", "cat /sys/class/net/lo/flags; cat /proc/net/dev")
	flags, dev, _ := strings.Cut(out, "\n")
	if got := ifaces(dev); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("--network none: interfaces %v, want only lo", got)
	}
	if v, err := strconv.ParseUint(strings.TrimPrefix(flags, "0x"), 16, 32); err != nil || v&1 == 0 {
		t.Errorf("--network none: lo flags %q, want it up", flags)
	}
	hostDev, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	hostname, _ := os.Hostname()
	out = mustStrata(t, root, "run", "--rm", "--network", "host", ref, "sh", "-c", "hostname; cat /proc/net/dev")
	name, dev, _ := strings.Cut(out, "\n")
	if got, want := ifaces(dev), ifaces(string(hostDev)); !slices.Equal(got, want) {
		t.Errorf("--network host: interfaces %v, want the host's %v", got, want)
	}
	if name != hostname {
		t.Errorf("--network host: hostname %q, want the host's %q", name, hostname)
	}
}

// Signals sent to a foreground strata run reach the container's command:
// those users send to a running container (earlySignals) from its first
// moment, the others once it has run a while (until then, Go ignores
// them: they are sent again until heard).
func TestRunForwardsSignals(t *testing.T) {
	root, ref := runImage(t)
	for _, tc := range []struct {
		sig   syscall.Signal
		name  string
		code  int
		early bool
	}{
		{syscall.SIGTERM, "TERM", 8, true},
		{syscall.SIGINT, "INT", 9, true},
		{syscall.SIGUSR1, "USR1", 10, true},
		{syscall.SIGALRM, "ALRM", 11, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := fmt.Sprintf("trap 'echo got %s; exit %d' %s; echo ready; sleep 600 & wait", tc.name, tc.code, tc.name)
			cmd := exec.Command(strataBin, "--root", root, "run", "--rm", ref, "sh", "-c", script)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			out := bufio.NewReader(stdout)
			if line, err := out.ReadString('\n'); line != "ready\n" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("first line %q (%v); stderr: %s", line, err, stderr.String())
			}
			type ended struct {
				rest string
				err  error
			}
			done := make(chan ended, 1)
			go func() {
				rest, _ := io.ReadAll(out)
				done <- ended{string(rest), cmd.Wait()}
			}()
			var e ended
			for deadline := time.Now().Add(20 * time.Second); ; {
				if err := cmd.Process.Signal(tc.sig); err != nil {
					t.Fatal(err)
				}
				wait := 100 * time.Millisecond
				if tc.early {
					wait = time.Until(deadline) // once is enough
				}
				select {
				case e = <-done:
				case <-time.After(wait):
					if time.Now().Before(deadline) {
						continue
					}
					cmd.Process.Kill()
					e = <-done
				}
				break
			}
			if code := cmd.ProcessState.ExitCode(); code != tc.code || e.rest != "got "+tc.name+"\n" {
				t.Errorf("SIG%s: exit %d, output %q, want %d and the trap's line; stderr: %s", tc.name, code, e.rest, tc.code, stderr.String())
			}
		})
	}
}

// TestLogsTailTimestampsFollow: logs --tail N, -t (docker's RFC 3339 with
// nanoseconds before each line) and -f, which prints what comes and ends
// with the container.
func TestLogsTailTimestampsFollow(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "--name", "counted", ref, "sh", "-c", "seq 1 5")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tail", "2"}, "4\n5\n"},
		{[]string{"--tail", "0"}, ""},
		{[]string{"--tail", "all"}, "1\n2\n3\n4\n5\n"},
	} {
		if out := mustStrata(t, root, append(append([]string{"logs"}, c.args...), "counted")...); out != c.want {
			t.Errorf("logs %v: %q, want %q", c.args, out, c.want)
		}
	}
	stamped := mustStrata(t, root, "logs", "-t", "--tail", "1", "counted")
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z 5\n$`).MatchString(stamped) {
		t.Errorf("logs -t --tail 1: %q", stamped)
	}
	if r := strata(t, root, "logs", "--tail", "-3", "counted"); r.code != 125 || !strings.Contains(r.stderr, "--tail") {
		t.Errorf("logs --tail -3: exit %d %s", r.code, r.stderr)
	}

	dir := t.TempDir()
	mustStrata(t, root, "run", "-d", "--name", "talker", "-v", dir+":/go", ref,
		"sh", "-c", "echo first; while [ ! -e /go/now ]; do sleep 0.05; done; echo second")
	follow := exec.Command(strataBin, "--root", root, "logs", "-f", "talker")
	out, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- follow.Wait() }()
	lines := bufio.NewReader(out)
	if l, _ := lines.ReadString('\n'); l != "first\n" {
		t.Errorf("logs -f began with %q", l)
	}
	if err := os.WriteFile(filepath.Join(dir, "now"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if l, _ := lines.ReadString('\n'); l != "second\n" {
		t.Errorf("logs -f went on with %q", l)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("logs -f: %v", err)
		}
	case <-time.After(10 * time.Second):
		follow.Process.Kill()
		t.Error("logs -f did not end with the container")
	}
	mustStrata(t, root, "rm", "counted", "talker")
}

// TestRunCapabilitiesAndPrivileged: --cap-add and --cap-drop change
// docker's default set; --privileged gives every capability, the host's
// devices and /proc unmasked.
func TestRunCapabilitiesAndPrivileged(t *testing.T) {
	root, ref := runImage(t)
	capEff := func(args ...string) uint64 {
		t.Helper()
		out := mustStrata(t, root, append(append([]string{"run", "--rm"}, args...), ref, "sh", "-c", "grep CapEff /proc/self/status")...)
		var v uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(out, "CapEff:")), "%x", &v); err != nil {
			t.Fatalf("CapEff from %q: %v", out, err)
		}
		return v
	}
	const (
		chown    = 1 << 0
		netRaw   = 1 << 13
		sysAdmin = 1 << 21
		dockers  = 0xa80425fb
	)
	if got := capEff(); got != dockers {
		t.Errorf("default capabilities %#x, want docker's %#x", got, dockers)
	}
	if got := capEff("--cap-drop", "CHOWN", "--cap-drop", "net_raw", "--cap-add", "CAP_SYS_ADMIN"); got != dockers&^chown&^netRaw|sysAdmin {
		t.Errorf("--cap-drop CHOWN,NET_RAW --cap-add SYS_ADMIN: %#x", got)
	}
	if got := capEff("--cap-drop", "ALL", "--cap-add", "CHOWN"); got != chown {
		t.Errorf("--cap-drop ALL --cap-add CHOWN: %#x", got)
	}
	// --privileged: all strata holds, which here is this test's bounding
	// set; a capability outside it cannot be added.
	var bnd uint64
	status, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			fmt.Sscanf(strings.TrimSpace(v), "%x", &bnd)
		}
	}
	if got := capEff("--privileged"); got != bnd {
		t.Errorf("--privileged: capabilities %#x, want the bounding set %#x", got, bnd)
	}
	const sysResource = 1 << 24 // withheld on this machine's hosts
	if bnd&sysResource == 0 {
		if r := strata(t, root, "run", "--rm", "--cap-add", "SYS_RESOURCE", ref, "true"); r.code != 125 || !strings.Contains(r.stderr, "bounding set") {
			t.Errorf("--cap-add of a capability strata lacks: exit %d %s", r.code, r.stderr)
		}
	} else {
		t.Log("CAP_SYS_RESOURCE is in the bounding set here: its refusal is not checked")
	}
	out := mustStrata(t, root, "run", "--rm", "--privileged", ref, "sh", "-c",
		"grep -c . /proc/timer_list >/dev/null && echo unmasked; ls /dev | grep -c -v -e '^null$' -e '^zero$'")
	if !strings.HasPrefix(out, "unmasked\n") {
		t.Errorf("--privileged: /proc/timer_list masked: %q", out)
	}
	host, _ := os.ReadDir("/dev")
	if n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(out, "unmasked\n"))); n < len(host)/2 {
		t.Errorf("--privileged: %d devices in /dev, the host has %d", n, len(host))
	}
}

// TestRunCPUsPidsAndPullAlways: --cpus and --pids-limit set the
// container's cgroup (a fork over the limit fails); --pull always pulls
// an image the store has.
func TestRunCPUsPidsAndPullAlways(t *testing.T) {
	root, ref := runImage(t)
	id := strings.TrimSpace(mustStrata(t, root, "run", "-d", "--cpus", "0.5", ref, "sleep", "30"))
	if got := cpuLimit(t, id); got != "50000 100000" {
		t.Errorf("--cpus 0.5: the cgroup's quota and period are %q, want 50000 100000", got)
	}
	mustStrata(t, root, "rm", "-f", id)

	r := strata(t, root, "run", "--rm", "--pids-limit", "4", ref, "sh", "-c",
		"for i in 1 2 3 4 5 6; do sleep 2 & done 2>&1; echo forked")
	if !strings.Contains(r.stdout, "can't fork") || strings.Contains(r.stdout, "forked") {
		t.Errorf("--pids-limit 4: six children forked: exit %d, %q", r.code, r.stdout)
	}

	r = strata(t, root, "run", "--rm", "--pull", "always", ref, "echo", "pulled again")
	if r.code != 0 || r.stdout != "pulled again\n" || strings.Contains(r.stderr, "Unable to find") {
		t.Errorf("--pull always: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// cpuLimit is the CPU quota and period of container id's cgroup, as the
// host's cgroup filesystem has them (v2 cpu.max, or v1's two files).
func cpuLimit(t *testing.T, id string) string {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/strata", id, "cpu.max")); err == nil {
		return strings.TrimSpace(string(b))
	}
	dir := filepath.Join("/sys/fs/cgroup/cpu/strata", id)
	q, err := os.ReadFile(filepath.Join(dir, "cpu.cfs_quota_us"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := os.ReadFile(filepath.Join(dir, "cpu.cfs_period_us"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(q)) + " " + strings.TrimSpace(string(p))
}

// TestRunSignalsAndStopSignal: a command ended by signal N exits 128+N
// (strata kill of a foreground run; --init passes on its command's
// death); stop sends --stop-signal, or else the image's StopSignal.
func TestRunSignalsAndStopSignal(t *testing.T) {
	root, ref := runImage(t)
	run := exec.Command(strataBin, "--root", root, "run", "--rm", "--name", "victim", ref, "sh", "-c", "echo ready; sleep 100")
	out, err := run.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	if l, _ := bufio.NewReader(out).ReadString('\n'); l != "ready\n" {
		t.Fatalf("run said %q", l)
	}
	mustStrata(t, root, "kill", "victim")
	run.Wait()
	if code := run.ProcessState.ExitCode(); code != 137 {
		t.Errorf("run of a container killed by SIGKILL: exit %d, want 137", code)
	}
	if r := strata(t, root, "run", "--rm", "--init", ref, "sh", "-c", "kill -TERM $$"); r.code != 143 {
		t.Errorf("--init, the command ended by SIGTERM: exit %d, want 143 (%s)", r.code, r.stderr)
	}

	trap := "trap 'exit 9' USR1; trap 'exit 10' USR2; echo up; while :; do sleep 0.05; done"
	mustStrata(t, root, "run", "-d", "--name", "flagged", "--stop-signal", "USR1", ref, "sh", "-c", trap)
	waitFor(t, "flagged up", func() bool { return strings.Contains(strata(t, root, "logs", "flagged").stdout, "up") })
	mustStrata(t, root, "stop", "flagged")
	if out := mustStrata(t, root, "wait", "flagged"); out != "9\n" {
		t.Errorf("stop with --stop-signal USR1: exit %q, want 9", out)
	}

	// The image's own StopSignal.
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	stopRef := pushVariant(t, ref, "stopsignal", img, func(c *v1.Config) { c.StopSignal = "SIGUSR2" })
	mustStrata(t, root, "run", "-d", "--name", "imaged", stopRef, "sh", "-c", trap)
	waitFor(t, "imaged up", func() bool { return strings.Contains(strata(t, root, "logs", "imaged").stdout, "up") })
	mustStrata(t, root, "stop", "imaged")
	if out := mustStrata(t, root, "wait", "imaged"); out != "10\n" {
		t.Errorf("stop with the image's StopSignal SIGUSR2: exit %q, want 10", out)
	}
	mustStrata(t, root, "rm", "flagged", "imaged")
}

// TestStartAttachInteractive: start -a -i of a created container gives
// it this standard input and prints its output.
func TestStartAttachInteractive(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "create", "-i", "--name", "reader", ref, "tr", "a-z", "A-Z")
	cmd := exec.Command(strataBin, "--root", root, "start", "-a", "-i", "reader")
	cmd.Stdin = strings.NewReader("through start\n")
	b, err := cmd.Output()
	if err != nil || string(b) != "THROUGH START\n" {
		t.Errorf("start -a -i: %q, %v", b, err)
	}
	if out := mustStrata(t, root, "wait", "reader"); out != "0\n" {
		t.Errorf("start -a -i: exit %q", out)
	}
	mustStrata(t, root, "rm", "reader")
}

// TestVolumeVerbs: strata volume create, ls, inspect, rm and prune as
// docker volume's: a name made up for a create without one (a named
// volume still, as docker's), errors for what is missing (none with rm
// -f), prune asking first and taking anonymous volumes only unless -a,
// never one in use.
func TestVolumeVerbs(t *testing.T) {
	root, ref := runImage(t)
	if out := mustStrata(t, root, "volume", "create", "named"); out != "named\n" {
		t.Errorf("volume create named: %q", out)
	}
	made := strings.TrimSpace(mustStrata(t, root, "volume", "create"))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(made) {
		t.Errorf("volume create without a name made %q", made)
	}
	// The image's /cache gets an anonymous volume.
	mustStrata(t, root, "run", "--name", "user", "-v", "inuse:/data", ref, "sh", "-c", "echo kept > /data/f")
	listed := strings.Fields(mustStrata(t, root, "volume", "ls", "-q"))
	if len(listed) != 4 || !slices.Contains(listed, made) || !slices.Contains(listed, "inuse") || !slices.Contains(listed, "named") {
		t.Fatalf("volume ls -q: %v", listed)
	}
	var vols []struct{ Name, Mountpoint string }
	if err := json.Unmarshal([]byte(mustStrata(t, root, "volume", "inspect", "inuse")), &vols); err != nil || len(vols) != 1 || vols[0].Name != "inuse" {
		t.Fatalf("volume inspect inuse: %+v %v", vols, err)
	}
	if b, err := os.ReadFile(filepath.Join(vols[0].Mountpoint, "f")); err != nil || string(b) != "kept\n" {
		t.Errorf("the volume's mountpoint has %q, %v", b, err)
	}
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"volume", "inspect", "nothing"}, 1, "nothing"},
		{[]string{"volume", "rm", "nothing"}, 1, "nothing"},
		{[]string{"volume", "rm", "-f", "nothing"}, 0, ""},
		{[]string{"volume", "rm"}, 125, "usage"},
		{[]string{"volume", "rm", "inuse"}, 1, "in use"},
		{[]string{"volume", "shrink"}, 125, "shrink"},
	} {
		if r := strata(t, root, c.args...); r.code != c.code || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("%v: exit %d (want %d), stderr %q (want %q)", c.args, r.code, c.code, r.stderr, c.msg)
		}
	}
	no := exec.Command(strataBin, "--root", root, "volume", "prune")
	no.Stdin = strings.NewReader("n\n")
	if out, err := no.CombinedOutput(); err == nil || !strings.Contains(string(out), "aborted") {
		t.Errorf("volume prune answered no: %v\n%s", err, out)
	}
	if got := strings.Fields(mustStrata(t, root, "volume", "ls", "-q")); len(got) != 4 {
		t.Errorf("volumes after a prune answered no: %v", got)
	}
	// The only anonymous volume is in use: prune -f takes nothing.
	if out := mustStrata(t, root, "volume", "prune", "-f"); strings.Contains(out, "Deleted") {
		t.Errorf("volume prune -f with every anonymous volume in use:\n%s", out)
	}
	if out := mustStrata(t, root, "volume", "prune", "-a", "-f"); !strings.Contains(out, "named") || !strings.Contains(out, made) || strings.Contains(out, "inuse") {
		t.Errorf("volume prune -a -f:\n%s", out)
	}
	mustStrata(t, root, "rm", "user") // without -v: its anonymous volume stays
	if out := mustStrata(t, root, "volume", "prune", "-f"); !strings.Contains(out, "Deleted") || strings.Contains(out, "inuse") {
		t.Errorf("volume prune -f after rm:\n%s", out)
	}
	mustStrata(t, root, "volume", "rm", "inuse")
	if out := mustStrata(t, root, "volume", "ls", "-q"); out != "" {
		t.Errorf("volumes left: %q", out)
	}
}

// TestRunNamespacesAndDev: the container has mount, PID, UTS, IPC,
// network and cgroup namespaces of its own (the host's network with
// --network host), and the /dev docker gives: the fd links, an mqueue
// and a devpts instance of its own.
func TestRunNamespacesAndDev(t *testing.T) {
	root, ref := runImage(t)
	kinds := []string{"mnt", "pid", "uts", "ipc", "net", "cgroup"}
	script := ""
	for _, k := range kinds {
		script += "readlink /proc/self/ns/" + k + "; "
	}
	check := func(args []string, shared string) {
		t.Helper()
		out := mustStrata(t, root, append(append([]string{"run", "--rm"}, args...), ref, "sh", "-c", script)...)
		got := strings.Fields(out)
		if len(got) != len(kinds) {
			t.Fatalf("namespaces: %q", out)
		}
		for i, k := range kinds {
			host, err := os.Readlink("/proc/self/ns/" + k)
			if err != nil {
				t.Fatal(err)
			}
			if (got[i] == host) != (k == shared) {
				t.Errorf("run %v: %s namespace %s, the host's %s", args, k, got[i], host)
			}
		}
	}
	check(nil, "")
	check([]string{"--network", "host"}, "net")

	out := mustStrata(t, root, "run", "--rm", ref, "sh", "-c",
		"for l in fd stdin stdout stderr; do readlink /dev/$l; done; grep -E ' /dev/(mqueue|pts|shm) ' /proc/mounts | cut -d' ' -f2,3; ls /dev/pts")
	for _, want := range []string{"/proc/self/fd\n", "/proc/self/fd/0\n", "/proc/self/fd/1\n", "/proc/self/fd/2\n",
		"/dev/mqueue mqueue\n", "/dev/pts devpts\n", "/dev/shm tmpfs\n", "ptmx\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("the container's /dev lacks %q:\n%s", want, out)
		}
	}
}

// TestRunUserFromTheImage: -u and the image's User resolve through the
// container's own /etc/passwd and /etc/group: the user's primary group,
// its supplementary groups, its home; USER:GROUP and numeric ids. And
// PATH when the image sets none.
func TestRunUserFromTheImage(t *testing.T) {
	root, ref := runImage(t)
	base, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	users, err := testimage.LayerFromFiles([]testimage.File{
		{Path: "etc/", Type: tar.TypeDir, Mode: 0o755},
		{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n")},
		{Path: "etc/group", Data: []byte("root:x:0:\nwheel:x:10:alice,bob\nusers:x:100:alice\nalice:x:1000:\nstaff:x:50:\n")},
	}, testimage.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, users)
	if err != nil {
		t.Fatal(err)
	}
	usersRef := pushVariant(t, ref, "users", img, func(c *v1.Config) { c.User = "alice" })
	// No Env in the image: PATH is docker's default.
	bareRef := pushVariant(t, ref, "bare-env", img, func(c *v1.Config) { c.User, c.Env = "alice", nil })
	if out := mustStrata(t, root, "run", "--rm", bareRef, "sh", "-c", "echo $PATH"); out != "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" {
		t.Errorf("PATH in a container of an image without Env: %q", out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "1000 1000 10 100 1000 /home/alice\n"},
		// A group given takes the place of the lists (as runc: supplementary
		// groups come with the user's implicit group only).
		{[]string{"-u", "alice:staff"}, "1000 50 50 /home/alice\n"},
		{[]string{"-u", "0"}, "0 0 0 /root\n"},
		{[]string{"-u", "4242:4343"}, "4242 4343 4343 /\n"},
	} {
		out := mustStrata(t, root, append(append([]string{"run", "--rm"}, c.args...), usersRef, "sh", "-c", `echo $(id -u) $(id -g) $(id -G | tr ' ' '\n' | sort -n) $HOME`)...)
		if out != c.want {
			t.Errorf("run %v: uid gid groups home %q, want %q", c.args, out, c.want)
		}
	}
}

// TestRunPlatform: run --platform takes that platform's image from an
// index, pulling it when the store has the image for another one, as
// docker does; --pull never refuses then.
func TestRunPlatform(t *testing.T) {
	root, ref := runImage(t)
	base, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	for _, p := range testimage.IndexPlatforms() {
		parts := strings.Split(p, "/")
		pl := v1.Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) == 3 {
			pl.Variant = parts[2]
		}
		l, err := testimage.LayerFromFiles([]testimage.File{{Path: "etc/", Type: tar.TypeDir, Mode: 0o755}, {Path: "etc/platform", Data: []byte(p + "\n")}}, testimage.Gzip)
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(base, l)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = pl.OS, pl.Architecture, pl.Variant
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &pl}})
	}
	multi := strings.Replace(ref, "demo/run:v1", "demo/multi:v1", 1)
	if err := testimage.PushIndex(context.Background(), multi, idx); err != nil {
		t.Fatal(err)
	}
	host, other := testimage.IndexPlatforms()[0], testimage.IndexPlatforms()[1]
	if out := mustStrata(t, root, "run", "--rm", multi, "cat", "/etc/platform"); out != host+"\n" {
		t.Errorf("run without --platform: the image for %q", out)
	}
	if out := mustStrata(t, root, "run", "--rm", "--platform", other, multi, "cat", "/etc/platform"); out != other+"\n" {
		t.Errorf("run --platform %s: the image for %q", other, out)
	}
	if r := strata(t, root, "run", "--rm", "--pull", "never", "--platform", host, multi, "true"); r.code != 125 || !strings.Contains(r.stderr, other) {
		t.Errorf("run --pull never --platform %s with the %s image here: exit %d %s", host, other, r.code, r.stderr)
	}
	if out := mustStrata(t, root, "run", "--rm", "--platform", host, multi, "cat", "/etc/platform"); out != host+"\n" {
		t.Errorf("run --platform %s: the image for %q", host, out)
	}
}

// TestPsJSONStopSignalFlagAndPrune: ps --format json (one object a line,
// docker's keys), stop -s SIGNAL (which a detached command once ignored
// for SIGHUP and SIGINT), and system prune -a --volumes -f
// taking stopped containers, their anonymous volumes and unused images,
// never a running container's.
func TestPsJSONStopSignalFlagAndPrune(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "-d", "--name", "runner", ref, "sh", "-c", "trap 'exit 12' HUP; echo up; while :; do sleep 0.05; done")
	strata(t, root, "run", "--name", "done", ref, "sh", "-c", "exit 3")
	waitFor(t, "runner up", func() bool { return strings.Contains(strata(t, root, "logs", "runner").stdout, "up") })
	rows := map[string]map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(mustStrata(t, root, "ps", "-a", "--format", "json")), "\n") {
		var row map[string]string
		if err := json.Unmarshal([]byte(line), &row); err != nil {
			t.Fatalf("ps --format json line %q: %v", line, err)
		}
		rows[row["Names"]] = row
	}
	if r := rows["runner"]; r["State"] != "running" || !strings.HasPrefix(r["Status"], "Up") || r["Image"] != ref || len(r["ID"]) != 12 || r["CreatedAt"] == "" || r["Command"] == "" {
		t.Errorf("ps --format json, running: %v", r)
	}
	if r := rows["done"]; r["State"] != "exited" || !strings.HasPrefix(r["Status"], "Exited (3)") {
		t.Errorf("ps --format json, exited: %v", r)
	}
	if out := mustStrata(t, root, "ps", "--format", "json"); strings.Count(out, "\n") != 1 || !strings.Contains(out, `"runner"`) {
		t.Errorf("ps --format json without -a: %q", out)
	}
	// Go templates, as docker's ps and images take them.
	if out := mustStrata(t, root, "ps", "-a", "--format", "{{.Names}} {{.State}} {{upper .Image}}"); !strings.Contains(out, "runner running "+strings.ToUpper(ref)+"\n") || !strings.Contains(out, "done exited ") {
		t.Errorf("ps --format template:\n%s", out)
	}
	if out := mustStrata(t, root, "images", "--format", "{{.Repository}}:{{.Tag}}"); !strings.Contains(ref, strings.TrimSpace(out)) || !strings.HasSuffix(strings.TrimSpace(out), ":v1") {
		t.Errorf("images --format template: %q (the image is %s)", out, ref)
	}
	if r := strata(t, root, "ps", "--format", "{{.NoSuchField}}"); r.code == 0 || !strings.Contains(r.stderr, "NoSuchField") {
		t.Errorf("ps --format with a field rows lack: exit %d %s", r.code, r.stderr)
	}

	mustStrata(t, root, "stop", "-s", "HUP", "runner")
	if out := mustStrata(t, root, "wait", "runner"); out != "12\n" {
		t.Errorf("stop -s HUP: exit %q, want 12", out)
	}
	// A detached container's command starts with no signal ignored (its
	// monitor ignores SIGHUP and SIGINT).
	mustStrata(t, root, "run", "-d", "--name", "sigs", ref, "grep", "SigIgn", "/proc/self/status")
	mustStrata(t, root, "wait", "sigs")
	if out := mustStrata(t, root, "logs", "sigs"); out != "SigIgn:\t0000000000000000\n" {
		t.Errorf("a detached command's ignored signals: %q", out)
	}
	// Nor when strata itself was started with signals ignored (nohup).
	nohup := exec.Command("sh", "-c", `trap '' HUP INT TERM 34; exec "$0" "$@"`, strataBin, "--root", root, "run", "--rm", ref, "grep", "SigIgn", "/proc/self/status")
	if out, err := nohup.Output(); err != nil || string(out) != "SigIgn:\t0000000000000000\n" {
		t.Errorf("a command run by a strata that ignores HUP, INT, TERM and 34: %q %v", out, err)
	}

	mustStrata(t, root, "run", "-d", "--name", "keeper", ref, "sleep", "30")
	vols := len(strings.Fields(mustStrata(t, root, "volume", "ls", "-q"))) // each has an anonymous /cache
	out := mustStrata(t, root, "system", "prune", "-a", "--volumes", "-f")
	if !strings.Contains(out, "Deleted Containers:") {
		t.Errorf("system prune -a --volumes -f:\n%s", out)
	}
	if got := strings.Fields(mustStrata(t, root, "ps", "-a", "-q")); len(got) != 1 {
		t.Errorf("containers after prune: %v, want the running one", got)
	}
	if got := strings.Fields(mustStrata(t, root, "volume", "ls", "-q")); len(got) != 1 || vols != 4 {
		t.Errorf("volumes after prune: %v (of %d), want the running container's", got, vols)
	}
	if out := mustStrata(t, root, "images", "-q"); strings.TrimSpace(out) == "" {
		t.Errorf("prune -a took the image a running container uses")
	}
	mustStrata(t, root, "rm", "-f", "-v", "keeper")
	mustStrata(t, root, "system", "prune", "-a", "-f")
	if out := mustStrata(t, root, "images", "-q"); out != "" {
		t.Errorf("images after prune -a with no container: %q", out)
	}
}

// TestTerminalFromAPipeRefused: -it with a standard input that is not a
// terminal is refused, as docker refuses it (run, exec, start -a -i):
// the pipe's end would never reach the container, which would wait on.
// -t alone is fine.
func TestTerminalFromAPipeRefused(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "-d", "--name", "box", ref, "sleep", "30")
	mustStrata(t, root, "create", "-it", "--name", "made", ref, "cat")
	for _, args := range [][]string{
		{"run", "--rm", "-it", ref, "cat"},
		{"exec", "-it", "box", "cat"},
		{"start", "-a", "-i", "made"},
	} {
		cmd := exec.Command(strataBin, append([]string{"--root", root}, args...)...)
		cmd.Stdin = strings.NewReader("piped\n")
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "not a TTY") {
			t.Errorf("%v from a pipe: exit %d %v: %s", args, code, err, out)
		}
	}
	if out := mustStrata(t, root, "run", "--rm", "-t", ref, "echo", "t alone"); out != "t alone\r\n" {
		t.Errorf("run -t from a pipe: %q", out)
	}
	if out := mustStrata(t, root, "ps", "-q"); len(strings.Fields(out)) != 1 {
		t.Errorf("running after the refusals: %q", out)
	}
	mustStrata(t, root, "rm", "-f", "box", "made")
}

// TestInspectContainer: strata inspect CONTAINER in docker's shape, and
// --format with docker's Go templates, for containers and images alike.
func TestInspectContainer(t *testing.T) {
	root, ref := runImage(t)
	host := t.TempDir()
	id := strings.TrimSpace(mustStrata(t, root, "run", "-d", "--name", "seen", "-e", "X=1", "-m", "64m", "--pids-limit", "20",
		"--cap-add", "SYS_ADMIN", "--cap-drop", "CHOWN", "-v", host+":/h:ro", "-v", "seenvol:/v", "--tmpfs", "/t", ref, "sleep", "30"))
	var got []struct {
		ID    string `json:"Id"`
		Name  string
		Path  string
		Args  []string
		Image string
		State struct {
			Status          string
			Running, Paused bool
			Pid, ExitCode   int
			StartedAt       string
			FinishedAt      string
		}
		HostConfig struct {
			Binds           []string
			NetworkMode     string
			CapAdd, CapDrop []string
			Memory          int64
			PidsLimit       int64
		}
		Mounts []struct {
			Type, Name, Source, Destination string
			RW                              bool
		}
		Config struct {
			Env        []string
			Image      string
			WorkingDir string
			Volumes    map[string]struct{}
		}
	}
	if err := json.Unmarshal([]byte(mustStrata(t, root, "inspect", "seen")), &got); err != nil || len(got) != 1 {
		t.Fatalf("inspect seen: %v %+v", err, got)
	}
	c := got[0]
	if c.ID != id || c.Name != "/seen" || c.Path != "sleep" || !slices.Equal(c.Args, []string{"30"}) || !strings.HasPrefix(c.Image, "sha256:") {
		t.Errorf("inspect: %+v", c)
	}
	if c.State.Status != "running" || !c.State.Running || c.State.Pid <= 0 || c.State.FinishedAt != "0001-01-01T00:00:00Z" {
		t.Errorf("inspect State of a running container: %+v", c.State)
	}
	hc := c.HostConfig
	if hc.Memory != 64<<20 || hc.PidsLimit != 20 || hc.NetworkMode != "none" || !slices.Equal(hc.CapAdd, []string{"CAP_SYS_ADMIN"}) ||
		!slices.Equal(hc.CapDrop, []string{"CAP_CHOWN"}) || !slices.Equal(hc.Binds, []string{host + ":/h:ro", "seenvol:/v"}) {
		t.Errorf("inspect HostConfig: %+v", hc)
	}
	if len(c.Mounts) != 4 { // /h, /v, /t and the image's /cache
		t.Errorf("inspect Mounts: %+v", c.Mounts)
	}
	if !slices.Contains(c.Config.Env, "X=1") || c.Config.Image != ref || c.Config.WorkingDir != "/srv/app" {
		t.Errorf("inspect Config: %+v", c.Config)
	}
	if _, ok := c.Config.Volumes["/cache"]; !ok {
		t.Errorf("inspect Config.Volumes lacks the image's anonymous /cache: %v", c.Config.Volumes)
	}
	pid := strconv.Itoa(c.State.Pid)
	if out := mustStrata(t, root, "inspect", "--format", "{{.State.Pid}} {{.HostConfig.Memory}} {{join .Args \",\"}}", "seen"); out != pid+" 67108864 30\n" {
		t.Errorf("inspect --format: %q", out)
	}
	if out := mustStrata(t, root, "inspect", "-f", "{{.Id}}", ref); !strings.HasPrefix(out, "sha256:") {
		t.Errorf("inspect -f of an image: %q", out)
	}
	if r := strata(t, root, "inspect", "-f", "{{.Nope", "seen"); r.code != 125 {
		t.Errorf("inspect with a broken template: exit %d %s", r.code, r.stderr)
	}
	mustStrata(t, root, "stop", "-t", "0", "seen")
	if out := mustStrata(t, root, "inspect", "-f", "{{.State.Status}} {{.State.Running}} {{.State.Pid}} {{.State.ExitCode}}", "seen"); out != "exited false 0 137\n" {
		t.Errorf("inspect of the stopped container: %q", out)
	}
	mustStrata(t, root, "rm", "-v", "seen")
	mustStrata(t, root, "volume", "rm", "seenvol")
}

// TestRunHostsLabelsShmUlimit: --add-host lines in /etc/hosts, --label
// in inspect, --shm-size for /dev/shm, --ulimit for the command, as
// docker gives them; bad values refused with exit 125.
func TestRunHostsLabelsShmUlimit(t *testing.T) {
	root, ref := runImage(t)
	out := mustStrata(t, root, "run", "--name", "tuned", "--add-host", "db:10.0.0.5", "--add-host", "six:[fd00::1]",
		"-l", "team=core", "--label", "bare", "--shm-size", "2m", "--ulimit", "nofile=100:200", "--ulimit", "core=0", ref,
		"sh", "-c", "grep -E 'db|six' /etc/hosts; df -k /dev/shm | tail -1 | awk '{print $2}'; ulimit -n; ulimit -Hn; ulimit -c")
	if out != "10.0.0.5\tdb\nfd00::1\tsix\n2048\n100\n200\n0\n" {
		t.Errorf("--add-host, --shm-size, --ulimit: %q", out)
	}
	got := mustStrata(t, root, "inspect", "-f", "{{json .Config.Labels}} {{json .HostConfig.ExtraHosts}} {{.HostConfig.ShmSize}} {{json .HostConfig.Ulimits}}", "tuned")
	want := `{"bare":"","team":"core"} ["db:10.0.0.5","six:fd00::1"] 2097152 [{"Hard":200,"Name":"nofile","Soft":100},{"Hard":0,"Name":"core","Soft":0}]` + "\n"
	if got != want {
		t.Errorf("inspect: %s want %s", got, want)
	}
	mustStrata(t, root, "rm", "tuned")
	if out := mustStrata(t, root, "run", "--rm", ref, "sh", "-c", "df -k /dev/shm | tail -1 | awk '{print $2}'"); out != "65536\n" {
		t.Errorf("/dev/shm by default: %q KiB, want docker's 64 MiB", out)
	}
	for _, c := range []struct{ args []string }{
		{[]string{"--add-host", "nocolon"}},
		{[]string{"--add-host", "db:not-an-ip"}},
		{[]string{"--ulimit", "bogus=1"}},
		{[]string{"--ulimit", "nofile=200:100"}},
		{[]string{"--ulimit", "nofile=lots"}},
		{[]string{"--shm-size", "0"}},
		{[]string{"--label", "=v"}},
	} {
		if r := strata(t, root, append(append([]string{"run", "--rm"}, c.args...), ref, "true")...); r.code != 125 || !strings.Contains(r.stderr, c.args[0]) {
			t.Errorf("run %v: exit %d %s", c.args, r.code, r.stderr)
		}
	}
}

// TestPsFilter: ps --filter as docker's: id, name (a part of it), label
// (key, or key=value), status, ancestor and exited; alternatives within
// a key, all keys at once.
func TestPsFilter(t *testing.T) {
	root, ref := runImage(t)
	up := strings.TrimSpace(mustStrata(t, root, "run", "-d", "--name", "web-1", "-l", "tier=front", ref, "sleep", "30"))
	mustStrata(t, root, "run", "-d", "--name", "web-2", "-l", "tier=back", ref, "sleep", "30")
	strata(t, root, "run", "--name", "job", "-l", "tier=front", ref, "sh", "-c", "exit 4")
	names := func(args ...string) string {
		t.Helper()
		out := strings.Fields(mustStrata(t, root, append([]string{"ps", "--format", "{{.Names}}"}, args...)...))
		slices.Sort(out)
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-f", "name=web"}, "web-1 web-2"},
		{[]string{"-a", "-f", "label=tier=front"}, "job web-1"},
		{[]string{"-f", "label=tier"}, "web-1 web-2"},
		{[]string{"-f", "status=exited"}, "job"},
		{[]string{"-f", "exited=4"}, "job"},
		{[]string{"-f", "exited=0"}, ""},
		{[]string{"-f", "id=" + up[:6]}, "web-1"},
		{[]string{"-a", "-f", "ancestor=" + ref, "-f", "label=tier=back"}, "web-2"},
		{[]string{"-a", "-f", "name=web-1", "-f", "name=job"}, "job web-1"},
	} {
		if got := names(c.args...); got != c.want {
			t.Errorf("ps %v: %q, want %q", c.args, got, c.want)
		}
	}
	if r := strata(t, root, "ps", "-f", "size=1"); r.code != 125 {
		t.Errorf("ps -f size=1: exit %d", r.code)
	}
	mustStrata(t, root, "rm", "-f", "web-1", "web-2", "job")
}

// TestLogsSinceUntil: logs --since and --until as docker's: an RFC 3339
// time, Unix seconds or a duration back; with --tail counting what is
// left.
func TestLogsSinceUntil(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "--name", "talk", ref, "sh", "-c", "echo early; echo early2; sleep 0.3; echo late")
	var stamps []time.Time
	for _, l := range strings.Split(strings.TrimSpace(mustStrata(t, root, "logs", "-t", "talk")), "\n") {
		ts, _, _ := strings.Cut(l, " ")
		tm, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			t.Fatalf("logs -t line %q: %v", l, err)
		}
		stamps = append(stamps, tm)
	}
	if len(stamps) != 3 {
		t.Fatalf("logs -t: %d lines", len(stamps))
	}
	mid := stamps[1].Add(stamps[2].Sub(stamps[1]) / 2)
	unix := fmt.Sprintf("%d.%09d", mid.Unix(), mid.Nanosecond())
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--since", mid.Format(time.RFC3339Nano)}, "late\n"},
		{[]string{"--since", unix}, "late\n"},
		{[]string{"--until", mid.Format(time.RFC3339Nano)}, "early\nearly2\n"},
		{[]string{"--until", mid.Format(time.RFC3339Nano), "--tail", "1"}, "early2\n"},
		{[]string{"--since", "1h"}, "early\nearly2\nlate\n"},
		{[]string{"--until", "1h"}, ""},
	} {
		if out := mustStrata(t, root, append(append([]string{"logs"}, c.args...), "talk")...); out != c.want {
			t.Errorf("logs %v: %q, want %q", c.args, out, c.want)
		}
	}
	if r := strata(t, root, "logs", "--since", "yesterday", "talk"); r.code != 125 || !strings.Contains(r.stderr, "--since") {
		t.Errorf("logs --since yesterday: exit %d %s", r.code, r.stderr)
	}
	mustStrata(t, root, "rm", "talk")
}

// TestDiff: strata diff lists what a container added, changed and
// deleted of its image's files, sorted, as docker diff does; a container
// that changed nothing lists nothing.
func TestDiff(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "--name", "changer", ref, "sh", "-c",
		"echo x > /tmp/new; echo y >> /etc/passwd; rm /etc/group; mkdir -p /opt/a/b; touch /opt/a/b/c")
	// /cache is the image's volume's mount point, /srv/app its working
	// directory, which the image lacks: both made in the container layer.
	want := "A /cache\nC /etc\nD /etc/group\nC /etc/passwd\nA /opt\nA /opt/a\nA /opt/a/b\nA /opt/a/b/c\nA /srv\nA /srv/app\nC /tmp\nA /tmp/new\n"
	if out := mustStrata(t, root, "diff", "changer"); out != want {
		t.Errorf("diff:\n%s\nwant:\n%s", out, want)
	}
	mustStrata(t, root, "create", "--name", "idle", "-w", "/", ref, "true")
	if out := mustStrata(t, root, "diff", "idle"); out != "" {
		t.Errorf("diff of a container that changed nothing: %q", out)
	}
	if r := strata(t, root, "diff", "nothing"); r.code != 1 {
		t.Errorf("diff of no container: exit %d", r.code)
	}
	mustStrata(t, root, "rm", "changer", "idle")
}

// TestTop: strata top lists the container's processes through the
// host's ps, with ps's options, and no others; a stopped container has
// none to list.
func TestTop(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "-d", "--name", "busy", ref, "sh", "-c", "sleep 71 & sleep 72")
	waitFor(t, "both sleeps", func() bool { return strings.Count(strata(t, root, "top", "busy").stdout, "sleep 7") == 2 })
	out := mustStrata(t, root, "top", "busy", "-o", "pid,args")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "PID") || !strings.Contains(out, "sleep 71") || !strings.Contains(out, "sleep 72") {
		t.Errorf("top -o pid,args:\n%s", out)
	}
	mustStrata(t, root, "stop", "-t", "0", "busy")
	if r := strata(t, root, "top", "busy"); r.code == 0 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("top of a stopped container: exit %d %s", r.code, r.stderr)
	}
	mustStrata(t, root, "rm", "busy")
}

// TestCp: strata cp between the host and a running container, both
// ways, files and trees (modes, symlinks as links), into its volumes, by
// docker cp's rules; a symlink in the container never leads out of it.
func TestCp(t *testing.T) {
	root, ref := runImage(t)
	host := t.TempDir()
	os.MkdirAll(filepath.Join(host, "in/sub"), 0o755)
	os.WriteFile(filepath.Join(host, "in/a"), []byte("one\n"), 0o640)
	os.WriteFile(filepath.Join(host, "in/sub/b"), []byte("two\n"), 0o644)
	os.Symlink("a", filepath.Join(host, "in/link"))
	mustStrata(t, root, "run", "-d", "--name", "box", "-v", "cpvol:/vol", ref, "sh", "-c", "ln -s / /tmp/up; ln -s /etc /tmp/etclink; sleep 60")
	waitFor(t, "the links", func() bool { return strata(t, root, "exec", "box", "test", "-L", "/tmp/up").code == 0 })

	mustStrata(t, root, "cp", filepath.Join(host, "in"), "box:/tmp/")
	if out := mustStrata(t, root, "exec", "box", "sh", "-c", "stat -c '%a %n' /tmp/in/a; readlink /tmp/in/link; cat /tmp/in/a /tmp/in/sub/b"); out != "640 /tmp/in/a\na\none\ntwo\n" {
		t.Errorf("cp of a tree into the container: %q", out)
	}
	mustStrata(t, root, "cp", filepath.Join(host, "in/a"), "box:/vol/x")
	if out := mustStrata(t, root, "exec", "box", "cat", "/vol/x"); out != "one\n" {
		t.Errorf("cp into a volume: %q", out)
	}
	// Through a symlink to / the path stays inside the container.
	mustStrata(t, root, "cp", filepath.Join(host, "in/a"), "box:/tmp/up/etc/escaped")
	if _, err := os.Stat("/etc/escaped"); err == nil {
		os.Remove("/etc/escaped")
		t.Fatalf("cp through a container symlink wrote the host's /etc/escaped")
	}
	if out := mustStrata(t, root, "exec", "box", "cat", "/etc/escaped"); out != "one\n" {
		t.Errorf("cp through the container's symlink to /: %q", out)
	}

	out := filepath.Join(host, "out")
	mustStrata(t, root, "cp", "box:/etc/passwd", out)
	if b, err := os.ReadFile(out); err != nil || !strings.HasPrefix(string(b), "root:") {
		t.Errorf("cp of a file out: %q %v", b, err)
	}
	mustStrata(t, root, "cp", "box:/tmp/in", host+"/tree")
	if b, err := os.ReadFile(filepath.Join(host, "tree/sub/b")); err != nil || string(b) != "two\n" {
		t.Errorf("cp of a tree out: %q %v", b, err)
	}
	mustStrata(t, root, "cp", "box:/tmp/etclink", host+"/etclink")
	if target, err := os.Readlink(filepath.Join(host, "etclink")); err != nil || target != "/etc" {
		t.Errorf("cp of a symlink out: %q %v, want the link itself", target, err)
	}

	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{host + "/in/a", host + "/x"}, 125},
		{[]string{"box:/a", "box:/b"}, 125},
		{[]string{"box:/no/such", host + "/y"}, 1},
		{[]string{host + "/in/a", "box:/no/such/dir/x"}, 1},
	} {
		if r := strata(t, root, append([]string{"cp"}, c.args...)...); r.code != c.code {
			t.Errorf("cp %v: exit %d (want %d) %s", c.args, r.code, c.code, r.stderr)
		}
	}
	mustStrata(t, root, "stop", "-t", "0", "box")
	if r := strata(t, root, "cp", host+"/in/a", "box:/tmp/z"); r.code != 1 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("cp into a stopped container: exit %d %s", r.code, r.stderr)
	}
	// Out of a stopped one: its container layer over its image.
	cpMounts := func() int {
		b, _ := os.ReadFile("/proc/self/mountinfo")
		return strings.Count(string(b), " strata-cp ")
	}
	before := cpMounts()
	mustStrata(t, root, "cp", "box:/tmp/in", host+"/after")
	if b, err := os.ReadFile(filepath.Join(host, "after/sub/b")); err != nil || string(b) != "two\n" {
		t.Errorf("cp out of a stopped container, from its layer: %q %v", b, err)
	}
	mustStrata(t, root, "cp", "box:/etc/passwd", host+"/passwd2")
	if b, err := os.ReadFile(filepath.Join(host, "passwd2")); err != nil || !strings.HasPrefix(string(b), "root:") {
		t.Errorf("cp out of a stopped container, from its image: %q %v", b, err)
	}
	if n := cpMounts(); n != before {
		t.Errorf("cp left its mount: %d strata-cp mounts, %d before", n, before)
	}
	// Killed in the middle, it leaves no mount either: the mount is in a
	// mount namespace of its own.
	for _, after := range []time.Duration{5 * time.Millisecond, 30 * time.Millisecond} {
		killed := exec.Command(strataBin, "--root", root, "cp", "box:/bin", filepath.Join(host, fmt.Sprint("bin", after)))
		if err := killed.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(after)
		killed.Process.Kill()
		killed.Wait()
		if n := cpMounts(); n != before {
			t.Errorf("cp killed after %v left its mount: %d strata-cp mounts, %d before", after, n, before)
		}
	}
	mustStrata(t, root, "rm", "box")
	mustStrata(t, root, "volume", "rm", "cpvol")
}

// pushVariant pushes img, its config changed by edit, beside ref (which
// runImage pushed) as demo/NAME:v1, and returns that reference.
func pushVariant(t *testing.T, ref, name string, img v1.Image, edit func(*v1.Config)) string {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	edit(&cfg)
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	variant := strings.Replace(ref, "demo/run:v1", "demo/"+name+":v1", 1)
	if err := testimage.Push(context.Background(), variant, img); err != nil {
		t.Fatal(err)
	}
	return variant
}
