package runtime

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// specProtocol numbers the form of Spec and of the descriptors init is
// given: change it with either.
const specProtocol = 5

// Spec is everything the container's first process needs: the monitor
// hands it to the init process over a pipe.
type Spec struct {
	// Protocol is specProtocol of the strata that wrote the spec: init
	// may be a strata-init of another build, which must refuse a spec it
	// may not read right.
	Protocol int `json:"protocol"`
	// Rootfs is the host path of the root filesystem: init mounts it
	// there (RootfsMount), or it is mounted already.
	Rootfs string `json:"rootfs"`
	// RootfsMount, when set, is how init mounts the root filesystem, in
	// the container's own mount namespace, from the descriptor it is
	// given (rootfsFd).
	RootfsMount *DeviceMount `json:"rootfsMount,omitempty"`
	Args        []string     `json:"args"`
	Env         []string     `json:"env"`
	// Cwd is created when missing, as Docker does for WorkingDir.
	Cwd string `json:"cwd"`
	// User is "", NAME, UID, or either with ":GROUP|GID", resolved through
	// the container's own /etc/passwd and /etc/group.
	User     string `json:"user,omitempty"`
	Hostname string `json:"hostname"`
	// Network is "none" (own namespace, lo up) or "host".
	Network        string  `json:"network"`
	ReadonlyRootfs bool    `json:"readonlyRootfs,omitempty"`
	Mounts         []Mount `json:"mounts,omitempty"`
	// Capabilities is the full set the process keeps, as "CAP_NAME".
	Capabilities []string `json:"capabilities"`
	Privileged   bool     `json:"privileged,omitempty"`
	// Init runs a reaping init as PID 1 with the command as its child.
	Init bool `json:"init,omitempty"`
	// Tty gives the process a terminal of the container's own /dev/pts as
	// descriptors 0-2 and controlling terminal.
	Tty bool `json:"tty,omitempty"`
	// ConsoleSize is the terminal's size at start, when known.
	ConsoleSize *ConsoleSize `json:"consoleSize,omitempty"`
	// Join starts the process in the namespaces of a running container
	// (exec) instead of setting up new ones.
	Join bool `json:"join,omitempty"`
	// CgroupTasks are host paths of the v1 cgroup tasks files init's
	// thread enters the container's cgroups by, itself, before the
	// command starts (see Cgroup.placement); without them the starter
	// places init.
	CgroupTasks []string `json:"cgroupTasks,omitempty"`
	// ShmSize is /dev/shm's size in bytes (0: docker's 64 MiB).
	ShmSize int64 `json:"shmSize,omitempty"`
	// Rlimits are set before the command starts (--ulimit).
	Rlimits []Rlimit `json:"rlimits,omitempty"`
	// Files are written over paths of the container (hostname, hosts,
	// resolv.conf): host path → container path, bind-mounted.
	Files []Mount `json:"files,omitempty"`
}

// DeviceMount is mount(2)'s arguments for a file system mounted from a
// device descriptor; Data has %d where the descriptor's number goes.
type DeviceMount struct {
	Source string  `json:"source"`
	FSType string  `json:"fstype"`
	Flags  uintptr `json:"flags"`
	Data   string  `json:"data"`
	// Attach: the monitor made the mount, attached nowhere, and sent it
	// with the spec (detachedMount); init attaches it.
	Attach bool `json:"attach,omitempty"`
}

// ConsoleSize is a terminal's size in characters.
type ConsoleSize struct {
	Height uint16 `json:"height"`
	Width  uint16 `json:"width"`
}

// Mount is one mount into the container.
type Mount struct {
	// Type is "bind" or "tmpfs".
	Type        string `json:"type"`
	Source      string `json:"source,omitempty"`
	Destination string `json:"destination"`
	ReadOnly    bool   `json:"readOnly,omitempty"`
	// Data is tmpfs's options (size=…,mode=…).
	Data string `json:"data,omitempty"`
	// CopyUp fills an empty volume with the image's content at
	// Destination before it is mounted, as docker does.
	CopyUp bool `json:"copyUp,omitempty"`
}

// DefaultCapabilities is Docker's default set.
func DefaultCapabilities() []string {
	return []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
		"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
		"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
}

// capNames maps capability names to numbers (linux/capability.h).
var capNames = map[string]int{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
	"KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
	"NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
	"IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
	"SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21,
	"SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
	"SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
	"AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33,
	"SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37,
	"PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

// AllCapabilities are what --privileged gives: every capability this
// kernel has that the calling process's bounding set holds, since a
// process can give no other (containerd's WithAllCurrentCapabilities).
func AllCapabilities() []string {
	var out []string
	for n, v := range capNames {
		if bounded(v) {
			out = append(out, "CAP_"+n)
		}
	}
	slices.Sort(out)
	return out
}

// bounded tells whether capability c is in the calling process's bounding
// set (false too for one this kernel does not know).
func bounded(c int) bool {
	in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
	return err == nil && in == 1
}

// Capabilities applies --cap-add and --cap-drop (names with or without
// CAP_, any case, "ALL") to base, as docker does: drop first, then add.
func Capabilities(base, add, drop []string) ([]string, error) {
	norm := func(list []string) ([]string, bool, error) {
		var out []string
		all := false
		for _, c := range list {
			c = strings.ToUpper(strings.TrimSpace(c))
			if c == "ALL" {
				all = true
				continue
			}
			c = strings.TrimPrefix(c, "CAP_")
			if _, ok := capNames[c]; !ok {
				return nil, false, fmt.Errorf("unknown capability %q", c)
			}
			out = append(out, "CAP_"+c)
		}
		return out, all, nil
	}
	adds, addAll, err := norm(add)
	if err != nil {
		return nil, err
	}
	drops, dropAll, err := norm(drop)
	if err != nil {
		return nil, err
	}
	// What the bounding set lacks is left out of base (docker's
	// defaults on a host that withholds some), and refused when asked for.
	var out []string
	if !dropAll {
		for _, c := range base {
			if !slices.Contains(drops, c) && bounded(capNames[strings.TrimPrefix(c, "CAP_")]) {
				out = append(out, c)
			}
		}
	}
	if addAll {
		return AllCapabilities(), nil
	}
	for _, c := range adds {
		if !bounded(capNames[strings.TrimPrefix(c, "CAP_")]) {
			return nil, fmt.Errorf("capability %s: strata does not hold it (not in its bounding set), so no container it starts can have it", c)
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out, nil
}

// MaskedPaths are hidden from a container that is not privileged (Docker's
// list): files by /dev/null, directories by an empty read-only tmpfs.
func MaskedPaths() []string {
	return []string{
		"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
		"/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
	}
}

// ReadonlyPaths are made read-only in a container that is not privileged.
func ReadonlyPaths() []string {
	return []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
}

// CheckDestination refuses container paths that are not absolute or that
// name the root.
func CheckDestination(p string) error {
	if !path.IsAbs(p) {
		return fmt.Errorf("invalid mount path %q: must be absolute", p)
	}
	if path.Clean(p) == "/" {
		return fmt.Errorf("invalid mount path %q: cannot mount over the root", p)
	}
	return nil
}

// Rlimit is one resource limit, by docker's --ulimit name.
type Rlimit struct {
	Name string `json:"name"`
	Soft uint64 `json:"soft"`
	Hard uint64 `json:"hard"`
}

// rlimitResource is the resource of a --ulimit name, as docker names
// them (ulimitNames).
func rlimitResource(name string) (int, bool) {
	r, ok := map[string]int{
		"as": unix.RLIMIT_AS, "core": unix.RLIMIT_CORE, "cpu": unix.RLIMIT_CPU, "data": unix.RLIMIT_DATA,
		"fsize": unix.RLIMIT_FSIZE, "locks": unix.RLIMIT_LOCKS, "memlock": unix.RLIMIT_MEMLOCK,
		"msgqueue": unix.RLIMIT_MSGQUEUE, "nice": unix.RLIMIT_NICE, "nofile": unix.RLIMIT_NOFILE,
		"nproc": unix.RLIMIT_NPROC, "rss": unix.RLIMIT_RSS, "rtprio": unix.RLIMIT_RTPRIO,
		"rttime": unix.RLIMIT_RTTIME, "sigpending": unix.RLIMIT_SIGPENDING, "stack": unix.RLIMIT_STACK,
	}[name]
	return r, ok
}

const ulimitNames = "as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack"

// ParseUlimit reads docker's --ulimit NAME=SOFT[:HARD] (-1: unlimited).
func ParseUlimit(s string) (Rlimit, error) {
	name, val, ok := strings.Cut(s, "=")
	if _, known := rlimitResource(name); !ok || !known {
		return Rlimit{}, fmt.Errorf("invalid --ulimit %q: want NAME=SOFT[:HARD], NAME one of %s", s, ulimitNames)
	}
	soft, hard, hasHard := strings.Cut(val, ":")
	if !hasHard {
		hard = soft
	}
	parse := func(v string) (uint64, error) {
		if v == "-1" {
			return unix.RLIM_INFINITY, nil
		}
		return strconv.ParseUint(v, 10, 64)
	}
	r := Rlimit{Name: name}
	var err1, err2 error
	r.Soft, err1 = parse(soft)
	r.Hard, err2 = parse(hard)
	if err1 != nil || err2 != nil {
		return Rlimit{}, fmt.Errorf("invalid --ulimit %q: limits are numbers or -1", s)
	}
	if r.Soft > r.Hard {
		return Rlimit{}, fmt.Errorf("invalid --ulimit %q: the soft limit is above the hard one", s)
	}
	return r, nil
}
