package fusefs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/testenv"
	"github.com/stratafs/strata/layertree"
)

// op is one step of a differential case, run on a mounted union's root.
type op struct {
	desc string
	do   func(root string) error
}

func write(p, data string) op {
	return op{"write " + p, func(r string) error { return os.WriteFile(filepath.Join(r, p), []byte(data), 0o644) }}
}
func appendTo(p, data string) op {
	return op{"append " + p, func(r string) error {
		f, err := os.OpenFile(filepath.Join(r, p), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(data)
		f.Close()
		return err
	}}
}
func rm(p string) op {
	return op{"unlink " + p, func(r string) error { return os.Remove(filepath.Join(r, p)) }}
}
func rmdir(p string) op {
	return op{"rmdir " + p, func(r string) error { return unix.Rmdir(filepath.Join(r, p)) }}
}
func unlinkF(p string) op {
	return op{"unlink(2) " + p, func(r string) error { return unix.Unlink(filepath.Join(r, p)) }}
}
func mkdir(p string) op {
	return op{"mkdir " + p, func(r string) error { return os.Mkdir(filepath.Join(r, p), 0o750) }}
}
func rmAll(p string) op {
	return op{"rm -r " + p, func(r string) error { return os.RemoveAll(filepath.Join(r, p)) }}
}
func chmod(p string, m os.FileMode) op {
	return op{fmt.Sprintf("chmod %o %s", m, p), func(r string) error { return os.Chmod(filepath.Join(r, p), m) }}
}
func chown(p string, uid, gid int) op {
	return op{"chown " + p, func(r string) error { return os.Lchown(filepath.Join(r, p), uid, gid) }}
}
func truncate(p string, n int64) op {
	return op{"truncate " + p, func(r string) error { return os.Truncate(filepath.Join(r, p), n) }}
}
func rename(a, b string, flags uint) op {
	return op{fmt.Sprintf("rename %s %s %d", a, b, flags), func(r string) error {
		return unix.Renameat2(unix.AT_FDCWD, filepath.Join(r, a), unix.AT_FDCWD, filepath.Join(r, b), flags)
	}}
}
func link(a, b string) op {
	return op{"link " + a + " " + b, func(r string) error { return os.Link(filepath.Join(r, a), filepath.Join(r, b)) }}
}
func symlink(target, p string) op {
	return op{"symlink " + p, func(r string) error { return os.Symlink(target, filepath.Join(r, p)) }}
}
func mkfifo(p string) op {
	return op{"mkfifo " + p, func(r string) error { return unix.Mkfifo(filepath.Join(r, p), 0o640) }}
}
func setxattr(p, k, v string) op {
	return op{"setxattr " + p, func(r string) error { return unix.Lsetxattr(filepath.Join(r, p), k, []byte(v), 0) }}
}
func rmxattr(p, k string) op {
	return op{"removexattr " + p, func(r string) error { return unix.Lremovexattr(filepath.Join(r, p), k) }}
}

// openTrunc opens p with O_TRUNC and flags, and closes it.
func openTrunc(p string, flags int) op {
	return op{fmt.Sprintf("open %s O_TRUNC|%#x", p, flags), func(r string) error {
		fd, err := unix.Open(filepath.Join(r, p), flags|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}}
}

// truncateWhileOpen truncates p by name while a read-only descriptor of
// it is open.
func truncateWhileOpen(p string, n int64) op {
	return op{"truncate " + p + " with a read-only open", func(r string) error {
		f, err := os.Open(filepath.Join(r, p))
		if err != nil {
			return err
		}
		defer f.Close()
		return os.Truncate(filepath.Join(r, p), n)
	}}
}

var diffCases = []struct {
	name string
	ops  []op
}{
	{"copy-up on write", []op{write("etc/motd", "changed\n"), appendTo("opt/app/data.txt", "more\n"), write("opt/app/big", "small now")}},
	{"metadata copy-up", []op{chmod("opt/app/data.txt", 0o600), chown("etc/motd", 1000, 50), truncate("opt/app/h1", 2), setxattr("etc/passwd", "user.note", "x"), rmxattr("opt/app/cap-bin", "user.origin"), chmod("opt/app", 0o700)}},
	{"unlink and recreate", []op{rm("etc/motd"), write("etc/motd", "again\n"), rm("etc/motd"), rm("etc/motd"), rm("opt/app/rel"), rm("opt/app/fifo")}},
	{"rmdir", []op{rmdir("opt/app/config"), rm("opt/app/config/c.conf"), rmdir("opt/app/config"), rmdir("opt/app/config"), mkdir("opt/app/config"), write("opt/app/config/d.conf", "d")}},
	{"rmdir of a file and unlink of a dir", []op{rmdir("etc/motd"), unlinkF("opt/app")}},
	{"replace a deleted dir", []op{rmAll("usr/share"), mkdir("usr/share"), write("usr/share/new", "n"), rmAll("srv"), mkdir("srv")}},
	{"new files and dirs", []op{mkdir("new"), mkdir("new/sub"), write("new/sub/f", "f"), symlink("../etc/motd", "new/ln"), mkfifo("new/fifo"), rmdir("new"), mkdir("new")}},
	{"rename files", []op{rename("etc/motd", "etc/motd2", 0), rename("opt/app/data.txt", "etc/passwd", 0), rename("etc/group", "tmp/group", 0), write("etc/motd", "fresh")}},
	{"rename noreplace and exchange", []op{rename("etc/passwd", "etc/group", unix.RENAME_NOREPLACE), rename("etc/passwd", "etc/group", unix.RENAME_EXCHANGE), rename("etc/passwd", "etc/none", unix.RENAME_EXCHANGE)}},
	{"rename a lower dir", []op{rename("opt/app/config", "opt/conf2", 0), write("opt/conf2/e.conf", "e"), mkdir("opt/app/config"), rename("srv", "home/srv", 0), rename("home/srv/sticky", "home/sticky", 0)}},
	{"rename dir over empty dir", []op{mkdir("a"), mkdir("b"), write("a/f", "x"), rename("a", "b", 0), rename("var/lib/thing", "srv/setgid", 0), rename("opt", "tmp", 0)}},
	{"rename dir errors", []op{rename("opt/app", "etc/motd", 0), rename("etc/motd", "opt/app", 0), rename("opt", "srv", 0), rename("opt", "opt/app/x", 0)}},
	{"links", []op{link("etc/motd", "etc/motd.link"), write("etc/motd", "through one name\n"), link("opt/app", "opt/applink"), link("opt/app/config/c.conf", "tmp/c")}},
	{"a whiteout then a file", []op{rm("opt/app/empty"), write("opt/app/empty", "full"), rmAll("opt/app/config"), write("opt/app/config", "now a file")}},
	{"truncate an upper file", []op{openTrunc("etc/motd", unix.O_RDONLY), openTrunc("etc/motd", unix.O_RDONLY), openTrunc("opt/app/data.txt", unix.O_RDWR|unix.O_APPEND),
		openTrunc("opt/app/data.txt", unix.O_RDWR|unix.O_APPEND), openTrunc("tmp/new", unix.O_RDONLY|unix.O_CREAT), openTrunc("tmp/new", unix.O_RDONLY|unix.O_CREAT),
		truncateWhileOpen("etc/passwd", 3), truncateWhileOpen("etc/passwd", 1)}},
	{"rename a new dir over a deleted lower dir", []op{mkdir("new"), write("new/x", "x"), rmAll("opt/app/config"), rename("new", "opt/app/config", 0),
		mkdir("new2"), rmAll("srv"), mkdir("srv"), rename("new2", "srv", 0)}},
	{"rename over one name of a lower hardlink set", []op{rename("etc/motd", "opt/app/h1", 0), write("etc/motd", "m"), rename("etc/motd", "usr/share/h3", unix.RENAME_NOREPLACE)}},
	// Two names of one upper file, each renamed: the one moved over a
	// lower name must leave a whiteout when it goes, whatever happens to
	// the other name (they once shared what the union knew of the file).
	{"names of one file renamed over a lower name and elsewhere", []op{write("tmp/n1", "n"), link("tmp/n1", "tmp/n2"), rename("tmp/n1", "etc/motd", 0),
		rename("tmp/n2", "tmp/n3", 0), rm("etc/motd"), link("tmp/n3", "etc/group"), rename("tmp/n3", "tmp/n4", 0), rm("etc/group")}},
	{"rename a lower dir into another", []op{rename("opt/app/config", "srv/moved", 0), rename("srv", "tmp/srv2", 0), rmdir("tmp/srv2/moved")}},
	// The other names of the set live in a directory renamed since: the
	// copy-up finds them at its new path (random seed 515).
	{"copy-up of a hardlink whose other names' directory was renamed", []op{rename("opt/app", "srv/moved", 0), truncate("usr/share/h3", 1), appendTo("srv/moved/h1", "+")}},
}

// setup makes a fresh strata union and kernel overlayfs over the same
// layers, returning their mount points and strata's upper directory.
func setup(t *testing.T, lowers []string) (strata, kernel, strataUpper string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireFUSE(t)
	base := t.TempDir()
	for _, d := range []string{"su", "sw", "sm", "ku", "kw", "km"} {
		os.Mkdir(filepath.Join(base, d), 0o755)
	}
	layers, err := layertree.NewDirs(lowers...)
	if err != nil {
		t.Fatal(err)
	}
	u, err := New(Options{Layers: layers, UpperDir: filepath.Join(base, "su"), WorkDir: filepath.Join(base, "sw")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(filepath.Join(base, "sm"), u, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	kernel = filepath.Join(base, "km")
	mountKernel(t, lowers, filepath.Join(base, "ku"), filepath.Join(base, "kw"), kernel)
	return filepath.Join(base, "sm"), kernel, filepath.Join(base, "su")
}

func mountKernel(t *testing.T, lowers []string, upper, work, mnt string) {
	t.Helper()
	opts := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=on,index=on,metacopy=off"
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, mnt).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("kernel overlayfs: %v %s", err, out))
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	if err != nil {
		return syscall.Errno(1 << 20)
	}
	return 0
}

// impliedDirs are directories some layer holds only as a parent, whose
// metadata strata and the kernel show differently (by design).
func impliedDirs(lowers []string) map[string]bool {
	out := map[string]bool{}
	for _, l := range lowers {
		filepath.WalkDir(l, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				if _, err := unix.Lgetxattr(p, "user.strata.implied", nil); err == nil {
					rel, _ := filepath.Rel(l, p)
					out[rel] = true
				}
			}
			return nil
		})
	}
	return out
}

// compareTrees reports differences between strata's view and the kernel's.
func compareTrees(t *testing.T, label, strata, kernel string, implied map[string]bool) {
	t.Helper()
	compareTreesExcept(t, label, strata, kernel, implied, nil)
}

// compareTreesExcept is compareTrees leaving out the paths in except, and
// with except non-nil, link counts above one and hardlink groups.
func compareTreesExcept(t *testing.T, label, strata, kernel string, implied, except map[string]bool) {
	t.Helper()
	got, gotIno := describeNoTimes(t, strata, implied)
	want, wantIno := describeNoTimes(t, kernel, implied)
	if except != nil {
		for _, m := range []map[string]string{got, want} {
			for p, v := range m {
				if except[p] {
					delete(m, p)
				} else if f := strings.Fields(v); !strings.Contains(v, " nlink=1 ") {
					m[p] = strings.Join(slices.DeleteFunc(f, func(x string) bool { return strings.HasPrefix(x, "nlink=") }), " ")
				}
			}
		}
		gotIno, wantIno = nil, nil
	}
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
			if bad++; bad < 10 {
				t.Errorf("%s: %s:\n  strata %s\n  kernel %s", label, k, got[k], want[k])
			}
		}
	}
	if a, b := linkGroups(gotIno), linkGroups(wantIno); a != b {
		t.Errorf("%s: hardlink groups: strata %s, kernel %s", label, a, b)
	}
}

func linkGroups(m map[uint64][]string) string {
	var g []string
	for _, names := range m {
		if len(names) > 1 {
			sort.Strings(names)
			g = append(g, strings.Join(names, ","))
		}
	}
	sort.Strings(g)
	return strings.Join(g, ";")
}

// describeNoTimes is describe without times (creations differ by
// clock), blocks (a copy-up's xattrs may take a block of their own) and
// directory link counts (strata copies a lower hardlink set up whole, and
// with it the directories of its other names, which the kernel leaves
// lower), and with directory metadata except for implied directories.
func describeNoTimes(t *testing.T, root string, implied map[string]bool) (map[string]string, map[uint64][]string) {
	t.Helper()
	out, inodes := describe(t, root)
	for k, v := range out {
		fields := strings.Fields(v)
		var keep []string
		for _, f := range fields {
			if !strings.HasPrefix(f, "mtime=") && !strings.HasPrefix(f, "blocks=") && !(strings.HasPrefix(v, "type=40000") && strings.HasPrefix(f, "nlink=")) {
				keep = append(keep, f)
			}
		}
		v = strings.Join(keep, " ")
		if strings.HasPrefix(v, "type=40000") && !implied[k] {
			var st unix.Stat_t
			unix.Lstat(filepath.Join(root, k), &st)
			v += fmt.Sprintf(" mode=%o owner=%d:%d", st.Mode, st.Uid, st.Gid)
		}
		out[k] = v
	}
	return out, inodes
}

func TestDifferentialAgainstKernelOverlay(t *testing.T) {
	lowers := multiLayerDirs(t)
	implied := impliedDirs(lowers)
	for _, c := range diffCases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			strata, kernel, upper := setup(t, lowers)
			for _, o := range c.ops {
				se, ke := errnoOf(o.do(strata)), errnoOf(o.do(kernel))
				if se != ke {
					t.Errorf("%s: strata %v, kernel %v", o.desc, se, ke)
				}
			}
			compareTrees(t, "after ops", strata, kernel, implied)
			compareHandedOver(t, lowers, strata, kernel, upper, implied)
		})
	}
}

// compareHandedOver checks what the upper directories are worth after a
// case: strata's, handed to the kernel overlayfs or to a fresh strata
// union, shows the same tree; and each upper made a lower layer (as an
// image build or a commit does) shows the same tree under strata as the
// kernel's does under the kernel.
func compareHandedOver(t *testing.T, lowers []string, strata, kernel, upper string, implied map[string]bool) {
	t.Helper()
	cross, work := t.TempDir(), t.TempDir()
	mountKernel(t, lowers, upper, work, cross)
	compareTrees(t, "kernel over strata's upper", cross, kernel, implied)
	again := t.TempDir()
	mountStrata(t, lowers, upper, t.TempDir(), again)
	compareTrees(t, "strata remounted over its upper", again, kernel, implied)
	kernelUpper := filepath.Join(filepath.Dir(kernel), "ku")
	sLow, kLow := t.TempDir(), t.TempDir()
	mountStrata(t, append([]string{upper}, lowers...), "", "", sLow)
	mountKernelReadOnly(t, append([]string{kernelUpper}, lowers...), kLow)
	// Hardlinks of the lowers differ there by design: strata copies a
	// hardlink set up whole, the kernel one name (its index keeps the
	// set whole in its own mount only), and without an index it reports
	// a lower file's own link count, whited-out names included. A set's
	// names may have moved (a renamed directory): what has several
	// names in either tree is left out too.
	compareTreesExcept(t, "each upper made a lower layer", sLow, kLow, implied, hardlinked(append(slices.Clone(lowers), sLow, kLow)))
}

// hardlinked are the paths of files with several names in the layers.
func hardlinked(lowers []string) map[string]bool {
	out := map[string]bool{}
	for _, l := range lowers {
		filepath.WalkDir(l, func(p string, d os.DirEntry, err error) error {
			var st unix.Stat_t
			if err == nil && !d.IsDir() && unix.Lstat(p, &st) == nil && st.Nlink > 1 {
				rel, _ := filepath.Rel(l, p)
				out[rel] = true
			}
			return nil
		})
	}
	return out
}

// mountStrata mounts a strata union of lowers (top first) under upper (""
// for none) at mnt.
func mountStrata(t *testing.T, lowers []string, upper, work, mnt string) {
	t.Helper()
	layers, err := layertree.NewDirs(lowers...)
	if err != nil {
		t.Fatal(err)
	}
	u, err := New(Options{Layers: layers, UpperDir: upper, WorkDir: work})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(mnt, u, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
}

func mountKernelReadOnly(t *testing.T, lowers []string, mnt string) {
	t.Helper()
	opts := "lowerdir=" + strings.Join(lowers, ":") + ",redirect_dir=follow"
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, mnt).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("kernel overlayfs: %v %s", err, out))
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
}

func TestReservedNames(t *testing.T) {
	strata, _, _ := setup(t, multiLayerDirs(t))
	for _, o := range []op{write(".wh.x", "x"), mkdir("etc/.wh.y"), symlink("t", ".wh.z"), rename("etc/motd", "etc/.wh.motd", 0)} {
		if err := o.do(strata); errnoOf(err) != syscall.EINVAL {
			t.Errorf("%s: %v; want EINVAL", o.desc, err)
		}
	}
}

// TestRandomOpsAgainstKernelOverlay runs seeded random operation
// sequences on strata and the kernel overlayfs. A failure names its seed;
// STRATA_SEED=N reruns one.
func TestRandomOpsAgainstKernelOverlay(t *testing.T) {
	lowers := multiLayerDirs(t)
	implied := impliedDirs(lowers)
	var seeds []int64
	for i := int64(1); i <= 40; i++ {
		seeds = append(seeds, i)
	}
	if s := os.Getenv("STRATA_SEED"); s != "" {
		var n int64
		fmt.Sscan(s, &n)
		seeds = []int64{n}
	}
	paths := []string{"etc/motd", "etc/passwd", "opt/app/data.txt", "opt/app/h1", "opt/app/h2", "usr/share/h3",
		"opt/app/config", "opt/app/config/c.conf", "opt/app", "srv/sticky", "srv", "tmp/x", "tmp/y", "tmp/d",
		"tmp/d/f", "opt/app/rel", "opt/new", "home/app/owned.txt", "var/lib/thing", "opt/app/empty"}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := newRand(seed)
			pick := func() string { return paths[rng.Intn(len(paths))] }
			var ops []op
			for i := 0; i < 30; i++ {
				a, b := pick(), pick()
				switch rng.Intn(13) {
				case 0:
					ops = append(ops, write(a, fmt.Sprint("data", i)))
				case 1:
					ops = append(ops, appendTo(a, "+"))
				case 2:
					ops = append(ops, unlinkF(a))
				case 3:
					ops = append(ops, rmdir(a))
				case 4:
					ops = append(ops, mkdir(a))
				case 5:
					ops = append(ops, rename(a, b, 0))
				case 6:
					ops = append(ops, rename(a, b, unix.RENAME_NOREPLACE))
				case 7:
					ops = append(ops, chmod(a, 0o640))
				case 8:
					ops = append(ops, truncate(a, 1))
				case 9:
					ops = append(ops, link(a, b))
				case 10:
					ops = append(ops, symlink(a, b))
				case 11:
					ops = append(ops, setxattr(a, "user.r", fmt.Sprint(i)))
				case 12:
					ops = append(ops, rmAll(a))
				}
			}
			strata, kernel, upper := setup(t, lowers)
			succeeded := 0
			for i, o := range ops {
				se, ke := errnoOf(o.do(strata)), errnoOf(o.do(kernel))
				if se != ke {
					t.Errorf("op %d %s: strata %v, kernel %v", i, o.desc, se, ke)
				}
				if ke == 0 {
					succeeded++
				}
			}
			t.Logf("%d of %d operations succeeded", succeeded, len(ops))
			compareTrees(t, "after ops", strata, kernel, implied)
			compareHandedOver(t, lowers, strata, kernel, upper, implied)
			if t.Failed() {
				for i, o := range ops {
					t.Logf("op %d: %s", i, o.desc)
				}
			}
		})
	}
}

// Operations from several processes at once on one union, over names
// they share, leave it in a state its upper keeps: after a storm of
// creates, writes, renames, links and removals with listings between, the
// union remounted over its upper, and the kernel overlayfs over it, show
// what the union showed. No operation fails as no local filesystem would
// (EIO, ESTALE), and no listing shows a name twice.
func TestConcurrentOpsKeepUpperConsistent(t *testing.T) {
	lowers := multiLayerDirs(t)
	implied := impliedDirs(lowers)
	dirs := []string{"etc", "opt/app", "opt/app/config", "tmp", "srv", "usr/share"}
	names := []string{"motd", "passwd", "group", "data.txt", "c.conf", "sticky", "n1", "n2", "n3", "d1", "d2"}
	for seed := int64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			strata, _, upper := setup(t, lowers)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failures []string
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := newRand(seed*100 + int64(w))
					pick := func() string { return dirs[rng.Intn(len(dirs))] + "/" + names[rng.Intn(len(names))] }
					for i := range 250 {
						a, b := pick(), pick()
						var o op
						switch rng.Intn(12) {
						case 0:
							o = write(a, fmt.Sprint("w", w, "i", i))
						case 1:
							o = appendTo(a, "+")
						case 2:
							o = unlinkF(a)
						case 3:
							o = rmdir(a)
						case 4:
							o = mkdir(a)
						case 5, 6:
							o = rename(a, b, 0)
						case 7:
							o = chmod(a, 0o640)
						case 8:
							o = truncate(a, 1)
						case 9:
							o = link(a, b)
						case 10:
							o = symlink("target", a)
						default:
							o = listOnce(filepath.Dir(a))
						}
						err := o.do(strata)
						switch errnoOf(err) {
						case syscall.EIO, syscall.ESTALE, syscall.ENOTCONN, syscall.EBADF, 1 << 20:
							mu.Lock()
							failures = append(failures, fmt.Sprintf("worker %d op %d %s: %v", w, i, o.desc, err))
							mu.Unlock()
						}
					}
				}()
			}
			wg.Wait()
			for _, f := range failures {
				t.Error(f)
			}
			again, cross := t.TempDir(), t.TempDir()
			mountStrata(t, lowers, upper, t.TempDir(), again)
			compareTreesExcept(t, "strata remounted over its upper", again, strata, implied, map[string]bool{})
			mountKernel(t, lowers, upper, t.TempDir(), cross)
			compareTreesExcept(t, "kernel over strata's upper", cross, strata, implied, map[string]bool{})
		})
	}
}

// listOnce lists dir, failing if a name shows twice.
func listOnce(dir string) op {
	return op{"list " + dir, func(r string) error {
		ents, err := os.ReadDir(filepath.Join(r, dir))
		seen := map[string]bool{}
		for _, e := range ents {
			if seen[e.Name()] {
				return fmt.Errorf("%s listed twice", e.Name())
			}
			seen[e.Name()] = true
		}
		return err
	}}
}

// rng is a small deterministic generator, so seeds mean the same on every
// Go version.
type rng struct{ s uint64 }

func newRand(seed int64) *rng { return &rng{s: uint64(seed)*0x9E3779B97F4A7C15 + 1} }

func (r *rng) Intn(n int) int {
	r.s ^= r.s << 13
	r.s ^= r.s >> 7
	r.s ^= r.s << 17
	return int(r.s % uint64(n))
}
