package whiteout

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzApply feeds arbitrary tar streams to Apply in both modes: it may
// refuse them, but must never panic nor write outside its target.
//
//	go test -fuzz=FuzzApply ./whiteout
func FuzzApply(f *testing.F) {
	seeds := [][]ent{
		{dir("etc/"), file("etc/passwd", "root"), symlink("ln", "etc"), hardlink("hl", "etc/passwd")},
		{file(".wh.etc", ""), dir("opq/"), file("opq/.wh..wh..opq", ""), file("opq/x", "x")},
		{symlink("evil", "../outside"), file("evil/pwned", "x")},
		{hardlink("evil", "../outside/sentinel")},
		{file("/abs", "x"), file("../up", "x")},
		{{name: "fifo", typ: tar.TypeFifo, mode: 0o644}, {name: "dev", typ: tar.TypeChar, mode: 0o644}},
		{dir("d/"), file("d", "replaces dir"), dir("d/")},
	}
	for _, s := range seeds {
		f.Add(mktar(f, s...), false)
		f.Add(mktar(f, s...), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, layerMode bool) {
		base := t.TempDir()
		target := filepath.Join(base, "target")
		outside := filepath.Join(base, "outside")
		os.MkdirAll(outside, 0o755)
		os.WriteFile(filepath.Join(outside, "sentinel"), []byte("keep"), 0o644)
		mode := Flatten
		if layerMode {
			mode = Layer
		}
		// Unprivileged options: the fuzzer must not make device nodes.
		Apply(context.Background(), bytes.NewReader(data), target, Options{Mode: mode, Format: FormatOCI, MaxEntrySize: 1 << 20})
		assertUntouched(t, base)
	})
}
