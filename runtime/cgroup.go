package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Resources are a container's limits; zero means none.
type Resources struct {
	Memory    int64   `json:"memory,omitempty"` // bytes
	CPUs      float64 `json:"cpus,omitempty"`
	PidsLimit int64   `json:"pidsLimit,omitempty"`
}

// Cgroup is a container's control groups: one directory in the unified
// (v2) hierarchy when the host has one with controllers, else one per v1
// controller (this machine has both: v1 controllers and an empty v2).
type Cgroup struct {
	v2    string            // the v2 directory, when unified
	dirs  map[string]string // v1: controller → directory
	limit Resources
}

const cgroupRoot = "/sys/fs/cgroup"

// v1Controllers are the v1 controllers strata puts a container in.
func v1Controllers() []string { return []string{"memory", "cpu", "pids", "freezer"} }

// NewCgroup makes the cgroups of container id, under "strata/", with the
// limits set.
func NewCgroup(id string, r Resources) (*Cgroup, error) {
	return newCgroupAt(cgroupRoot, id, r)
}

func newCgroupAt(root, id string, r Resources) (*Cgroup, error) {
	c := &Cgroup{limit: r}
	if isCgroup2(root) {
		if err := c.makeV2(root, id); err != nil {
			c.Remove()
			return nil, err
		}
		return c, nil
	}
	if err := c.makeV1(root, id); err != nil {
		c.Remove()
		return nil, err
	}
	return c, nil
}

func writeFile(p, v string) error {
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", v, p, err)
	}
	return nil
}

func (c *Cgroup) makeV2(root, id string) error {
	parent := filepath.Join(root, "strata")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	// Controllers must be enabled in every ancestor's subtree.
	for _, dir := range []string{root, parent} {
		avail, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		for _, ctl := range []string{"cpu", "memory", "pids"} {
			if slices.Contains(strings.Fields(string(avail)), ctl) {
				os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0o644)
			}
		}
	}
	c.v2 = filepath.Join(parent, id)
	if err := os.Mkdir(c.v2, 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("cgroup: %w", err)
	}
	r := c.limit
	if r.Memory > 0 {
		if err := writeFile(filepath.Join(c.v2, "memory.max"), strconv.FormatInt(r.Memory, 10)); err != nil {
			return err
		}
		// Swap no more than docker allows by default (as much as memory).
		os.WriteFile(filepath.Join(c.v2, "memory.swap.max"), []byte(strconv.FormatInt(r.Memory, 10)), 0o644)
	}
	if r.CPUs > 0 {
		if err := writeFile(filepath.Join(c.v2, "cpu.max"), fmt.Sprintf("%d 100000", int64(r.CPUs*100000))); err != nil {
			return err
		}
	}
	if r.PidsLimit > 0 {
		if err := writeFile(filepath.Join(c.v2, "pids.max"), strconv.FormatInt(r.PidsLimit, 10)); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cgroup) makeV1(root, id string) error {
	c.dirs = map[string]string{}
	for _, ctl := range v1Controllers() {
		base := filepath.Join(root, ctl)
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			continue // controller not mounted
		}
		dir := filepath.Join(base, "strata", id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
		c.dirs[ctl] = dir
	}
	r := c.limit
	need := func(ctl, flag string) (string, error) {
		d, ok := c.dirs[ctl]
		if !ok {
			return "", fmt.Errorf("cgroup: %s needs the %s controller, which this host has not mounted", flag, ctl)
		}
		return d, nil
	}
	if r.Memory > 0 {
		d, err := need("memory", "--memory")
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(d, "memory.limit_in_bytes"), strconv.FormatInt(r.Memory, 10)); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(d, "memory.memsw.limit_in_bytes")); err == nil {
			os.WriteFile(filepath.Join(d, "memory.memsw.limit_in_bytes"), []byte(strconv.FormatInt(2*r.Memory, 10)), 0o644)
		}
	}
	if r.CPUs > 0 {
		d, err := need("cpu", "--cpus")
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(d, "cpu.cfs_period_us"), "100000"); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(d, "cpu.cfs_quota_us"), strconv.FormatInt(int64(r.CPUs*100000), 10)); err != nil {
			return err
		}
	}
	if r.PidsLimit > 0 {
		d, err := need("pids", "--pids-limit")
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(d, "pids.max"), strconv.FormatInt(r.PidsLimit, 10)); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cgroup) all() []string {
	if c.v2 != "" {
		return []string{c.v2}
	}
	var out []string
	for _, d := range c.dirs {
		out = append(out, d)
	}
	return out
}

// placement is how a new process enters the cgroups. On v1: tasks, the
// files its thread writes "0" to, moving itself alone — which skips the
// lock the move of a whole process takes, a lock that on a v1 host waits
// for an RCU grace period (6-12 ms here) when it has not been taken
// lately, and holds every other cgroup change meanwhile. Else place,
// which the starter calls with its PID (Add).
func (c *Cgroup) placement() (tasks []string, place func(pid int) error) {
	if c.v2 != "" || len(c.dirs) == 0 {
		return nil, c.Add
	}
	for _, d := range c.dirs {
		tasks = append(tasks, filepath.Join(d, "tasks"))
	}
	return tasks, nil
}

// Add puts a process into the cgroups.
func (c *Cgroup) Add(pid int) error {
	for _, d := range c.all() {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// Freeze stops (or with false, resumes) every process of the container.
func (c *Cgroup) Freeze(freeze bool) error {
	if c.v2 != "" {
		v := "0"
		if freeze {
			v = "1"
		}
		return writeFile(filepath.Join(c.v2, "cgroup.freeze"), v)
	}
	d, ok := c.dirs["freezer"]
	if !ok {
		return errors.New("cgroup: pause needs the freezer controller, which this host has not mounted")
	}
	v := "THAWED"
	if freeze {
		v = "FROZEN"
	}
	return writeFile(filepath.Join(d, "freezer.state"), v)
}

// OOMKilled tells whether the kernel killed a process for exceeding the
// memory limit.
func (c *Cgroup) OOMKilled() bool {
	var p, key string
	if c.v2 != "" {
		p, key = filepath.Join(c.v2, "memory.events"), "oom_kill"
	} else if d, ok := c.dirs["memory"]; ok {
		p, key = filepath.Join(d, "memory.oom_control"), "oom_kill"
	} else {
		return false
	}
	b, _ := os.ReadFile(p)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == key && f[1] != "0" {
			return true
		}
	}
	return false
}

// Remove deletes the cgroups once their processes are gone.
func (c *Cgroup) Remove() {
	for _, d := range c.all() {
		for i := 0; i < 50; i++ {
			if err := os.Remove(d); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Pids are the processes in the cgroups (their thread group IDs), as the
// first of them lists them: all list the same.
func (c *Cgroup) Pids() ([]int, error) {
	dirs := c.all()
	if len(dirs) == 0 {
		return nil, errors.New("cgroup: the container has none")
	}
	slices.Sort(dirs)
	b, err := os.ReadFile(filepath.Join(dirs[0], "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// OpenCgroup finds the cgroups NewCgroup made for id, for pause and
// unpause from another process.
func OpenCgroup(id string) *Cgroup {
	c := &Cgroup{}
	if isCgroup2(cgroupRoot) {
		c.v2 = filepath.Join(cgroupRoot, "strata", id)
		return c
	}
	c.dirs = map[string]string{}
	for _, ctl := range v1Controllers() {
		d := filepath.Join(cgroupRoot, ctl, "strata", id)
		if _, err := os.Stat(d); err == nil {
			c.dirs[ctl] = d
		}
	}
	return c
}
