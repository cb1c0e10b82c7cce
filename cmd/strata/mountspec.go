package main

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/stratafs/strata/runtime"
	"github.com/stratafs/strata/volumes"
)

// mountSpec is one -v, --mount or --tmpfs, parsed.
type mountSpec struct {
	kind     string // bind, volume, tmpfs
	src, dst string
	readOnly bool
	copyUp   bool
	data     string // tmpfs options
	// createHost: -v makes a missing host directory, --mount does not.
	createHost bool
}

func parseMountFlags(vols, mounts, tmpfs []string) ([]mountSpec, error) {
	var out []mountSpec
	for _, v := range vols {
		m, err := parseVolumeFlag(v)
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		out = append(out, m)
	}
	for _, v := range mounts {
		m, err := parseMountFlag(v)
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		out = append(out, m)
	}
	for _, v := range tmpfs {
		m, err := parseTmpfsFlag(v)
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		out = append(out, m)
	}
	seen := map[string]bool{}
	for _, m := range out {
		if seen[m.dst] {
			return nil, &usageError{msg: fmt.Sprintf("duplicate mount point: %s", m.dst)}
		}
		seen[m.dst] = true
	}
	return out, nil
}

func checkDst(flag, spec, dst string) (string, error) {
	if err := runtime.CheckDestination(dst); err != nil {
		return "", fmt.Errorf("%s %q: %v", flag, spec, err)
	}
	return path.Clean(dst), nil
}

// parseVolumeFlag reads -v SRC:DST[:OPTS] or -v DST.
func parseVolumeFlag(s string) (mountSpec, error) {
	parts := strings.Split(s, ":")
	m := mountSpec{copyUp: true, createHost: true}
	var opts string
	switch len(parts) {
	case 1:
		m.kind, m.dst = "volume", parts[0]
	case 2, 3:
		m.src, m.dst = parts[0], parts[1]
		if len(parts) == 3 {
			opts = parts[2]
		}
		switch {
		case m.src == "":
			return m, fmt.Errorf("-v %q: empty source", s)
		case strings.HasPrefix(m.src, "/"):
			m.kind = "bind"
		case volumes.ValidName(m.src):
			m.kind = "volume"
		default:
			return m, fmt.Errorf("-v %q: %q is neither an absolute host path nor a valid volume name", s, m.src)
		}
	default:
		return m, fmt.Errorf("-v %q: too many colons: want SRC:DST[:OPTIONS]", s)
	}
	dst, err := checkDst("-v", s, m.dst)
	if err != nil {
		return m, err
	}
	m.dst = dst
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "ro", "readonly":
				m.readOnly = true
			case "rw":
				m.readOnly = false
			case "nocopy":
				m.copyUp = false
			case "z", "Z", "private", "rprivate", "shared", "rshared", "slave", "rslave", "consistent", "cached", "delegated":
				// SELinux labels and propagation: nothing to do here.
			default:
				return m, fmt.Errorf("-v %q: unknown option %q", s, o)
			}
		}
	}
	return m, nil
}

// parseMountFlag reads --mount type=…,src=…,dst=…[,…].
func parseMountFlag(s string) (mountSpec, error) {
	m := mountSpec{kind: "volume", copyUp: true}
	var sizeOpt, modeOpt string
	for _, field := range strings.Split(s, ",") {
		k, v, hasValue := strings.Cut(field, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		boolVal := func() (bool, error) {
			switch strings.ToLower(v) {
			case "", "true", "1":
				if !hasValue || v != "" {
					return true, nil
				}
			case "false", "0":
				return false, nil
			}
			return false, fmt.Errorf("--mount %q: %s wants true or false, not %q", s, k, v)
		}
		var err error
		switch k {
		case "type":
			if v != "bind" && v != "volume" && v != "tmpfs" {
				return m, fmt.Errorf("--mount %q: unknown type %q: want bind, volume or tmpfs", s, v)
			}
			m.kind = v
		case "source", "src":
			m.src = v
		case "destination", "dst", "target":
			m.dst = v
		case "readonly", "ro":
			m.readOnly, err = boolVal()
		case "volume-nocopy":
			var nocopy bool
			nocopy, err = boolVal()
			m.copyUp = !nocopy
		case "tmpfs-size":
			sizeOpt = v
		case "tmpfs-mode":
			modeOpt = v
		case "bind-propagation", "consistency", "volume-driver":
		default:
			return m, fmt.Errorf("--mount %q: unknown option %q", s, k)
		}
		if err != nil {
			return m, err
		}
	}
	if m.dst == "" {
		return m, fmt.Errorf("--mount %q: a destination (dst=…) is required", s)
	}
	dst, err := checkDst("--mount", s, m.dst)
	if err != nil {
		return m, err
	}
	m.dst = dst
	switch m.kind {
	case "bind":
		if !strings.HasPrefix(m.src, "/") {
			return m, fmt.Errorf("--mount %q: a bind source must be an absolute host path", s)
		}
	case "volume":
		if m.src != "" && !volumes.ValidName(m.src) {
			return m, fmt.Errorf("--mount %q: invalid volume name %q", s, m.src)
		}
	case "tmpfs":
		if m.src != "" {
			return m, fmt.Errorf("--mount %q: a tmpfs has no source", s)
		}
		data, err := tmpfsData(sizeOpt, modeOpt)
		if err != nil {
			return m, fmt.Errorf("--mount %q: %v", s, err)
		}
		m.data = data
	}
	if (sizeOpt != "" || modeOpt != "") && m.kind != "tmpfs" {
		return m, fmt.Errorf("--mount %q: tmpfs options on a %s mount", s, m.kind)
	}
	return m, nil
}

func tmpfsData(size, mode string) (string, error) {
	var opts []string
	if size != "" {
		n, err := parseBytes(size)
		if err != nil {
			return "", err
		}
		opts = append(opts, fmt.Sprintf("size=%d", n))
	}
	if mode != "" {
		var mv uint32
		if _, err := fmt.Sscanf(mode, "%o", &mv); err != nil || mv > 0o7777 {
			return "", fmt.Errorf("invalid mode %q", mode)
		}
		opts = append(opts, fmt.Sprintf("mode=%o", mv))
	}
	return strings.Join(opts, ","), nil
}

// parseTmpfsFlag reads --tmpfs /PATH[:size=…,mode=…].
func parseTmpfsFlag(s string) (mountSpec, error) {
	dst, opts, _ := strings.Cut(s, ":")
	m := mountSpec{kind: "tmpfs"}
	d, err := checkDst("--tmpfs", s, dst)
	if err != nil {
		return m, err
	}
	m.dst = d
	var size, mode string
	var extra []string
	if opts != "" {
		for _, o := range strings.Split(opts, ",") {
			k, v, _ := strings.Cut(o, "=")
			switch k {
			case "size":
				size = v
			case "mode":
				mode = v
			case "uid", "gid", "nr_inodes":
				extra = append(extra, o)
			case "ro":
				m.readOnly = true
			case "rw", "noexec", "nosuid", "nodev":
			default:
				return m, fmt.Errorf("--tmpfs %q: unknown option %q", s, o)
			}
		}
	}
	data, err := tmpfsData(size, mode)
	if err != nil {
		return m, fmt.Errorf("--tmpfs %q: %v", s, err)
	}
	if len(extra) > 0 {
		data = strings.Trim(data+","+strings.Join(extra, ","), ",")
	}
	m.data = data
	return m, nil
}

// resolve turns a parsed mount into the runtime's, making the volume (or
// host directory, for -v) it needs.
func (m mountSpec) resolve(ctx context.Context, vs *volumes.Store) (runtime.Mount, runtime.VolumeRef, bool, error) {
	switch m.kind {
	case "bind":
		src := filepath.Clean(m.src)
		if _, err := os.Stat(src); err != nil {
			if !os.IsNotExist(err) || !m.createHost {
				return runtime.Mount{}, runtime.VolumeRef{}, false, fmt.Errorf("invalid mount config: bind source path %s: %w", src, err)
			}
			if err := os.MkdirAll(src, 0o755); err != nil {
				return runtime.Mount{}, runtime.VolumeRef{}, false, fmt.Errorf("bind source path %s: %w", src, err)
			}
		}
		return runtime.Mount{Type: "bind", Source: src, Destination: m.dst, ReadOnly: m.readOnly}, runtime.VolumeRef{}, false, nil
	case "tmpfs":
		return runtime.Mount{Type: "tmpfs", Destination: m.dst, ReadOnly: m.readOnly, Data: m.data}, runtime.VolumeRef{}, false, nil
	}
	v, created, err := vs.Create(ctx, m.src, m.src == "")
	if err != nil {
		return runtime.Mount{}, runtime.VolumeRef{}, false, err
	}
	mnt := runtime.Mount{Type: "bind", Source: v.Mountpoint, Destination: m.dst, ReadOnly: m.readOnly, CopyUp: m.copyUp}
	return mnt, runtime.VolumeRef{Name: v.Name, Destination: m.dst, Anonymous: v.Anonymous}, created, nil
}
