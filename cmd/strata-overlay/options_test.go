package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseArgs(t *testing.T) {
	t.Chdir(t.TempDir())
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	var c *cmdline
	c, err = parseArgs([]string{"-o", "lowerdir=/l/top:rel/mid:/l/a\\:b,upperdir=/u,workdir=w", "-o", "fsync=0,timeout=2.5,nosuid,noatime,fast_ino=1,x-systemd.automount,context=\"system_u:object_r:container_file_t:s0\"", "overlay", "mnt"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/l/top", cwd + "/rel/mid", "/l/a:b"}
	if strings.Join(c.lower, "|") != strings.Join(want, "|") {
		t.Errorf("lower = %q, want %q", c.lower, want)
	}
	if c.upper != "/u" || c.work != cwd+"/w" || c.mountpoint != cwd+"/mnt" || c.source != "overlay" {
		t.Errorf("upper %q work %q mountpoint %q source %q", c.upper, c.work, c.mountpoint, c.source)
	}
	if !c.noSync || c.timeout != 2500*time.Millisecond || c.foreground {
		t.Errorf("noSync %v timeout %v foreground %v", c.noSync, c.timeout, c.foreground)
	}
	if got := strings.Join(c.kernel, ","); got != `nosuid,noatime,context="system_u:object_r:container_file_t:s0"` {
		t.Errorf("kernel options %q", got)
	}
	// As mount.fuse3 calls it: options after the positional arguments.
	c, err = parseArgs([]string{"src", "/mnt", "-o", "rw,lowerdir=/a", "-f"})
	if err != nil || !c.foreground || c.mountpoint != "/mnt" || len(c.lower) != 1 || c.upper != "" {
		t.Errorf("mount.fuse3 form: %+v, %v", c, err)
	}
}

func TestParseArgsRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "lowerdir=/a,bogus=1", "/mnt"}, `unknown option "bogus=1"`},
		{[]string{"-o", "lowerdir=/a,nosuchflag", "/mnt"}, `unknown option "nosuchflag"`},
		{[]string{"-o", "lowerdir=/a,uidmapping=0:1000:1", "/mnt"}, "uidmapping is not supported"},
		{[]string{"-o", "lowerdir=/a,upperdir=/u", "/mnt"}, "upperdir and workdir go together"},
		{[]string{"-o", "upperdir=/u,workdir=/w", "/mnt"}, "no lowerdir"},
		{[]string{"-o", "lowerdir=/a::/b", "/mnt"}, "empty directory"},
		{[]string{"-o", "lowerdir=/a,fsync=2", "/mnt"}, "fsync=0 or fsync=1"},
		{[]string{"-o", "lowerdir=/a,timeout=soon", "/mnt"}, "want seconds"},
		{[]string{"-o", "lowerdir=/a,xattr_permissions=1", "/mnt"}, "only 0 is supported"},
		{[]string{"-o", "lowerdir=/a"}, "want [SOURCE] MOUNTPOINT"},
		{[]string{"-o", "lowerdir=/a", "a", "b", "c"}, "want [SOURCE] MOUNTPOINT"},
		{[]string{"--bogus", "/mnt"}, "unknown flag"},
	} {
		_, err := parseArgs(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
