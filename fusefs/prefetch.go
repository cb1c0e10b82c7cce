package fusefs

import (
	"context"
	"sync"

	"github.com/stratafs/strata/layertree"
)

// prefetcher reads ahead: once a directory is merged, the lower listings
// of its subdirectories are read in the background, since a walk, ls -R
// or a build will list them next. The reads overlap each other and the
// round trips to the kernel, which on a cold cache hides most of the
// time spent waiting for the disk. Listings are kept until merge takes
// them, up to maxListings; read-ahead never delays a request.
type prefetcher struct {
	mu      sync.Mutex
	pending map[layerRef]*prefetched
	order   []layerRef    // oldest first, for dropping when full
	queue   []*prefetched // waiting to be read
	workers int
}

type prefetched struct {
	ref  layerRef
	done chan struct{}
	ents []layertree.Entry
	err  error
}

const (
	maxListings    = 512
	maxQueued      = 256
	prefetchers    = 4
	prefetchPerDir = 64
)

func newPrefetcher() *prefetcher {
	return &prefetcher{pending: map[layerRef]*prefetched{}}
}

// take returns the listing read ahead for ref, waiting if it is being
// read, or false when there is none.
func (p *prefetcher) take(ref layerRef) ([]layertree.Entry, error, bool) {
	p.mu.Lock()
	pf, ok := p.pending[ref]
	if ok {
		delete(p.pending, ref)
	}
	p.mu.Unlock()
	if !ok {
		return nil, nil, false
	}
	<-pf.done
	return pf.ents, pf.err, true
}

// start queues refs for reading in the background; what does not fit
// in the queue is left to be read when needed.
func (p *prefetcher) start(u *Union, refs []layerRef) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ref := range refs {
		if _, ok := p.pending[ref]; ok {
			continue
		}
		if len(p.queue) >= maxQueued {
			break
		}
		for len(p.pending) >= maxListings && len(p.order) > 0 {
			delete(p.pending, p.order[0])
			p.order = p.order[1:]
		}
		pf := &prefetched{ref: ref, done: make(chan struct{})}
		p.pending[ref] = pf
		p.order = append(p.order, ref)
		p.queue = append(p.queue, pf)
	}
	for p.workers < prefetchers && len(p.queue) > 0 {
		p.workers++
		go p.work(u)
	}
}

// work reads queued listings until the queue is empty.
func (p *prefetcher) work(u *Union) {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.workers--
			p.mu.Unlock()
			return
		}
		pf := p.queue[0]
		p.queue = p.queue[1:]
		p.mu.Unlock()
		// Read even if dropped meanwhile: merge may be waiting for it.
		pf.ents, pf.err = u.layers[pf.ref.idx].ReadDir(context.Background(), pf.ref.path)
		close(pf.done)
	}
}
