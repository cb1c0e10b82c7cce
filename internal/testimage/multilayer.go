package testimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// capNetBindService is a VFS_CAP_REVISION_2 security.capability value
// granting cap_net_bind_service (permitted and effective).
const capNetBindService = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// bigFile is a few MB of non-repeating content.
func bigFile() []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < 4<<20; i++ {
		s := sha256.Sum256([]byte(fmt.Sprint(i)))
		b.Write(s[:])
	}
	return b.Bytes()
}

// MultiLayerLayers are the layers after the busybox base:
//
//  1. add: /opt/app with files, a config dir, an "old" dir; a hardlink set
//     of three (one in another directory); relative, absolute and dangling
//     symlinks; a setuid root file, a setgid and a sticky directory; a file
//     owned by 1000; xattrs (security.capability, user.*); a fifo; an
//     empty file; a 4 MiB file; /etc/motd.
//  2. change and delete: /etc/motd and data.txt rewritten; the "old"
//     directory and config/b.conf whited out.
//  3. opaque: config/ made opaque with a new c.conf (a.conf hidden); a new
//     /var/lib/thing directory.
func MultiLayerLayers() [][]File {
	return [][]File{
		{
			{Path: "etc/motd", Data: []byte("hello\n")},
			{Path: "opt/", Type: tar.TypeDir},
			{Path: "opt/app/", Type: tar.TypeDir},
			{Path: "opt/app/data.txt", Data: []byte("v1\n")},
			{Path: "opt/app/config/", Type: tar.TypeDir},
			{Path: "opt/app/config/a.conf", Data: []byte("a=1\n")},
			{Path: "opt/app/config/b.conf", Data: []byte("b=1\n")},
			{Path: "opt/app/old/", Type: tar.TypeDir},
			{Path: "opt/app/old/file", Data: []byte("old\n")},
			{Path: "opt/app/h1", Data: []byte("hard\n")},
			{Path: "opt/app/h2", Type: tar.TypeLink, Linkname: "opt/app/h1"},
			{Path: "usr/share/", Type: tar.TypeDir},
			{Path: "usr/share/h3", Type: tar.TypeLink, Linkname: "opt/app/h1"},
			{Path: "opt/app/rel", Type: tar.TypeSymlink, Linkname: "data.txt"},
			{Path: "opt/app/abs", Type: tar.TypeSymlink, Linkname: "/etc/motd"},
			{Path: "opt/app/dangling", Type: tar.TypeSymlink, Linkname: "/nonexistent/target"},
			{Path: "usr/local/", Type: tar.TypeDir},
			{Path: "usr/local/bin/", Type: tar.TypeDir},
			{Path: "usr/local/bin/suid", Mode: 0o4755, Data: []byte("#!/bin/sh\nid\n")},
			{Path: "srv/", Type: tar.TypeDir},
			{Path: "srv/setgid/", Type: tar.TypeDir, Mode: 0o2775, GID: 50},
			{Path: "srv/sticky/", Type: tar.TypeDir, Mode: 0o1777},
			{Path: "home/app/owned.txt", Mode: 0o600, UID: 1000, GID: 1000, Data: []byte("mine\n")},
			{Path: "opt/app/cap-bin", Mode: 0o755, Data: []byte("#!/bin/sh\n"), Xattrs: map[string]string{"security.capability": capNetBindService, "user.origin": "strata-test"}},
			{Path: "opt/app/fifo", Type: tar.TypeFifo, Mode: 0o644},
			{Path: "opt/app/empty", Data: nil},
			{Path: "opt/app/big", Data: bigFile()},
		},
		{
			{Path: "etc/motd", Data: []byte("hello again\n")},
			{Path: "opt/app/data.txt", Data: []byte("v2\n")},
			{Path: "opt/app/.wh.old"},
			{Path: "opt/app/config/.wh.b.conf"},
		},
		{
			{Path: "opt/app/config/", Type: tar.TypeDir},
			{Path: "opt/app/config/.wh..wh..opq"},
			{Path: "opt/app/config/c.conf", Data: []byte("c=1\n")},
			{Path: "var/lib/", Type: tar.TypeDir},
			{Path: "var/lib/thing/", Type: tar.TypeDir, Mode: 0o750},
		},
	}
}

// MultiLayer is the busybox base plus MultiLayerLayers, all compressed
// with c.
func MultiLayer(c Compression) (v1.Image, error) {
	base, err := BusyboxFiles()
	if err != nil {
		return nil, err
	}
	var layers []v1.Layer
	comments := []string{"busybox-static", "add", "change and delete", "opaque"}
	for _, files := range append([][]File{base}, MultiLayerLayers()...) {
		l, err := LayerFromFiles(files, c)
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	return build(HostPlatform(), []string{"cat", "/etc/motd"}, layers, comments)
}

// Expect describes one path of the flattened MultiLayer image.
type Expect struct {
	Mode     uint32 // full st_mode
	UID, GID uint32
	Content  string // regular files: the content, or "sha256:…" of it
	Target   string // symlinks
	Nlink    uint32 // when non-zero
	Xattrs   map[string]string
}

// MultiLayerExpect is what the flattened MultiLayer image holds (a
// selection), and MultiLayerGone what it must not.
func MultiLayerExpect() map[string]Expect {
	big := sha256.Sum256(bigFile())
	return map[string]Expect{
		"bin/busybox":           {Mode: unix.S_IFREG | 0o755},
		"bin/sh":                {Mode: unix.S_IFLNK | 0o777, Target: "/bin/busybox"},
		"tmp":                   {Mode: unix.S_IFDIR | 0o1777},
		"root":                  {Mode: unix.S_IFDIR | 0o700},
		"home/app":              {Mode: unix.S_IFDIR | 0o755, UID: 1000, GID: 1000},
		"etc/motd":              {Mode: unix.S_IFREG | 0o644, Content: "hello again\n"},
		"opt/app/data.txt":      {Mode: unix.S_IFREG | 0o644, Content: "v2\n"},
		"opt/app/config/c.conf": {Mode: unix.S_IFREG | 0o644, Content: "c=1\n"},
		"opt/app/h1":            {Mode: unix.S_IFREG | 0o644, Content: "hard\n", Nlink: 3},
		"opt/app/h2":            {Mode: unix.S_IFREG | 0o644, Content: "hard\n", Nlink: 3},
		"usr/share/h3":          {Mode: unix.S_IFREG | 0o644, Content: "hard\n", Nlink: 3},
		"opt/app/rel":           {Mode: unix.S_IFLNK | 0o777, Target: "data.txt"},
		"opt/app/abs":           {Mode: unix.S_IFLNK | 0o777, Target: "/etc/motd"},
		"opt/app/dangling":      {Mode: unix.S_IFLNK | 0o777, Target: "/nonexistent/target"},
		"usr/local/bin/suid":    {Mode: unix.S_IFREG | 0o4755},
		"srv/setgid":            {Mode: unix.S_IFDIR | 0o2775, GID: 50},
		"srv/sticky":            {Mode: unix.S_IFDIR | 0o1777},
		"home/app/owned.txt":    {Mode: unix.S_IFREG | 0o600, UID: 1000, GID: 1000, Content: "mine\n"},
		"opt/app/cap-bin":       {Mode: unix.S_IFREG | 0o755, Xattrs: map[string]string{"security.capability": capNetBindService, "user.origin": "strata-test"}},
		"opt/app/fifo":          {Mode: unix.S_IFIFO | 0o644},
		"opt/app/empty":         {Mode: unix.S_IFREG | 0o644, Content: ""},
		"opt/app/big":           {Mode: unix.S_IFREG | 0o644, Content: "sha256:" + hex.EncodeToString(big[:])},
		"var/lib/thing":         {Mode: unix.S_IFDIR | 0o750},
		"etc/passwd":            {Mode: unix.S_IFREG | 0o644},
		"opt/app/config":        {Mode: unix.S_IFDIR | 0o755},
		"usr/local/bin":         {Mode: unix.S_IFDIR | 0o755},
		"etc/os-release":        {Mode: unix.S_IFREG | 0o644},
		"opt/app":               {Mode: unix.S_IFDIR | 0o755},
		"usr/share":             {Mode: unix.S_IFDIR | 0o755},
		"opt":                   {Mode: unix.S_IFDIR | 0o755},
		"srv":                   {Mode: unix.S_IFDIR | 0o755},
		"var/lib":               {Mode: unix.S_IFDIR | 0o755},
		"etc/group":             {Mode: unix.S_IFREG | 0o644},
		"home":                  {Mode: unix.S_IFDIR | 0o755},
		"usr/bin":               {Mode: unix.S_IFDIR | 0o755},
	}
}

// MultiLayerGone lists paths the flattened MultiLayer image must not hold.
func MultiLayerGone() []string {
	return []string{"opt/app/old", "opt/app/config/a.conf", "opt/app/config/b.conf", "opt/app/.wh.old", "opt/app/config/.wh..wh..opq", "opt/app/config/.wh.b.conf"}
}

// CheckMultiLayer compares a flattened tree (strata unpack, a union mount)
// with MultiLayerExpect and MultiLayerGone, and checks no whiteout marker
// shows anywhere. Ownership is checked when running as root.
func CheckMultiLayer(root string) error {
	var errs []error
	for p, want := range MultiLayerExpect() {
		full := filepath.Join(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		if st.Mode != want.Mode {
			errs = append(errs, fmt.Errorf("%s: mode %o, want %o", p, st.Mode, want.Mode))
		}
		if os.Geteuid() == 0 && (st.Uid != want.UID || st.Gid != want.GID) {
			errs = append(errs, fmt.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, want.UID, want.GID))
		}
		if want.Nlink != 0 && uint32(st.Nlink) != want.Nlink {
			errs = append(errs, fmt.Errorf("%s: nlink %d, want %d", p, st.Nlink, want.Nlink))
		}
		if want.Target != "" {
			if t, _ := os.Readlink(full); t != want.Target {
				errs = append(errs, fmt.Errorf("%s: target %q, want %q", p, t, want.Target))
			}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && (want.Content != "" || strings.HasSuffix(p, "empty")) {
			b, err := os.ReadFile(full)
			got := string(b)
			if strings.HasPrefix(want.Content, "sha256:") {
				s := sha256.Sum256(b)
				got = "sha256:" + hex.EncodeToString(s[:])
			}
			if err != nil || got != want.Content {
				errs = append(errs, fmt.Errorf("%s: content %.40q (%v), want %.40q", p, got, err, want.Content))
			}
		}
		for k, v := range want.Xattrs {
			buf := make([]byte, 256)
			n, err := unix.Lgetxattr(full, k, buf)
			if err != nil || string(buf[:max(n, 0)]) != v {
				errs = append(errs, fmt.Errorf("%s: xattr %s = %q (%v), want %q", p, k, buf[:max(n, 0)], err, v))
			}
		}
	}
	var h1, h2 unix.Stat_t
	if unix.Lstat(filepath.Join(root, "opt/app/h1"), &h1) == nil && unix.Lstat(filepath.Join(root, "usr/share/h3"), &h2) == nil && h1.Ino != h2.Ino {
		errs = append(errs, errors.New("opt/app/h1 and usr/share/h3 are not one file"))
	}
	for _, p := range MultiLayerGone() {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			errs = append(errs, fmt.Errorf("%s: present, but deleted by a later layer", p))
		}
	}
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".wh.") {
			errs = append(errs, fmt.Errorf("whiteout marker visible: %s", p))
		}
		return nil
	})
	return errors.Join(errs...)
}
