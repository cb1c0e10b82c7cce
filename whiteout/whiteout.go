// Package whiteout owns the OCI and overlayfs forms of whiteouts and
// opaque directories, applying layer tars to directories safely, and
// writing layer tars from directories.
package whiteout

import (
	"errors"
	"fmt"
	"strings"
)

// The OCI forms, as names in a layer tar.
const (
	Prefix       = ".wh."
	OpaqueMarker = ".wh..wh..opq"
)

// The kernel overlayfs's opaque-directory xattrs: trusted.* when mounted by
// root, user.* for unprivileged ("userxattr") mounts. Value "y".
const (
	OpaqueXattrTrusted = "trusted.overlay.opaque"
	OpaqueXattrUser    = "user.overlay.opaque"
)

// OverrideStatXattr keeps "UID:GID:MODE" that an unprivileged extraction
// could not apply (the convention of containers/storage and
// fuse-overlayfs, which read it back).
const OverrideStatXattr = "user.containers.override_stat"

// ImpliedXattr marks a directory that Layer mode created only because an
// entry beneath it needed a parent. Its metadata is not the layer's: a
// union or a flatten takes the directory's attributes from the layers
// below. (A layer is shared by every image that has it, whatever their
// lower layers, so the attributes cannot be copied at extraction.)
const ImpliedXattr = "user.strata.implied"

// Kind classifies a name in a layer.
type Kind int

// The kinds of names.
const (
	Regular  Kind = iota // an ordinary entry
	Whiteout             // ".wh.NAME": NAME is deleted
	Opaque               // ".wh..wh..opq": the directory hides what lies below
)

// ErrBareWhiteout is a name that is only the whiteout prefix.
var ErrBareWhiteout = errors.New("whiteout names nothing")

// ClassifyName classifies a base name, returning for a whiteout the name it
// deletes. Whiteouts that name nothing, ".", "..", or contain a slash are
// errors.
func ClassifyName(base string) (Kind, string, error) {
	if base == OpaqueMarker {
		return Opaque, "", nil
	}
	target, ok := strings.CutPrefix(base, Prefix)
	if !ok {
		return Regular, base, nil
	}
	switch {
	case target == "":
		return 0, "", fmt.Errorf("%q: %w", base, ErrBareWhiteout)
	case target == "." || target == ".." || strings.Contains(target, "/"):
		return 0, "", fmt.Errorf("%q: whiteout of %q is not allowed", base, target)
	case strings.HasPrefix(target, Prefix):
		// ".wh..wh.x" other than the opaque marker is reserved by the spec.
		return 0, "", fmt.Errorf("%q: unknown whiteout-reserved name", base)
	}
	return Whiteout, target, nil
}

// IsOverlayWhiteout reports whether st_mode and st_rdev describe the
// kernel overlayfs's whiteout: a character device 0/0.
func IsOverlayWhiteout(mode uint32, rdev uint64) bool {
	return mode&0o170000 == 0o020000 && rdev == 0
}

// IsInternalXattr reports whether an xattr belongs to the overlay
// machinery and must not travel in a layer tar or show through a union.
func IsInternalXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.") ||
		strings.HasPrefix(name, "user.strata.") || name == OverrideStatXattr
}
