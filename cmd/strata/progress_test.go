//go:build !strata_noregistry

package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stratafs/strata/lazypull"
)

const layerA = "sha256:aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000"
const layerB = "sha256:bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000"

func feed(p progressPrinter) {
	p.Update(lazypull.ProgressEvent{Kind: lazypull.EventResolved, Total: 2})
	p.Update(lazypull.ProgressEvent{Kind: lazypull.EventLayerExists, Layer: layerB, Total: 10})
	p.Update(lazypull.ProgressEvent{Kind: lazypull.EventLayerStart, Layer: layerA, Total: 2000})
	p.Update(lazypull.ProgressEvent{Kind: lazypull.EventLayerBytes, Layer: layerA, Done: 1000, Total: 2000})
	p.Update(lazypull.ProgressEvent{Kind: lazypull.EventLayerDone, Layer: layerA, Done: 2000, Total: 2000})
	p.Finish()
}

func TestProgressPlain(t *testing.T) {
	var b bytes.Buffer
	feed(newProgress(&b, false))
	out := b.String()
	for _, want := range []string{"bbbbbbbbbbbb: Already exists\n", "aaaaaaaaaaaa: Downloading\n", "aaaaaaaaaaaa: Pull complete (2kB in", "Fetched 1 layer(s), 2kB"} {
		if !strings.Contains(out, want) {
			t.Errorf("plain progress lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("plain progress has terminal escapes:\n%q", out)
	}
}

func TestProgressTerminal(t *testing.T) {
	var b bytes.Buffer
	feed(newProgress(&b, true))
	out := b.String()
	// One line per layer, redrawn in place: the final frame moves up over
	// the two lines it drew before.
	if !strings.Contains(out, "\x1b[2K") || !strings.Contains(out, "aaaaaaaaaaaa: Pull complete") || !strings.Contains(out, "bbbbbbbbbbbb: Already exists") {
		t.Errorf("terminal progress:\n%q", out)
	}
	if !strings.Contains(out, "Fetched 1 layer(s)") {
		t.Errorf("no summary:\n%q", out)
	}
}
