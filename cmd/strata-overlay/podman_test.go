package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/internal/testimage"
	"github.com/stratafs/strata/internal/testregistry"
)

// TestPodmanMountProgram runs containers with podman, its overlay driver
// using strata-overlay as mount_program the way it uses fuse-overlayfs:
// the container's root is a strata-overlay mount, changes stay in the
// container, and a second container starts from the image again.
func TestPodmanMountProgram(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	testenv.RequireBinary(t, "podman")
	testenv.RequireBinary(t, "runc")
	testenv.RequireBinary(t, "busybox")
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("test/busybox:latest")
	if err := testimage.Push(context.Background(), ref, img); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	// runc copes with this machine's hybrid cgroups where crun does not;
	// podman's default rlimits exceed what a test may raise them to.
	podman := func(args ...string) (string, error) {
		global := []string{"--root", filepath.Join(base, "root"), "--runroot", filepath.Join(base, "run"),
			"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
			"--storage-driver", "overlay", "--storage-opt", "overlay.mount_program=" + overlayBin}
		if args[0] == "run" {
			args = append([]string{"run", "--rm", "--network", "none",
				"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}, args[1:]...)
		}
		cmd := exec.Command("podman", append(global, args...)...)
		cmd.Env = append(os.Environ(), "CONTAINERS_CONF=/dev/null", "CONTAINERS_REGISTRIES_CONF=/dev/null")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { podman("system", "reset", "--force") })
	if out, err := podman("pull", "--tls-verify=false", ref); err != nil {
		t.Fatalf("podman pull: %v\n%s", err, out)
	}
	out, err := podman("run", ref, "sh", "-c", `grep " / " /proc/mounts; echo changed > /etc/os-release; rm /etc/group; cat /etc/os-release; ls /etc/group 2>&1; true`)
	if err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.Contains(lines[0], "fuse.strata-overlay") {
		t.Errorf("the container's root is not a strata-overlay mount: %s", lines[0])
	}
	if !strings.Contains(out, "changed\n") || !strings.Contains(out, "No such file") {
		t.Errorf("changes in the container did not show:\n%s", out)
	}
	again, err := podman("run", ref, "sh", "-c", "cat /etc/os-release; ls /etc/group")
	if err != nil {
		t.Fatalf("second podman run: %v\n%s", err, again)
	}
	if strings.Contains(again, "changed") || !strings.Contains(again, "/etc/group") {
		t.Errorf("a new container saw the last one's changes:\n%s", again)
	}
}
