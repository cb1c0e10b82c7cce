package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitFor polls the check until it holds or ten seconds pass.
func waitFor(t *testing.T, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestExec(t *testing.T) {
	root, ref := runImage(t)
	mustStrata(t, root, "run", "-d", "--name", "box", "-e", "FROM_RUN=r", "--pids-limit", "50", ref,
		"sh", "-c", "echo here > /tmp/mark; while :; do sleep 0.1; done")
	waitFor(t, "the container's first write", func() bool {
		return strata(t, root, "exec", "box", "cat", "/tmp/mark").stdout == "here\n"
	})
	// The same processes: PID 1 is the container's shell.
	out := mustStrata(t, root, "exec", "box", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo pid=$$; hostname")
	if !strings.HasPrefix(out, "sh -c echo here") || strings.Contains(out, "pid=1\n") {
		t.Errorf("exec does not see the container's processes:\n%s", out)
	}
	// The container's environment, user and working directory, and the
	// flags that change them.
	out = mustStrata(t, root, "exec", "box", "sh", "-c", "echo $FROM_IMAGE,$FROM_RUN,$PWD; id -u; grep CapEff /proc/self/status")
	if out != "yes,r,/srv/app\n0\nCapEff:\t00000000a80425fb\n" {
		t.Errorf("exec's defaults: %q", out)
	}
	out = mustStrata(t, root, "exec", "-e", "X=1", "-w", "/tmp", "-u", "nobody", "box", "sh", "-c", "echo $X,$PWD,$HOME; id -un; grep CapEff /proc/self/status")
	if out != "1,/tmp,/nonexistent\nnobody\nCapEff:\t0000000000000000\n" {
		t.Errorf("exec -e -w -u: %q", out)
	}
	// Standard input with -i.
	cmd := exec.Command(strataBin, "--root", root, "exec", "-i", "box", "tr", "a-z", "A-Z")
	cmd.Stdin = strings.NewReader("piped\n")
	if b, err := cmd.Output(); err != nil || string(b) != "PIPED\n" {
		t.Errorf("exec -i: %q %v", b, err)
	}
	// Exit codes as docker's.
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"box", "sh", "-c", "exit 3"}, 3, ""},
		{[]string{"box", "no-such-command"}, 127, "executable file not found"},
		{[]string{"box", "/etc/passwd"}, 126, "permission denied"},
		{[]string{"-u", "nobody-here", "box", "true"}, 125, "unable to find user nobody-here"},
		{[]string{"-w", "/no/such/dir", "box", "true"}, 126, "/no/such/dir"},
		{[]string{"-w", "relative", "box", "true"}, 125, "absolute"},
		{[]string{"no-such-box", "true"}, 125, "no such container"},
	} {
		if r := strata(t, root, append([]string{"exec"}, c.args...)...); r.code != c.code || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("exec %v: exit %d (want %d), stderr %q (want %q)", c.args, r.code, c.code, r.stderr, c.msg)
		}
	}
	// The exec'd process is in the container's cgroups: the host sees it
	// there, and the container's pids limit holds for it.
	mustStrata(t, root, "exec", "-d", "box", "sleep", "9731")
	id := strings.TrimSpace(mustStrata(t, root, "ps", "-q", "--no-trunc"))
	var sleeper int
	waitFor(t, "the detached exec", func() bool { sleeper = findProcess("sleep\x009731\x00"); return sleeper > 0 })
	if bad := outsideCgroups(sleeper, id); bad != "" {
		t.Errorf("exec'd process is not in the container's cgroups: %s", bad)
	}
	out = mustStrata(t, root, "exec", "box", "sh", "-c", "for i in $(seq 60); do sleep 5 & done 2>&1 | head -1; echo done")
	if !strings.Contains(out, "done") || !strings.Contains(strings.ToLower(out), "resource") && !strings.Contains(out, "fork") {
		t.Errorf("the pids limit does not hold for exec'd processes: %q", out)
	}
	// Paused and stopped containers refuse exec, leaving nothing behind.
	mustStrata(t, root, "pause", "box")
	if r := strata(t, root, "exec", "box", "true"); r.code != 125 || !strings.Contains(r.stderr, "paused") {
		t.Errorf("exec into a paused container: exit %d %s", r.code, r.stderr)
	}
	mustStrata(t, root, "unpause", "box")
	mustStrata(t, root, "kill", "box")
	mustStrata(t, root, "wait", "box")
	if r := strata(t, root, "exec", "box", "true"); r.code != 125 || !strings.Contains(r.stderr, "is not running") {
		t.Errorf("exec into a stopped container: exit %d %s", r.code, r.stderr)
	}
	if findProcess("sleep\x009731\x00") > 0 {
		t.Error("the exec'd process outlived its container")
	}
	mustStrata(t, root, "rm", "box")
}

// outsideCgroups names the cgroups of the process's threads that are not
// container id's ("" when all are): on v1 those of every controller
// strata uses, on v2 the unified one.
func outsideCgroups(pid int, id string) string {
	want := "/strata/" + id
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "cgroup"))
	if len(tasks) == 0 {
		return fmt.Sprintf("process %d is gone", pid)
	}
	var bad []string
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that ended
		}
		v1 := false
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) != 3 {
				continue
			}
			for _, ctl := range strings.Split(parts[1], ",") {
				switch ctl {
				case "memory", "cpu", "pids", "freezer":
					v1 = true
					if parts[2] != want {
						bad = append(bad, f+": "+line)
					}
				}
			}
		}
		if !v1 && !strings.Contains(string(b), "0::"+want+"\n") {
			bad = append(bad, f+": "+strings.TrimSpace(string(b)))
		}
	}
	return strings.Join(bad, "; ")
}

// findProcess finds a process by a part of its command line.
func findProcess(cmdline string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(b, []byte(cmdline)) {
			return pid
		}
	}
	return 0
}

func TestInit(t *testing.T) {
	root, ref := runImage(t)
	// The command is PID 1's child; an orphan is reaped, not left a zombie.
	script := `echo pid=$$; (sleep 0.2 &); sleep 1; ps -o pid,stat,comm; exit 3`
	r := strata(t, root, "run", "--rm", "--init", ref, "sh", "-c", script)
	if r.code != 3 {
		t.Errorf("--init: exit %d, want the command's 3\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stdout, "pid=1\n") || !strings.Contains(r.stdout, "strata-init") {
		t.Errorf("--init: the command is PID 1, or init is not:\n%s", r.stdout)
	}
	// The command and every thread of the reaping init are in the
	// container's cgroups (init's threads join while the command runs).
	sleeper := strings.TrimSpace(mustStrata(t, root, "run", "-d", "--init", ref, "sleep", "9732"))
	var cmdPid, initPid int
	waitFor(t, "the container's command", func() bool { cmdPid = findProcess("sleep\x009732\x00"); return cmdPid > 0 })
	if bad := outsideCgroups(cmdPid, sleeper); bad != "" {
		t.Errorf("--init: the command is not in the container's cgroups: %s", bad)
	}
	fmt.Sscanf(mustStrata(t, root, "inspect", "-f", "{{.State.Pid}}", sleeper), "%d", &initPid)
	waitFor(t, "init's threads in the container's cgroups", func() bool { return initPid > 0 && outsideCgroups(initPid, sleeper) == "" })
	mustStrata(t, root, "rm", "-f", sleeper)
	for _, line := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(line); len(f) == 3 && strings.HasPrefix(f[1], "Z") {
			t.Errorf("--init left a zombie: %q\n%s", line, r.stdout)
		}
	}
	// Signals reach the command through init.
	mustStrata(t, root, "run", "-d", "--init", "--name", "trap", ref, "sh", "-c", "trap 'exit 9' TERM; while :; do sleep 0.1; done")
	id := strings.TrimSpace(mustStrata(t, root, "ps", "-q", "--no-trunc"))
	// Init runs from a read-only mount of strata: nothing in the
	// container can write the host's binary through /proc/1/exe
	// (CVE-2019-5736), even once init has ended and the binary is no
	// longer busy.
	pid := findInit(t, root, id)
	exe, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	if f, err := os.OpenFile(filepath.Join("/proc", strconv.Itoa(pid), "exe"), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.ETXTBSY) {
		if err == nil {
			f.Close()
		}
		t.Errorf("opening init's executable for writing: %v, want EROFS or ETXTBSY", err)
	}
	mustStrata(t, root, "stop", "-t", "5", "trap")
	if out := mustStrata(t, root, "wait", "trap"); out != "9\n" {
		t.Errorf("stop through --init: exit %q, want the trap's 9", out)
	}
	mustStrata(t, root, "rm", "trap")
	if f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", exe.Fd()), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		if err == nil {
			f.Close()
		}
		t.Errorf("reopening init's executable for writing after it ended: %v, want EROFS", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), root) {
		t.Errorf("mounts left under %s", root)
	}
}

// findInit is the host PID of a running container's first process.
func findInit(t *testing.T, root, id string) int {
	var st struct{ Pid int }
	b, err := os.ReadFile(filepath.Join(root, "containers", id, "state.json"))
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil || st.Pid == 0 {
		t.Fatalf("state of %s: %s %v", id, b, err)
	}
	return st.Pid
}

// openPty opens a terminal pair of the host's /dev/pts.
func openPty(t *testing.T, rows, cols uint16) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// onTerminal runs strata with a terminal as its stdio and controlling
// terminal, as a user at a shell would.
func onTerminal(t *testing.T, slave *os.File, root string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(strataBin, append([]string{"--root", root}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// terminalReader collects what a terminal's master side shows.
type terminalReader struct {
	lines chan string
	all   bytes.Buffer
}

func readTerminal(master *os.File) *terminalReader {
	tr := &terminalReader{lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(master)
		for sc.Scan() {
			tr.lines <- strings.TrimRight(sc.Text(), "\r")
		}
		close(tr.lines)
	}()
	return tr
}

// expect waits for a line that contains want, and returns it.
func (tr *terminalReader) expect(t *testing.T, want string) string {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-tr.lines:
			if !ok {
				t.Fatalf("terminal closed before %q; it showed:\n%s", want, tr.all.String())
			}
			tr.all.WriteString(l + "\n")
			if strings.Contains(l, want) {
				return l
			}
		case <-timeout:
			t.Fatalf("no %q on the terminal; it showed:\n%s", want, tr.all.String())
		}
	}
}

func TestTerminal(t *testing.T) {
	root, ref := runImage(t)
	master, slave := openPty(t, 33, 77)
	script := `tty; stty size; echo ready; read line; echo "got=$line"; ` +
		`while [ "$(stty size)" != "40 100" ]; do sleep 0.05; done; echo resized; exit 5`
	cmd := onTerminal(t, slave, root, "run", "--rm", "-it", ref, "sh", "-c", script)
	tr := readTerminal(master)
	if l := tr.expect(t, "/dev/"); l != "/dev/pts/0" {
		t.Errorf("tty in the container: %q, want its own /dev/pts/0", l)
	}
	if l := tr.expect(t, " "); l != "33 77" {
		t.Errorf("terminal size in the container: %q, want 33 77", l)
	}
	tr.expect(t, "ready")
	// The user's terminal is raw: keys reach the container's terminal,
	// which does the echo and line editing.
	tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != 0 {
		t.Errorf("the user's terminal is not in raw mode: lflag %#x", tio.Lflag)
	}
	master.Write([]byte("hello\r"))
	tr.expect(t, "got=hello")
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 100}); err != nil {
		t.Fatal(err)
	}
	tr.expect(t, "resized")
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
		t.Errorf("run -it: %v, want exit 5", err)
	}
	tio, _ = unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if tio.Lflag&unix.ECHO == 0 {
		t.Error("the user's terminal was left raw")
	}
	if n := strings.Count(tr.all.String(), "hello"); n != 2 {
		t.Errorf("input echoed %d times (want once, plus got=): %q", n-1, tr.all.String())
	}

	// exec -t gets a terminal of the container's own, too.
	mustStrata(t, root, "run", "-d", "--name", "box", ref, "sleep", "9731")
	cmd = onTerminal(t, slave, root, "exec", "-t", "box", "sh", "-c", "tty; stty size; exit 4")
	if l := tr.expect(t, "/dev/"); l != "/dev/pts/0" {
		t.Errorf("exec -t: tty %q", l)
	}
	if l := tr.expect(t, " "); l != "40 100" {
		t.Errorf("exec -t: size %q", l)
	}
	if err := cmd.Wait(); err == nil || cmd.ProcessState.ExitCode() != 4 {
		t.Errorf("exec -t: %v, want exit 4", err)
	}
	mustStrata(t, root, "rm", "-f", "box")
}
