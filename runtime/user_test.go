package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestLookupUser(t *testing.T) {
	users := parsePasswd(strings.NewReader("root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:100::/home/bob:/bin/sh\n"))
	groups := parseGroup(strings.NewReader("root:x:0:\nusers:x:100:alice\nwheel:x:10:alice,bob\nalice:x:1000:\n"))
	for _, c := range []struct {
		spec             string
		uid, gid         int
		groups           []int
		home, errContain string
	}{
		{"", 0, 0, []int{}, "/root", ""},
		{"alice", 1000, 1000, []int{100, 10}, "/home/alice", ""},
		{"bob", 1001, 100, []int{10}, "/home/bob", ""},
		{"1000", 1000, 1000, []int{100, 10}, "/home/alice", ""},
		{"4242", 4242, 0, []int{}, "/", ""},
		{"4242:4343", 4242, 4343, []int{}, "/", ""},
		{"alice:wheel", 1000, 10, []int{}, "/home/alice", ""},
		{"carol", 0, 0, nil, "", "unable to find user carol"},
		{"alice:nogroup", 0, 0, nil, "", "unable to find group nogroup"},
		{"-1", 0, 0, nil, "", "invalid user"},
	} {
		u, err := lookupUser(c.spec, users, groups)
		if c.errContain != "" {
			if err == nil || !strings.Contains(err.Error(), c.errContain) {
				t.Errorf("%q: error %v, want %q", c.spec, err, c.errContain)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.spec, err)
			continue
		}
		if u.uid != c.uid || u.gid != c.gid || !slices.Equal(u.groups, c.groups) || u.home != c.home {
			t.Errorf("%q: got %d:%d %v %s, want %d:%d %v %s", c.spec, u.uid, u.gid, u.groups, u.home, c.uid, c.gid, c.groups, c.home)
		}
	}
}

func TestCapabilities(t *testing.T) {
	got, err := Capabilities(DefaultCapabilities(), []string{"sys_admin", "CAP_NET_ADMIN"}, []string{"chown", "CAP_KILL"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETUID"} {
		if !slices.Contains(got, c) {
			t.Errorf("missing %s in %v", c, got)
		}
	}
	for _, c := range []string{"CAP_CHOWN", "CAP_KILL"} {
		if slices.Contains(got, c) {
			t.Errorf("%s not dropped: %v", c, got)
		}
	}
	if got, _ := Capabilities(DefaultCapabilities(), []string{"NET_ADMIN"}, []string{"ALL"}); !slices.Equal(got, []string{"CAP_NET_ADMIN"}) {
		t.Errorf("drop ALL, add NET_ADMIN: %v", got)
	}
	if _, err := Capabilities(nil, []string{"CAP_FLY"}, nil); err == nil || !strings.Contains(err.Error(), "FLY") {
		t.Errorf("unknown capability: %v", err)
	}
}

func TestContainerEnv(t *testing.T) {
	env := containerEnv([]string{"A=1"}, "h", "/root")
	want := []string{"PATH=" + DefaultPath, "A=1", "HOSTNAME=h", "HOME=/root"}
	if !slices.Equal(env, want) {
		t.Errorf("got %v, want %v", env, want)
	}
	env = containerEnv([]string{"PATH=/x", "HOME=/h"}, "h", "/root")
	if !slices.Equal(env, []string{"PATH=/x", "HOME=/h", "HOSTNAME=h"}) {
		t.Errorf("image values kept: %v", env)
	}
}

func TestParseSignal(t *testing.T) {
	for s, want := range map[string]int{"KILL": 9, "sigterm": 15, "SIGUSR1": 10, "2": 2} {
		if got, err := ParseSignal(s); err != nil || int(got) != want {
			t.Errorf("%s: %d %v", s, got, err)
		}
	}
	for _, s := range []string{"", "NOPE", "0", "99"} {
		if _, err := ParseSignal(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// lookPath finds the command as exec will from the working directory the
// command gets, which is not init's own when it looks.
func TestLookPathFromWorkingDirectory(t *testing.T) {
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	cwd := t.TempDir()
	if err := os.MkdirAll(filepath.Join(cwd, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cwd, "bin", "prog"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cwd, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, path, want string
		code             int
	}{
		{"prog", "/nonexistent:bin", "./bin/prog", 0},
		{"prog", ":/nonexistent", "", 127}, // "" is the working directory, which has no prog
		{"bin/prog", "", "bin/prog", 0},
		{"sh", "/nonexistent:/bin", "/bin/sh", 0},
		{"/bin/sh", "", "/bin/sh", 0},
		{"data", ".", "", 127}, // not executable
		{"./missing", "", "", 127},
	} {
		got, err := lookPath(c.name, c.path, cwd, root)
		code := 0
		var ie *InitError
		if errors.As(err, &ie) {
			code = ie.Code
		} else if err != nil {
			code = -1
		}
		if got != c.want || code != c.code {
			t.Errorf("lookPath(%q, PATH=%q) = %q, %v (code %d), want %q, code %d", c.name, c.path, got, err, code, c.want, c.code)
		}
	}
}

// The user and the command are looked up before the container's mounts
// are made only when no mount covers what the lookup reads.
func TestResolvableEarly(t *testing.T) {
	files := []Mount{{Type: "bind", Destination: "/etc/hostname"}, {Type: "bind", Destination: "/etc/hosts"}}
	for _, c := range []struct {
		name  string
		spec  Spec
		early bool
	}{
		{"plain", Spec{Args: []string{"true"}, Files: files}, true},
		{"a volume elsewhere", Spec{Args: []string{"sh"}, Mounts: []Mount{{Destination: "/data"}}}, true},
		{"a volume on /etc", Spec{Args: []string{"true"}, Mounts: []Mount{{Destination: "/etc"}}}, false},
		{"a bind on /etc/passwd", Spec{Args: []string{"true"}, Mounts: []Mount{{Destination: "/etc/passwd"}}}, false},
		{"a volume on a PATH directory", Spec{Args: []string{"tool"}, Mounts: []Mount{{Destination: "/usr/local/bin"}}}, false},
		{"a volume on /usr", Spec{Args: []string{"tool"}, Mounts: []Mount{{Destination: "/usr"}}}, false},
		{"a volume on the command", Spec{Args: []string{"/opt/app/run"}, Mounts: []Mount{{Destination: "/opt/app"}}}, false},
		{"the working directory a volume", Spec{Args: []string{"./run"}, Cwd: "/work", Mounts: []Mount{{Destination: "/work"}}}, false},
		{"PATH in /proc", Spec{Args: []string{"x"}, Env: []string{"PATH=/proc/self"}}, false},
	} {
		if got := resolvableEarly(&c.spec); got != c.early {
			t.Errorf("%s: resolvableEarly = %v, want %v", c.name, got, c.early)
		}
	}
}
