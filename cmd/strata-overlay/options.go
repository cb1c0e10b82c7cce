package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// config is what a command line asks of strata-overlay.
type config struct {
	source, mountpoint string
	foreground, debug  bool
	lower              []string // top first
	upper, work        string
	timeout            time.Duration
	noSync             bool
	fsName, subtype    string
	kernel             []string // options for the kernel's mount
}

// kernelFlags pass to the kernel as they are.
var kernelFlags = map[string]bool{
	"rw": true, "ro": true, "suid": true, "nosuid": true, "dev": true, "nodev": true,
	"exec": true, "noexec": true, "atime": true, "noatime": true, "relatime": true,
	"norelatime": true, "strictatime": true, "nostrictatime": true, "diratime": true,
	"nodiratime": true, "sync": true, "async": true, "dirsync": true, "lazytime": true,
	"nolazytime": true, "allow_other": true, "default_permissions": true,
}

// kernelValues are kernel options with a value, passed as they are.
var kernelValues = map[string]bool{
	"context": true, "fscontext": true, "defcontext": true, "rootcontext": true, "max_read": true, "blksize": true,
}

// bookkeeping are options for mount(8) and fstab, not for the filesystem.
var bookkeeping = map[string]bool{
	"defaults": true, "auto": true, "noauto": true, "user": true, "nouser": true,
	"users": true, "owner": true, "_netdev": true, "nofail": true,
}

// sameAsStrata are fuse-overlayfs tuning options whose effect strata
// always has, or has no use for: accepted so existing command lines work.
var sameAsStrata = map[string]string{
	"fast_ino":          "inode numbers are always stable and cheap",
	"threaded":          "the server is always concurrent",
	"writeback":         "reads and writes go through FUSE passthrough where the kernel has it",
	"noacl":             "ACLs are xattrs, passed through",
	"static_nlink":      "link counts are always exact",
	"xattr_permissions": "only 0 is supported",
}

// unsupported are fuse-overlayfs options strata does not implement.
var unsupported = map[string]bool{
	"uidmapping": true, "gidmapping": true, "squash_to_root": true, "squash_to_uid": true,
	"squash_to_gid": true, "plugins": true, "noxattrs": true, "allow_root": true,
}

// parseOptions adds one -o list to c. Relative directories are taken from
// cwd, as fuse-overlayfs takes them (podman runs it from its layer store).
func (c *config) parseOptions(list, cwd string) error {
	for _, opt := range splitOptions(list) {
		if opt == "" {
			continue
		}
		key, val, hasVal := strings.Cut(opt, "=")
		switch {
		case key == "lowerdir":
			for _, d := range splitLower(val) {
				if d == "" {
					return fmt.Errorf("lowerdir %q: empty directory", val)
				}
				c.lower = append(c.lower, absFrom(cwd, d))
			}
		case key == "upperdir":
			c.upper = absFrom(cwd, val)
		case key == "workdir":
			c.work = absFrom(cwd, val)
		case key == "timeout":
			secs, err := strconv.ParseFloat(val, 64)
			if err != nil || secs < 0 {
				return fmt.Errorf("option %s: want seconds", opt)
			}
			c.timeout = time.Duration(secs * float64(time.Second))
		case key == "fsync":
			switch val {
			case "0":
				c.noSync = true
			case "1":
				c.noSync = false
			default:
				return fmt.Errorf("option %s: want fsync=0 or fsync=1", opt)
			}
		case key == "volatile" && !hasVal:
			c.noSync = true
		case key == "debug" && !hasVal:
			c.debug, c.foreground = true, true
		case key == "fsname":
			c.fsName = val
		case key == "subtype":
			c.subtype = val
		case kernelFlags[key] && !hasVal:
			c.kernel = append(c.kernel, key)
		case kernelValues[key] && hasVal:
			c.kernel = append(c.kernel, opt)
		case bookkeeping[key] && !hasVal, strings.HasPrefix(key, "x-"), key == "comment":
		case sameAsStrata[key] != "":
			if key == "xattr_permissions" && val != "0" {
				return fmt.Errorf("option %s: %s", opt, sameAsStrata[key])
			}
		case unsupported[key]:
			return fmt.Errorf("option %s is not supported by strata-overlay", key)
		default:
			return fmt.Errorf("unknown option %q", opt)
		}
	}
	return nil
}

// check validates the whole configuration.
func (c *config) check() error {
	if c.mountpoint == "" {
		return fmt.Errorf("no mount point given")
	}
	if len(c.lower) == 0 {
		return fmt.Errorf("no lowerdir given")
	}
	if (c.upper == "") != (c.work == "") {
		return fmt.Errorf("upperdir and workdir go together")
	}
	return nil
}

// splitOptions splits a comma-separated list, honouring backslash escapes
// of commas.
func splitOptions(s string) []string {
	return splitEscaped(s, ',')
}

// splitLower splits lowerdir at colons; "\:" is a colon in a path.
func splitLower(s string) []string {
	return splitEscaped(s, ':')
}

func splitEscaped(s string, sep byte) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && (s[i+1] == sep || s[i+1] == '\\'):
			cur.WriteByte(s[i+1])
			i++
		case s[i] == sep:
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	return append(out, cur.String())
}

func absFrom(cwd, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(cwd, p)
}
