package whiteout

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// WriteTar writes the layer directory dir, in any whiteout form (overlay
// char 0/0 and opaque xattrs, or OCI marker files), as an OCI layer tar:
// sorted, PAX format, whiteouts as ".wh." entries, hardlinks as links to
// the first path seen, xattrs as SCHILY.xattr records without the overlay's
// own, ownership from OverrideStatXattr where present.
func WriteTar(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		hdr := &tar.Header{
			Name: name, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
			ModTime:    time.Unix(st.Mtim.Unix()),
			AccessTime: time.Unix(st.Atim.Unix()),
			Format:     tar.FormatPAX,
		}
		if name == "." {
			hdr.Name = "./"
		}
		typ := st.Mode & unix.S_IFMT
		if typ != unix.S_IFLNK {
			applyOverrideStat(p, hdr)
		}
		switch typ {
		case unix.S_IFDIR:
			hdr.Typeflag = tar.TypeDir
			if name != "." {
				hdr.Name += "/"
			}
		case unix.S_IFREG:
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				break
			}
			if st.Nlink > 1 {
				links[key] = name
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		case unix.S_IFCHR, unix.S_IFBLK:
			if IsOverlayWhiteout(st.Mode, st.Rdev) {
				dirName, base := filepath.Split(name)
				return tw.WriteHeader(&tar.Header{
					Name: dirName + Prefix + base, Typeflag: tar.TypeReg, Mode: 0o644,
					ModTime: hdr.ModTime, Format: tar.FormatPAX,
				})
			}
			hdr.Typeflag = tar.TypeChar
			if typ == unix.S_IFBLK {
				hdr.Typeflag = tar.TypeBlock
			}
			hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			hdr.Typeflag = tar.TypeFifo
		case unix.S_IFSOCK:
			return nil // sockets do not travel in layers
		default:
			return fmt.Errorf("%s: unsupported file type %o", p, typ)
		}
		opaque, implied := false, false
		if xs, err := listXattrs(p); err == nil {
			_, implied = xs[ImpliedXattr]
			for k, v := range xs {
				if k == OpaqueXattrTrusted || k == OpaqueXattrUser {
					opaque = opaque || (typ == unix.S_IFDIR && string(v) == "y")
					continue
				}
				if IsInternalXattr(k) {
					continue
				}
				if hdr.PAXRecords == nil {
					hdr.PAXRecords = map[string]string{}
				}
				hdr.PAXRecords["SCHILY.xattr."+k] = string(v)
			}
		}
		// An implied directory says nothing of its own metadata; its
		// entries still go out, and the applier creates it if need be.
		if implied && typ == unix.S_IFDIR && !opaque {
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			n, err := io.CopyBuffer(tw, io.LimitReader(f, hdr.Size), buf)
			f.Close()
			if err == nil && n != hdr.Size {
				err = fmt.Errorf("%s changed size while being read", p)
			}
			if err != nil {
				return err
			}
		}
		if opaque {
			prefix := ""
			if name != "." {
				prefix = name + "/"
			}
			return tw.WriteHeader(&tar.Header{Name: prefix + OpaqueMarker, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: hdr.ModTime, Format: tar.FormatPAX})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write layer tar of %s: %w", dir, err)
	}
	return tw.Close()
}

func applyOverrideStat(p string, hdr *tar.Header) {
	v, err := getXattr(p, OverrideStatXattr)
	if err != nil {
		return
	}
	parts := strings.SplitN(string(v), ":", 3)
	if len(parts) != 3 {
		return
	}
	uid, e1 := strconv.Atoi(parts[0])
	gid, e2 := strconv.Atoi(parts[1])
	mode, e3 := strconv.ParseUint(parts[2], 8, 32)
	if e1 != nil || e2 != nil || e3 != nil {
		return
	}
	hdr.Uid, hdr.Gid, hdr.Mode = uid, gid, int64(mode)&0o7777
}

func listXattrs(p string) (map[string][]byte, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		return nil, err
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		if v, err := getXattr(p, name); err == nil {
			out[name] = v
		}
	}
	return out, nil
}

func getXattr(p, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
