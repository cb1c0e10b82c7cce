// Package netshape is a network shaper of its own for benchmarks and
// tests: a TCP proxy on 127.0.0.1 in front of a server that gives every
// connection a round-trip time and shares one bandwidth among them, as a
// link would. The kernel here has no netem.
package netshape

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Link is the shaped link: downstream bandwidth in bytes per second (0:
// unlimited) and round-trip time.
type Link struct {
	BytesPerSecond int64
	RTT            time.Duration
}

// Proxy is a running shaper.
type Proxy struct {
	// Addr is where clients connect ("127.0.0.1:PORT").
	Addr string

	ln       net.Listener
	upstream string
	link     Link
	// Down counts bytes sent to clients.
	down atomic.Int64

	mu       sync.Mutex
	linkFree time.Time // when the shared downstream link is next free
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

// Listen starts a shaper in front of upstream ("host:port").
func Listen(upstream string, link Link) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, upstream: upstream, link: link, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// BytesDown is how many bytes clients have received.
func (p *Proxy) BytesDown() int64 { return p.down.Load() }

// Close stops the shaper and its connections.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(c)
		}()
	}
}

func (p *Proxy) handle(client net.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Connecting costs a round trip, as a TCP handshake does.
	time.Sleep(p.link.RTT)
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		client.Close()
		return
	}
	p.track(client, true)
	p.track(up, true)
	defer func() {
		p.track(client, false)
		p.track(up, false)
		client.Close()
		up.Close()
	}()
	done := make(chan struct{}, 2)
	go func() { p.pump(ctx, up, client, false); done <- struct{}{} }()
	go func() { p.pump(ctx, client, up, true); done <- struct{}{} }()
	<-done
	<-done
}

type segment struct {
	data []byte
	at   time.Time
}

// pump copies src to dst, each segment delayed by half the round trip
// and, downstream, by its time on the shared link.
func (p *Proxy) pump(ctx context.Context, dst, src net.Conn, down bool) {
	segs := make(chan segment, 256)
	go func() {
		defer close(segs)
		for {
			buf := make([]byte, 16<<10)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case segs <- segment{buf[:n], time.Now()}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for s := range segs {
		due := s.at.Add(p.link.RTT / 2)
		if down && p.link.BytesPerSecond > 0 {
			p.mu.Lock()
			start := maxTime(p.linkFree, time.Now())
			p.linkFree = start.Add(time.Duration(int64(len(s.data)) * int64(time.Second) / p.link.BytesPerSecond))
			on := p.linkFree
			p.mu.Unlock()
			due = maxTime(due, on)
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		if down {
			p.down.Add(int64(len(s.data)))
		}
		if _, err := dst.Write(s.data); err != nil {
			return
		}
	}
	// The source ended: pass the half-close on.
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
