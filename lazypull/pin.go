package lazypull

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/stratafs/strata/internal/fsutil"
)

// Pin marks an image in use (a mount, a container) for as long as the
// calling process lives: the pin file holds the manifest digest and the
// process holds its flock, so a pin whose owner died is known stale.
// Remove refuses to delete a pinned image.
func (s *Store) Pin(rec *ImageRecord, owner string) (unpin func(), err error) {
	dir := filepath.Join(s.root, "pins")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if owner == "" || strings.ContainsAny(owner, "/\x00") {
		return nil, fmt.Errorf("invalid pin owner %q", owner)
	}
	p := filepath.Join(dir, owner+".pin")
	l, ok := fsutil.TryLock(p)
	if !ok {
		return nil, fmt.Errorf("pin %s is held by another process", owner)
	}
	if err := os.WriteFile(p, []byte(rec.ManifestDigest+"\n"), 0o600); err != nil {
		l.Unlock()
		return nil, err
	}
	return func() {
		os.Remove(p)
		l.Unlock()
	}, nil
}

// pinsOf counts live pins of an image and removes stale ones.
func (s *Store) pinsOf(rec *ImageRecord) int {
	dir := filepath.Join(s.root, "pins")
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != rec.ManifestDigest {
			continue
		}
		if l, ok := fsutil.TryLock(p); ok {
			os.Remove(p) // its owner is gone
			l.Unlock()
			continue
		}
		n++
	}
	return n
}
