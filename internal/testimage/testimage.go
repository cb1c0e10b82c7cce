// Package testimage builds real images from real files for tests and the
// demo: Debian's busybox-static with its applet symlinks as the base, and
// layers that add, change, delete and hide content with every kind of
// entry a layer can hold.
package testimage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// BusyboxPath is where Debian's busybox-static installs the binary.
const BusyboxPath = "/bin/busybox"

// Created is the fixed time of every built image and entry, so digests
// are stable.
func Created() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }

// Compression of a layer blob.
type Compression int

// The compressions.
const (
	Gzip Compression = iota
	Zstd
	Uncompressed
	// DockerGzip is gzip under Docker's media types: the image gets a
	// Docker schema-2 manifest and config.
	DockerGzip
)

func (c Compression) mediaType() types.MediaType {
	switch c {
	case Zstd:
		return types.OCILayerZStd
	case Uncompressed:
		return types.OCIUncompressedLayer
	case DockerGzip:
		return types.DockerLayer
	}
	return types.OCILayer
}

// File is one tar entry of a layer.
type File struct {
	Path     string
	Type     byte // tar.TypeReg when zero
	Mode     int64
	UID, GID int
	Data     []byte
	Linkname string
	Xattrs   map[string]string
	Devmajor int64
	Devminor int64
}

// layer is a v1.Layer over bytes built in memory.
type layer struct {
	compressed, uncompressed []byte
	digest, diffID           v1.Hash
	mt                       types.MediaType
}

func (l *layer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *layer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *layer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.compressed)), nil
}
func (l *layer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.uncompressed)), nil
}
func (l *layer) Size() (int64, error)                { return int64(len(l.compressed)), nil }
func (l *layer) MediaType() (types.MediaType, error) { return l.mt, nil }

func hashOf(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// LayerFromFiles builds a layer holding files in the given order (order
// matters for whiteouts and opaque markers).
func LayerFromFiles(files []File, c Compression) (v1.Layer, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, f := range files {
		typ := f.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := f.Mode
		if mode == 0 {
			mode = map[byte]int64{tar.TypeDir: 0o755, tar.TypeSymlink: 0o777}[typ]
			if mode == 0 {
				mode = 0o644
			}
		}
		h := &tar.Header{
			Name: f.Path, Typeflag: typ, Mode: mode, Uid: f.UID, Gid: f.GID, Linkname: f.Linkname,
			ModTime: Created(), Devmajor: f.Devmajor, Devminor: f.Devminor, Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(f.Data))
		}
		for k, v := range f.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", f.Path, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	l := &layer{uncompressed: raw.Bytes(), mt: c.mediaType()}
	l.diffID = hashOf(l.uncompressed)
	switch c {
	case Gzip, DockerGzip:
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		zw.Write(l.uncompressed)
		zw.Close()
		l.compressed = b.Bytes()
	case Zstd:
		zw, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		l.compressed = zw.EncodeAll(l.uncompressed, nil)
	default:
		l.compressed = l.uncompressed
	}
	l.digest = hashOf(l.compressed)
	return l, nil
}

// BusyboxFiles is the base filesystem: busybox, its applet symlinks, and a
// minimal /etc with users root, nobody and app (1000, also in group staff).
func BusyboxFiles() ([]File, error) {
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("busybox-static is needed to build test images (apt-get install busybox-static): %w", err)
	}
	out, err := exec.Command(BusyboxPath, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list-full: %w", err)
	}
	files := []File{
		{Path: "bin/", Type: tar.TypeDir}, {Path: "sbin/", Type: tar.TypeDir},
		{Path: "usr/", Type: tar.TypeDir}, {Path: "usr/bin/", Type: tar.TypeDir}, {Path: "usr/sbin/", Type: tar.TypeDir},
		{Path: "etc/", Type: tar.TypeDir}, {Path: "root/", Type: tar.TypeDir, Mode: 0o700},
		{Path: "tmp/", Type: tar.TypeDir, Mode: 0o1777}, {Path: "home/", Type: tar.TypeDir},
		{Path: "home/app/", Type: tar.TypeDir, UID: 1000, GID: 1000},
		{Path: "var/", Type: tar.TypeDir},
		{Path: "bin/busybox", Mode: 0o755, Data: bin},
		{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "etc/group", Data: []byte("root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n")},
		{Path: "etc/os-release", Data: []byte("NAME=\"strata test busybox\"\nID=strata-test\n")},
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "bin/busybox" || strings.Contains(p, "..") {
			continue
		}
		files = append(files, File{Path: p, Type: tar.TypeSymlink, Linkname: "/bin/busybox"})
	}
	return files, nil
}

func config(platform v1.Platform, cmd []string, history []v1.History) *v1.ConfigFile {
	return &v1.ConfigFile{
		Architecture: platform.Architecture, OS: platform.OS, Variant: platform.Variant,
		Created: v1.Time{Time: Created()}, Author: "strata tests",
		Config: v1.Config{
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd:        cmd,
			WorkingDir: "/",
			Labels:     map[string]string{"org.opencontainers.image.title": "strata test image"},
		},
		History: history,
		RootFS:  v1.RootFS{Type: "layers"},
	}
}

// HostPlatform is linux and the architecture of this machine.
func HostPlatform() v1.Platform { return v1.Platform{OS: "linux", Architecture: runtime.GOARCH} }

// build assembles an OCI image from layers with one history entry each.
func build(platform v1.Platform, cmd []string, layers []v1.Layer, comments []string) (v1.Image, error) {
	var hist []v1.History
	for _, c := range comments {
		hist = append(hist, v1.History{Created: v1.Time{Time: Created()}, CreatedBy: c})
	}
	img, err := mutate.ConfigFile(empty.Image, config(platform, cmd, nil))
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if len(layers) > 0 {
		if mt, _ := layers[0].MediaType(); mt == types.DockerLayer {
			img = mutate.MediaType(img, types.DockerManifestSchema2)
			img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
		}
	}
	for i, l := range layers {
		img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: hist[i]})
		if err != nil {
			return nil, err
		}
	}
	return img, nil
}

// Busybox is a one-layer busybox image for the host platform, Cmd ["sh"].
func Busybox() (v1.Image, error) {
	files, err := BusyboxFiles()
	if err != nil {
		return nil, err
	}
	l, err := LayerFromFiles(files, Gzip)
	if err != nil {
		return nil, err
	}
	return build(HostPlatform(), []string{"sh"}, []v1.Layer{l}, []string{"busybox-static"})
}

// PushOption changes how an image is pushed.
type PushOption func(*[]remote.Option)

// WithAuth pushes with basic credentials (the registry may exchange them
// for a token).
func WithAuth(user, pass string) PushOption {
	return func(o *[]remote.Option) {
		*o = append(*o, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	}
}

func pushOptions(ctx context.Context, opts []PushOption) []remote.Option {
	o := []remote.Option{remote.WithContext(ctx)}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Push writes img to ref (a loopback registry is reached over HTTP).
func Push(ctx context.Context, ref string, img v1.Image, opts ...PushOption) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	if err := remote.Write(r, img, pushOptions(ctx, opts)...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// PushIndex writes an index and its images to ref.
func PushIndex(ctx context.Context, ref string, idx v1.ImageIndex, opts ...PushOption) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	if err := remote.WriteIndex(r, idx, pushOptions(ctx, opts)...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// IndexPlatforms are the platforms of Index, the host's first.
func IndexPlatforms() []string {
	host := "linux/" + runtime.GOARCH
	out := []string{host}
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		if p != host {
			out = append(out, p)
		}
	}
	return out
}

// Index is an image index with one small image per IndexPlatforms entry;
// each image's /etc/platform names its platform.
func Index() (v1.ImageIndex, error) {
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	for _, p := range IndexPlatforms() {
		parts := strings.Split(p, "/")
		pl := v1.Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) == 3 {
			pl.Variant = parts[2]
		}
		l, err := LayerFromFiles([]File{{Path: "etc/", Type: tar.TypeDir}, {Path: "etc/platform", Data: []byte(p + "\n")}}, Gzip)
		if err != nil {
			return nil, err
		}
		img, err := build(pl, []string{"cat", "/etc/platform"}, []v1.Layer{l}, []string{"platform " + p})
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &pl}})
	}
	return idx, nil
}
