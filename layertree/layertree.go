// Package layertree is the seam between where a layer's bytes come from
// (lazypull: an extracted directory, an eStargz TOC) and the union
// filesystem (fusefs) that stacks layers. A Tree is an immutable tree of
// entries plus a way to read a regular file's bytes; neither side imports
// the other, both import this.
package layertree

import (
	"context"
	"io"
	"time"
)

// Entry is one name in one layer.
type Entry struct {
	Name     string
	Mode     uint32 // st_mode: file type and permission bits
	UID, GID uint32
	Size     int64
	Mtime    time.Time
	Rdev     uint64 // device numbers of char and block devices
	Target   string // symlink target
	// Nlink and Ino describe hardlinks within the layer: entries with the
	// same non-zero Ino are one file.
	Nlink uint32
	Ino   uint64
	// Whiteout hides this name in the layers below; the entry itself is
	// never shown. Opaque directories hide everything below them.
	Whiteout bool
	Opaque   bool
	// Implied directories exist in the layer only as parents of its
	// entries; their attributes come from the layers below.
	Implied bool
	// Redirect is where a renamed directory's lower content lives (the
	// kernel overlayfs's redirect xattr): absolute from the root, or a
	// name relative to the parent.
	Redirect string
	// Blocks is the 512-byte blocks the file takes where the layer keeps
	// it on disk (st_blocks); 0 where the layer does not say.
	Blocks int64
	// ListBytes is a directory's own size where a layer keeps it on
	// disk: a hint of how long its listing is to read (0: unknown).
	ListBytes int64
}

// OpaqueMarker names the entry a listing holds when an OCI marker file
// makes the directory listed opaque: what lies below it in lower layers
// does not show. The entry itself never shows.
const OpaqueMarker = ".wh..wh..opq"

// Type is the file-type bits of Mode.
func (e Entry) Type() uint32 { return e.Mode & ModeType }

// IsDir reports whether the entry is a directory.
func (e Entry) IsDir() bool { return e.Type() == ModeDir }

// File type bits of st_mode.
const (
	ModeType    = 0o170000
	ModeSocket  = 0o140000
	ModeSymlink = 0o120000
	ModeRegular = 0o100000
	ModeBlock   = 0o060000
	ModeDir     = 0o040000
	ModeChar    = 0o020000
	ModeFIFO    = 0o010000
)

// Tree is a read-only layer. Paths are slash-separated and relative to the
// layer's root, "" being the root itself. Implementations must be safe for
// concurrent use.
type Tree interface {
	// Stat returns the entry at path.
	Stat(ctx context.Context, path string) (Entry, error)
	// ReadDir returns the entries of the directory at path, markers
	// (whiteouts) included, in no particular order. A directory entry's
	// Opaque may leave out an OCI marker file inside it (Stat does not):
	// listing that directory then shows an entry named OpaqueMarker.
	ReadDir(ctx context.Context, path string) ([]Entry, error)
	// Xattrs returns the extended attributes of the entry at path as the
	// union shows them (Shown): the overlay-internal ones excluded,
	// escaped ones unescaped.
	Xattrs(ctx context.Context, path string) (map[string][]byte, error)
	// Open opens the regular file at path for reading.
	Open(ctx context.Context, path string) (File, error)
}

// File is an open regular file of a layer.
type File interface {
	io.ReaderAt
	io.Closer
}

// LocalFile is a File whose bytes lie in a local file: the union
// filesystem hands its descriptor to the kernel (FUSE passthrough) so reads
// cost what native ones cost.
type LocalFile interface {
	File
	Fd() int
}
