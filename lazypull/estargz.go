//go:build !strata_noregistry

package lazypull

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/internal/fsutil"
	"github.com/stratafs/strata/whiteout"
)

// TOCDigestAnnotation is the layer annotation holding the digest of an
// eStargz layer's table of contents.
const TOCDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"

// tocFile is where a lazy layer keeps the tail of its blob: the TOC and
// the footer, from LayerRecord.TOCOffset to the end.
const tocFile = "toc"

// errNotLazy is an eStargz layer strata cannot read lazily, which is
// pulled whole instead.
var errNotLazy = errors.New("layout not readable lazily")

// lazyMediaType tells whether a layer of this media type can be eStargz.
func lazyMediaType(mt string) bool {
	return mt == "application/vnd.oci.image.layer.v1.tar+gzip" || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip"
}

// pullLazy makes an eStargz layer present without its body: it fetches
// the footer and the TOC (two Range requests), checks the TOC against the
// digest the manifest gives and every entry for sanity, and stores the
// TOC. The files' bytes are fetched when read.
func (p *Puller) pullLazy(ctx context.Context, src source, l *LayerRecord) (int64, error) {
	final, err := p.store.LayerDir(l.DiffID)
	if err != nil {
		return 0, err
	}
	b := p.remote.blob(src.repo, l.Digest, l.Size)
	fetched := b.fetched.Load
	annotated := l.TOCDigest != ""
	if !annotated && l.Size < estargz.FooterSize {
		return 0, errNotLazy
	}
	tocOffset, _, err := estargz.OpenFooter(io.NewSectionReader(readerAt{ctx, b}, 0, l.Size))
	if err != nil && !annotated {
		// A plain gzip layer (or the registry failing, which the full
		// pull that follows will meet and retry).
		return fetched(), fmt.Errorf("%w: no eStargz footer", errNotLazy)
	}
	if err != nil {
		return fetched(), fmt.Errorf("layer %s is annotated eStargz but its footer is not: %w", l.Digest, err)
	}
	if tocOffset <= 0 || tocOffset >= l.Size {
		return fetched(), fmt.Errorf("layer %s: eStargz footer puts the TOC at %d, outside the %d-byte blob", l.Digest, tocOffset, l.Size)
	}
	tail, err := b.readRange(ctx, tocOffset, l.Size-tocOffset)
	if err != nil {
		return fetched(), err
	}
	// Without an annotation nothing names the TOC's digest: the one it
	// has is taken, so that every later read checks against the TOC
	// fetched now.
	_, unpacked, tocDigest, err := openTOC(tail, tocOffset, l.Size, l.TOCDigest)
	if err != nil {
		return fetched(), fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	l.Lazy, l.Source, l.TOCOffset, l.UnpackedSize = true, src.repo.Name(), tocOffset, unpacked
	l.TOCDigest, l.TOCFromFooter = tocDigest.String(), !annotated

	tmp, err := os.MkdirTemp(filepath.Dir(final), ".tmp-"+filepath.Base(final)+"-")
	if err != nil {
		return fetched(), err
	}
	defer removeAll(tmp)
	if err := fsutil.WriteFileAtomic(filepath.Join(tmp, tocFile), tail, 0o600); err != nil {
		return fetched(), &localError{err}
	}
	meta, _ := json.MarshalIndent(l, "", "  ")
	if err := fsutil.WriteFileAtomic(filepath.Join(tmp, "layer.json"), meta, 0o600); err != nil {
		return fetched(), &localError{err}
	}
	if err := os.Rename(tmp, final); err != nil {
		return fetched(), &localError{fmt.Errorf("store layer %s: %w", l.DiffID, err)}
	}
	return fetched(), fsutil.SyncDir(filepath.Dir(final))
}

// openTOC reads the TOC in a blob's tail (the bytes from tocOffset to
// size), checks it against tocDigest ("" when nothing names it) and checks
// every entry: names a layer tar may carry, data inside the blob before
// the TOC, a digest for every chunk. It returns the reader, the layer's
// unpacked size and the TOC's digest.
func openTOC(tail []byte, tocOffset, size int64, tocDigest string) (*estargz.Reader, int64, digest.Digest, error) {
	var want digest.Digest
	if tocDigest != "" {
		var err error
		if want, err = digest.Parse(tocDigest); err != nil {
			return nil, 0, "", fmt.Errorf("TOC digest annotation %q: %w", tocDigest, err)
		}
	}
	unpacked, got, err := checkTOC(tail, tocOffset, want)
	if err != nil {
		return nil, 0, "", err
	}
	r, err := readTOC(tail, tocOffset, size, got)
	return r, unpacked, got, err
}

// readTOC opens a TOC checked before (at pull): its digest is checked
// again, its entries not.
func readTOC(tail []byte, tocOffset, size int64, want digest.Digest) (*estargz.Reader, error) {
	r, err := estargz.Open(io.NewSectionReader(&tailReader{tail: tail, off: tocOffset}, 0, size), estargz.WithTOCOffset(tocOffset))
	if err != nil {
		return nil, fmt.Errorf("eStargz TOC: %w", err)
	}
	if _, err := r.VerifyTOC(want); err != nil {
		// Chunks sharing one gzip stream, or without digests: the layer
		// is sound but cannot be read chunk by chunk with checks.
		return nil, fmt.Errorf("eStargz TOC: %w: %v", errNotLazy, err)
	}
	return r, nil
}

// checkTOC checks a TOC's digest (against want, unless it is "") and its
// entries; it returns the layer's unpacked size and the TOC's digest.
func checkTOC(tail []byte, tocOffset int64, want digest.Digest) (int64, digest.Digest, error) {
	var gz estargz.GzipDecompressor
	toc, got, err := gz.ParseTOC(bytes.NewReader(tail))
	if err != nil {
		return 0, "", fmt.Errorf("eStargz TOC: %w", err)
	}
	if want != "" && got != want {
		return 0, "", &DigestMismatchError{What: "eStargz TOC", Want: want.String(), Got: got.String()}
	}
	unpacked, err := checkEntries(toc.Entries, tocOffset)
	return unpacked, got, err
}

// checkEntries refuses a TOC whose entries a layer tar could not carry
// or that point outside the blob; it returns the unpacked size.
func checkEntries(entries []*estargz.TOCEntry, tocOffset int64) (int64, error) {
	var unpacked int64
	for _, e := range entries {
		if e.Type != "chunk" {
			if _, err := whiteout.CleanName(e.Name); err != nil && e.Name != "/" && e.Name != "./" {
				return 0, fmt.Errorf("eStargz TOC: %w", err)
			}
			if e.Type == "hardlink" {
				if _, err := whiteout.CleanName(e.LinkName); err != nil {
					return 0, fmt.Errorf("eStargz TOC: hardlink %q: %w", e.Name, err)
				}
			}
		}
		switch e.Type {
		case "dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk":
		default:
			return 0, fmt.Errorf("eStargz TOC: entry %q has unknown type %q", e.Name, e.Type)
		}
		if e.Size < 0 || e.ChunkSize < 0 || e.ChunkOffset < 0 || e.InnerOffset < 0 || e.Offset < 0 {
			return 0, fmt.Errorf("eStargz TOC: entry %q has a negative size or offset", e.Name)
		}
		if (e.Type == "reg" && e.Size > 0 || e.Type == "chunk") && e.Offset >= tocOffset {
			return 0, fmt.Errorf("eStargz TOC: entry %q has data at offset %d, past the TOC at %d", e.Name, e.Offset, tocOffset)
		}
		if e.Type == "reg" {
			unpacked += e.Size
		}
	}
	return unpacked, nil
}

// tailReader serves the blob's tail from memory; the rest of the blob is
// never read through it.
type tailReader struct {
	tail []byte
	off  int64
}

func (t *tailReader) ReadAt(p []byte, off int64) (int, error) {
	if off < t.off {
		return 0, fmt.Errorf("eStargz: read at %d before the TOC at %d", off, t.off)
	}
	n := copy(p, t.tail[min(off-t.off, int64(len(t.tail))):])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
