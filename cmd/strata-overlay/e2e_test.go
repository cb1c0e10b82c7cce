package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/testenv"
)

var overlayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-overlay-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	overlayBin = filepath.Join(dir, "strata-overlay")
	if out, err := exec.Command("go", "build", "-o", overlayBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build strata-overlay: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// stack makes two lower layers and an upper/work pair under base.
func stack(t *testing.T) (base string) {
	t.Helper()
	base = t.TempDir()
	for _, d := range []string{"top/etc", "bottom/etc", "bottom/usr/bin", "upper", "work", "mnt"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(base, "bottom/etc/motd"), []byte("bottom\n"), 0o644)
	os.WriteFile(filepath.Join(base, "top/etc/motd"), []byte("top\n"), 0o644)
	os.WriteFile(filepath.Join(base, "bottom/usr/bin/tool"), []byte("#!/bin/sh\n"), 0o755)
	return base
}

func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func unmount(t *testing.T, dir string) {
	t.Helper()
	if err := syscall.Unmount(dir, 0); err != nil {
		t.Fatalf("umount %s: %v", dir, err)
	}
}

// TestMountsInTheBackground runs strata-overlay as podman runs
// fuse-overlayfs: it must return with the mount live, serve it from the
// background, keep changes in the upper in the kernel overlayfs's format,
// and go away at unmount.
func TestMountsInTheBackground(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	base := stack(t)
	mnt := filepath.Join(base, "mnt")
	cmd := exec.Command(overlayBin, "-o", "lowerdir=top:bottom,upperdir=upper,workdir=work,fsync=0", mnt)
	cmd.Dir = base // relative layer paths, as podman passes them
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("strata-overlay: %v\n%s", err, out)
	}
	t.Logf("mounted in %v", time.Since(start))
	if !isMounted(t, mnt) {
		t.Fatal("strata-overlay returned before the mount was live")
	}
	t.Cleanup(func() {
		if isMounted(t, mnt) {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	b, err := os.ReadFile(filepath.Join(mnt, "etc/motd"))
	if err != nil || string(b) != "top\n" {
		t.Fatalf("etc/motd = %q, %v; want the top layer's", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "etc/new"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "usr/bin/tool")); err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if !strings.Contains(string(mi), " "+mnt+" ") || !strings.Contains(string(mi), "fuse.strata-overlay") {
		t.Errorf("mountinfo does not show a fuse.strata-overlay mount at %s", mnt)
	}
	unmount(t, mnt)
	if b, err := os.ReadFile(filepath.Join(base, "upper/etc/new")); err != nil || string(b) != "new\n" {
		t.Errorf("upper/etc/new = %q, %v", b, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(base, "upper/usr/bin/tool"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Errorf("upper/usr/bin/tool is not a whiteout (char 0/0): %+v, %v", st, err)
	}
	// The server is gone once unmounted.
	deadline := time.Now().Add(5 * time.Second)
	for serverRunning(mnt) {
		if time.Now().After(deadline) {
			t.Fatal("strata-overlay still running after umount")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func serverRunning(mnt string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "strata-overlay") && strings.Contains(string(b), mnt) {
			return true
		}
	}
	return false
}

func TestReadOnlyWithoutUpper(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	base := stack(t)
	mnt := filepath.Join(base, "mnt")
	if out, err := exec.Command(overlayBin, "-o", "lowerdir="+base+"/top:"+base+"/bottom", mnt).CombinedOutput(); err != nil {
		t.Fatalf("strata-overlay: %v\n%s", err, out)
	}
	defer unmount(t, mnt)
	err := os.WriteFile(filepath.Join(mnt, "etc/x"), nil, 0o644)
	if pe, ok := err.(*os.PathError); !ok || pe.Err != syscall.EROFS {
		t.Errorf("write to a mount without upperdir: %v, want EROFS", err)
	}
}

// TestThroughMountFuse3 mounts with mount(8) and mount.fuse3. Installed,
// -t fuse.strata-overlay finds the program in mount's own PATH (which has
// /usr/local/bin); here the test names the binary it built, in the
// "PROGRAM#SOURCE" form of -t fuse, which mount.fuse3 runs the same way.
func TestThroughMountFuse3(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, "mount.fuse3")
	base := stack(t)
	mnt := filepath.Join(base, "mnt")
	cmd := exec.Command("mount", "-t", "fuse", "-o", "lowerdir="+base+"/top:"+base+"/bottom,upperdir="+base+"/upper,workdir="+base+"/work,nodev", overlayBin+"#overlay", mnt)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mount -t fuse.strata-overlay: %v\n%s", err, out)
	}
	defer unmount(t, mnt)
	if b, err := os.ReadFile(filepath.Join(mnt, "etc/motd")); err != nil || string(b) != "top\n" {
		t.Fatalf("etc/motd = %q, %v", b, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, " "+mnt+" ") && !strings.Contains(l, "nodev") {
			t.Errorf("nodev was not applied: %s", l)
		}
	}
}

// TestBadOptionsMountNothing: an unknown option is an error naming it,
// with nothing mounted.
func TestBadOptionsMountNothing(t *testing.T) {
	base := stack(t)
	mnt := filepath.Join(base, "mnt")
	for _, tc := range []struct {
		opts, want string
	}{
		{"lowerdir=" + base + "/top,frobnicate", `unknown option "frobnicate"`},
		{"lowerdir=" + base + "/missing", "lowerdir " + base + "/missing"},
		{"lowerdir=" + base + "/top,upperdir=" + base + "/upper,workdir=/proc/nope", "workdir"},
	} {
		out, err := exec.Command(overlayBin, "-o", tc.opts, mnt).CombinedOutput()
		if err == nil {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			t.Errorf("-o %s: mounted, want an error", tc.opts)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("-o %s: %s; want a message containing %q", tc.opts, out, tc.want)
		}
		if isMounted(t, mnt) {
			t.Errorf("-o %s: left a mount", tc.opts)
		}
	}
}

// TestKilledMidCopyUp kills the server (SIGKILL) while it copies a large
// lower file up, mounts the stack again, and checks that no partial copy
// shows: the file reads whole (the lower one, or the finished copy), the
// work directory's leftovers are cleared, and the upper holds nothing
// half-made.
func TestKilledMidCopyUp(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	base := stack(t)
	mnt := filepath.Join(base, "mnt")
	big := make([]byte, 256<<20)
	x := uint64(88172645463325252)
	for i := 0; i+8 <= len(big); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		for j := 0; j < 8; j++ {
			big[i+j] = byte(x >> (8 * j))
		}
	}
	if err := os.WriteFile(filepath.Join(base, "bottom/big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := "lowerdir=" + base + "/top:" + base + "/bottom,upperdir=" + base + "/upper,workdir=" + base + "/work"
	hit := false
	for attempt := 0; attempt < 5 && !hit; attempt++ {
		srv := exec.Command(overlayBin, "-f", "-o", opts, mnt)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		waitMounted(t, mnt)
		// Opening for writing copies the file up; kill the server while
		// the copy is staged in the work directory.
		opened := make(chan error, 1)
		go func() {
			f, err := os.OpenFile(filepath.Join(mnt, "big"), os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				f.Close()
			}
			opened <- err
		}()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if m, _ := filepath.Glob(filepath.Join(base, "work/strata/copyup-*")); len(m) > 0 {
				hit = true
				break
			}
			select {
			case <-opened:
				deadline = time.Now() // the copy finished before we saw it
			default:
			}
			time.Sleep(200 * time.Microsecond)
		}
		srv.Process.Kill()
		srv.Wait()
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		<-opened
		if !hit {
			// Start over from a clean upper: the copy-up completed.
			os.RemoveAll(filepath.Join(base, "upper/big"))
		}
	}
	if !hit {
		t.Fatal("never caught the server during a copy-up in 5 attempts")
	}
	srv := exec.Command(overlayBin, "-o", opts, mnt)
	if out, err := srv.CombinedOutput(); err != nil {
		t.Fatalf("remount: %v\n%s", err, out)
	}
	defer unmount(t, mnt)
	got, err := os.ReadFile(filepath.Join(mnt, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(big) || string(got) != string(big) {
		t.Fatalf("after the crash big reads %d bytes, not the %d of the lower file", len(got), len(big))
	}
	// (The copy may have been renamed into place just before the kill:
	// then the upper holds it whole, which the read above checked.)
	if m, _ := filepath.Glob(filepath.Join(base, "work/strata/*")); len(m) > 0 {
		t.Errorf("the work directory still holds %v after remount", m)
	}
	// And the file copies up fine now.
	if err := os.WriteFile(filepath.Join(mnt, "big"), []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func waitMounted(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !isMounted(t, dir) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not mounted after 10s", dir)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Where the upper's file system refuses char 0/0 whiteouts (a kernel
// overlayfs does: strata in a container whose root is one), the union's
// whiteouts are OCI .wh. files: the first whiteout finds that out. The
// union reads that form too, also when mounted again.
func TestWhiteoutsWhereCharDevicesAreRefused(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	base := stack(t)
	// The upper and work directories live on a kernel overlayfs.
	host := filepath.Join(base, "host")
	for _, d := range []string{"host", "hl", "hu", "hw"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", "lowerdir="+base+"/hl,upperdir="+base+"/hu,workdir="+base+"/hw", host).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("kernel overlayfs: %v %s", err, out))
	}
	defer syscall.Unmount(host, syscall.MNT_DETACH)
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(host, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mknod(filepath.Join(host, "probe"), syscall.S_IFCHR, 0); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("mknod of a whiteout on the kernel overlayfs: %v, want EPERM", err)
	}
	mnt := filepath.Join(base, "mnt")
	opts := "lowerdir=" + base + "/top:" + base + "/bottom,upperdir=" + host + "/upper,workdir=" + host + "/work"
	if out, err := exec.Command(overlayBin, "-o", opts, mnt).CombinedOutput(); err != nil {
		t.Fatalf("strata-overlay: %v\n%s", err, out)
	}
	if err := os.Remove(filepath.Join(mnt, "etc/motd")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "usr/bin/tool")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "usr/bin/tool"), []byte("new\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(host, "upper/etc/.wh.motd")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("upper etc/.wh.motd: %v, %v; want an OCI whiteout file", fi, err)
	}
	unmount(t, mnt)
	if out, err := exec.Command(overlayBin, "-o", opts, mnt).CombinedOutput(); err != nil {
		t.Fatalf("strata-overlay: %v\n%s", err, out)
	}
	defer unmount(t, mnt)
	if _, err := os.Lstat(filepath.Join(mnt, "etc/motd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("etc/motd after its .wh. whiteout, remounted: %v", err)
	}
	if names, err := os.ReadDir(filepath.Join(mnt, "etc")); err != nil || len(names) != 0 {
		t.Errorf("etc lists %v (%v), want nothing", names, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "usr/bin/tool")); err != nil || string(b) != "new\n" {
		t.Errorf("usr/bin/tool made again over its whiteout: %q, %v", b, err)
	}
}

// TestMountOptions: what /proc/mounts shows (SOURCE, fsname=, subtype=)
// and the mount flags asked for (ro with an upper, noexec, nosuid),
// with fuse-overlayfs's volatile and fstab's defaults accepted.
func TestMountOptions(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	base := stack(t)
	mnt := filepath.Join(base, "mnt")
	opts := "lowerdir=" + base + "/top:" + base + "/bottom,upperdir=" + base + "/upper,workdir=" + base + "/work," +
		"fsname=mystack,subtype=mytype,noexec,nosuid,volatile,defaults"
	if out, err := exec.Command(overlayBin, "-o", opts, "ignored-source", mnt).CombinedOutput(); err != nil {
		t.Fatalf("strata-overlay -o %s: %v\n%s", opts, err, out)
	}
	line := mountLine(t, mnt)
	f := strings.Fields(line)
	if len(f) < 4 || f[0] != "mystack" || f[2] != "fuse.mytype" || !strings.Contains(","+f[3]+",", ",noexec,") || !strings.Contains(","+f[3]+",", ",nosuid,") {
		t.Errorf("/proc/mounts: %q, want mystack, fuse.mytype, noexec and nosuid", line)
	}
	// noexec: a program in the mount does not run.
	if err := exec.Command(filepath.Join(mnt, "usr/bin/tool")).Run(); !errors.Is(err, syscall.EACCES) {
		t.Errorf("running a program on a noexec mount: %v, want EACCES", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "etc/new"), []byte("x"), 0o644); err != nil {
		t.Errorf("write with volatile: %v", err)
	}
	unmount(t, mnt)

	// ro with an upper directory: read-only all the same, as overlayfs.
	if out, err := exec.Command(overlayBin, "-o", "ro,lowerdir="+base+"/top:"+base+"/bottom,upperdir="+base+"/upper,workdir="+base+"/work", mnt).CombinedOutput(); err != nil {
		t.Fatalf("strata-overlay -o ro: %v\n%s", err, out)
	}
	defer unmount(t, mnt)
	if f := strings.Fields(mountLine(t, mnt)); len(f) < 4 || !strings.HasPrefix(f[3], "ro,") {
		t.Errorf("/proc/mounts of an ro mount: %v", f)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "etc/new")); err != nil || string(b) != "x" {
		t.Errorf("the upper's file through the ro mount: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "etc/other"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to an ro mount with an upper: %v, want EROFS", err)
	}
}

// mountLine is dir's line in /proc/mounts.
func mountLine(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			return l
		}
	}
	t.Fatalf("%s is not in /proc/mounts", dir)
	return ""
}
