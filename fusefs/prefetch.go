package fusefs

import (
	"context"
	"slices"
	"sort"
	"sync"

	"github.com/stratafs/strata/layertree"
)

// prefetcher lists lower directories before the kernel asks for them.
// When a directory is listed, its subdirectories are likely next: a tree
// walk (find, du, ls -R, a build) goes into each in name order. Reading
// their lower listings meanwhile (and their subdirectories', two levels
// down), on another core, overlaps the disk and the syscalls with the
// walker's own work; the merge then finds them done. Lower layers never
// change, so a listing read ahead stays right; the upper is always read at
// merge time.
//
// Only directories a layer says are small are read ahead (ListBytes):
// a huge one nobody enters would cost a lot, and trees without the hint
// (eStargz TOCs, already in memory) gain nothing.
type prefetcher struct {
	layers []layertree.Tree

	mu sync.Mutex
	// todo is a stack, the next to read last: the first subdirectory
	// of the last directory listed goes first, as a depth-first walk
	// goes.
	todo []layerRef
	// state of each queued, in-flight or read listing.
	state map[layerRef]*prefetch
	// read are the listings done, oldest first, for eviction; it keeps
	// refs taken since, skipped when met.
	read        []layerRef
	readEntries int
	maxEntries  int // held read and not taken, at most
	workers     int
}

type prefetch struct {
	done chan struct{} // closed when read; nil while only queued
	l    listing
	// depth below the directory whose listing queued it: 1 for its
	// subdirectories, 2 for theirs.
	depth int
	// counted: l is held in read and readEntries.
	counted bool
}

// Bounds on the work and memory read-ahead takes.
const (
	prefetchWorkers    = 2
	prefetchDirBytes   = 64 << 10 // an ext4 directory of ~2,000 names
	prefetchQueued     = 4096
	prefetchMaxEntries = 32768 // entries held read but not taken yet
	// A listed directory's subdirectories are read ahead, and theirs:
	// a walk's next listings are those, and each read ahead covers one
	// round trip of the walker's.
	prefetchDepth = 2
)

func newPrefetcher(layers []layertree.Tree) *prefetcher {
	return &prefetcher{layers: layers, state: map[layerRef]*prefetch{}, maxEntries: prefetchMaxEntries}
}

// queueChildren queues the lower directories of a directory just merged:
// those of its subdirectories that its layers list as small.
func (p *prefetcher) queueChildren(children map[string]*child, lowers []layerRef, listings []listing) {
	type item struct {
		name string
		ref  layerRef
	}
	var items []item
	for i, ref := range lowers {
		if i >= len(listings) {
			break
		}
		for _, e := range listings[i].ents {
			if !readAhead(e) {
				continue
			}
			cref := layerRef{idx: ref.idx, path: join(ref.path, e.Name)}
			if c, ok := children[e.Name]; ok && c.attrs.typ() == layertree.ModeDir && slices.Contains(c.lowers, cref) {
				items = append(items, item{e.Name, cref})
			}
		}
	}
	if len(items) == 0 {
		return
	}
	// Pushed in reverse of the order wanted: by name, and within a
	// name the top layer first.
	sort.Slice(items, func(i, j int) bool {
		if items[i].name != items[j].name {
			return items[i].name > items[j].name
		}
		return items[i].ref.idx > items[j].ref.idx
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, it := range items {
		p.push(it.ref, 1)
	}
	p.start() // also for those brought nearer
}

// push queues ref at depth, unless it is known already; then it is only
// brought nearer, and if read, its subdirectories come in reach. Called
// with p.mu held.
func (p *prefetcher) push(ref layerRef, depth int) {
	pf, ok := p.state[ref]
	if !ok {
		p.state[ref] = &prefetch{depth: depth}
		p.todo = append(p.todo, ref)
		return
	}
	if depth < pf.depth {
		pf.depth = depth
		if pf.counted {
			p.pushChildren(ref, pf)
		}
	}
}

// pushChildren queues the subdirectories of ref, just read, when they are
// near enough: the first on top, as a depth-first walk lists them before
// the next sibling. Called with p.mu held.
func (p *prefetcher) pushChildren(ref layerRef, pf *prefetch) {
	if pf.depth >= prefetchDepth {
		return
	}
	for i := len(pf.l.ents) - 1; i >= 0; i-- {
		if e := pf.l.ents[i]; readAhead(e) {
			p.push(layerRef{idx: ref.idx, path: join(ref.path, e.Name)}, pf.depth+1)
		}
	}
}

// start trims the queue to its bound and starts workers for it. Called
// with p.mu held.
func (p *prefetcher) start() {
	if over := len(p.todo) - prefetchQueued; over > 0 {
		for _, ref := range p.todo[:over] { // the oldest, least likely next
			if pf, ok := p.state[ref]; ok && pf.done == nil {
				delete(p.state, ref) // else a later push of it, started
			}
		}
		p.todo = append(p.todo[:0], p.todo[over:]...)
	}
	for p.workers < prefetchWorkers && p.workers < len(p.todo) {
		p.workers++
		go p.work()
	}
}

// work reads queued listings until none is left.
func (p *prefetcher) work() {
	ctx := context.Background()
	for {
		p.mu.Lock()
		if len(p.todo) == 0 {
			p.workers--
			p.mu.Unlock()
			return
		}
		ref := p.todo[len(p.todo)-1]
		p.todo = p.todo[:len(p.todo)-1]
		pf := p.state[ref]
		if pf == nil || pf.done != nil {
			// Taken while queued, or queued again since and read.
			p.mu.Unlock()
			continue
		}
		pf.done = make(chan struct{})
		p.mu.Unlock()

		ents, err := p.layers[ref.idx].ReadDir(ctx, ref.path)

		p.mu.Lock()
		pf.l = listing{ents, err}
		if p.state[ref] == pf { // not taken while read
			pf.counted = true
			p.read = append(p.read, ref)
			p.readEntries += len(ents)
			p.evict()
		}
		close(pf.done)
		p.pushChildren(ref, pf)
		p.start()
		p.mu.Unlock()
	}
}

// evict drops the oldest listings read and not taken while they hold more
// entries than allowed. Called with p.mu held.
func (p *prefetcher) evict() {
	for p.readEntries > p.maxEntries && len(p.read) > 0 {
		ref := p.read[0]
		p.read = p.read[1:]
		if pf, ok := p.state[ref]; ok && pf.counted {
			p.readEntries -= len(pf.l.ents)
			delete(p.state, ref)
		}
	}
	if len(p.read) > 2*prefetchQueued { // mostly refs taken since
		kept := p.read[:0]
		for _, ref := range p.read {
			if pf, ok := p.state[ref]; ok && pf.counted {
				kept = append(kept, ref)
			}
		}
		p.read = kept
	}
}

// idle reports whether nothing is queued or being read.
func (p *prefetcher) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.workers == 0
}

// take returns the listing read ahead for ref, waiting for it when it is
// being read; false when it was not queued, or queued and not started
// (then the caller reads it, and the queue forgets it).
func (p *prefetcher) take(ctx context.Context, ref layerRef) (listing, bool) {
	p.mu.Lock()
	pf, ok := p.state[ref]
	if !ok {
		p.mu.Unlock()
		return listing{}, false
	}
	delete(p.state, ref)
	started := pf.done != nil
	p.mu.Unlock()
	if !started {
		return listing{}, false // the worker that pops it finds no state
	}
	select {
	case <-pf.done:
	case <-ctx.Done():
		return listing{}, false
	}
	p.mu.Lock()
	if pf.counted {
		p.readEntries -= len(pf.l.ents)
		pf.counted = false
	}
	p.mu.Unlock()
	return pf.l, true
}

// readAhead tells a directory entry worth reading ahead: a directory its
// layer says is small (see prefetcher).
func readAhead(e layertree.Entry) bool {
	return e.IsDir() && !e.Whiteout && e.ListBytes > 0 && e.ListBytes <= prefetchDirBytes
}
