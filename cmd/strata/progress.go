//go:build !strata_noregistry

package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/stratafs/strata/lazypull"
)

// progressPrinter shows a pull as it goes: on a terminal one live line per
// layer, redrawn in place; otherwise one plain line per state change.
type progressPrinter interface {
	lazypull.Progress
	Finish()
}

func newProgress(w io.Writer, tty bool) progressPrinter {
	p := &progress{w: w, tty: tty, layers: map[string]*layerLine{}, start: time.Now()}
	if tty {
		p.stop = make(chan struct{})
		p.done = make(chan struct{})
		go p.loop()
	}
	return p
}

type layerLine struct {
	id          string
	state       string
	done, total int64
	started     time.Time
	finished    time.Time
}

type progress struct {
	mu     sync.Mutex
	w      io.Writer
	tty    bool
	order  []*layerLine
	layers map[string]*layerLine
	drawn  int
	start  time.Time
	stop   chan struct{}
	done   chan struct{}
}

func (p *progress) Update(e lazypull.ProgressEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Kind == lazypull.EventResolved {
		return
	}
	l := p.layers[e.Layer]
	if l == nil {
		l = &layerLine{id: lazypull.ShortID(e.Layer), started: time.Now()}
		p.layers[e.Layer] = l
		p.order = append(p.order, l)
	}
	if e.Total > 0 {
		l.total = e.Total
	}
	state := l.state
	switch e.Kind {
	case lazypull.EventLayerStart:
		l.state, l.done, l.started = "Downloading", 0, time.Now()
	case lazypull.EventLayerBytes:
		l.done = e.Done
	case lazypull.EventLayerDone:
		l.state, l.done, l.finished = "Pull complete", l.total, time.Now()
	case lazypull.EventLayerLazy:
		l.state, l.done, l.finished = "Pulled lazily", e.Done, time.Now()
	case lazypull.EventLayerExists:
		l.state = "Already exists"
	case lazypull.EventLayerRetry:
		l.state = "Retrying"
	}
	if !p.tty && state != l.state {
		switch l.state {
		case "Pull complete":
			fmt.Fprintf(p.w, "%s: Pull complete (%s in %s)\n", l.id, humanSize(l.total), l.finished.Sub(l.started).Round(time.Millisecond))
		case "Pulled lazily":
			fmt.Fprintf(p.w, "%s: Pulled lazily (eStargz TOC, %s of %s)\n", l.id, humanSize(l.done), humanSize(l.total))
		case "Retrying":
			fmt.Fprintf(p.w, "%s: Retrying after: %v\n", l.id, e.Err)
		default:
			fmt.Fprintf(p.w, "%s: %s\n", l.id, l.state)
		}
	}
}

func (p *progress) loop() {
	defer close(p.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			p.redraw()
			return
		case <-t.C:
			p.redraw()
		}
	}
}

// redraw moves the cursor up over the lines drawn last time and rewrites
// them, as docker pull does.
func (p *progress) redraw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	for _, l := range p.order {
		b.WriteString("\x1b[2K")
		switch l.state {
		case "Downloading", "Retrying":
			el := time.Since(l.started).Seconds()
			rate := 0.0
			if el > 0 {
				rate = float64(l.done) / el
			}
			fmt.Fprintf(&b, "%s: %-11s %s %s/%s %s/s\n", l.id, l.state, bar(l.done, l.total), humanSize(l.done), humanSize(l.total), humanSize(int64(rate)))
		default:
			fmt.Fprintf(&b, "%s: %s\n", l.id, l.state)
		}
	}
	p.drawn = len(p.order)
	io.WriteString(p.w, b.String())
}

func bar(done, total int64) string {
	const width = 30
	n := 0
	if total > 0 {
		n = int(done * width / total)
	}
	n = min(max(n, 0), width)
	return "[" + strings.Repeat("=", n) + ">" + strings.Repeat(" ", width-n) + "]"
}

// Finish draws the final state and a summary line.
func (p *progress) Finish() {
	if p.tty {
		close(p.stop)
		<-p.done
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var bytes, lazyBytes int64
	n, lazy := 0, 0
	for _, l := range p.order {
		switch l.state {
		case "Pull complete":
			bytes += l.total
			n++
		case "Pulled lazily":
			lazyBytes += l.done
			lazy++
		}
	}
	el := time.Since(p.start)
	if n > 0 {
		fmt.Fprintf(p.w, "Fetched %d layer(s), %s in %s (%s/s)\n", n, humanSize(bytes), el.Round(time.Millisecond), humanSize(int64(float64(bytes)/el.Seconds())))
	}
	if lazy > 0 {
		fmt.Fprintf(p.w, "Pulled %d eStargz layer(s) lazily: %s of tables of contents in %s; files are fetched when read\n", lazy, humanSize(lazyBytes), el.Round(time.Millisecond))
	}
}
