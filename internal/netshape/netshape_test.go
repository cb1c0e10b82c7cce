package netshape

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestShapedTransfer sends 1 MB through a 4 MB/s link with a 50 ms round
// trip: it arrives whole and intact, counted, and no faster than the link
// allows (a lower bound, not a timing assertion on the machine).
func TestShapedTransfer(t *testing.T) {
	body := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })}
	go srv.Serve(ln)
	defer srv.Close()
	p, err := Listen(ln.Addr().String(), Link{BytesPerSecond: 4 << 20, RTT: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	start := time.Now()
	resp, err := http.Get("http://" + p.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || string(got) != body {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
	// 1 MiB at 4 MiB/s is 250 ms, plus the connection's and the request's
	// round trips.
	if took < 300*time.Millisecond {
		t.Errorf("1 MiB over a 4 MiB/s, 50 ms link took %v: the shaper does not shape", took)
	}
	if n := p.BytesDown(); n < int64(len(body)) {
		t.Errorf("counted %d bytes down, want at least %d", n, len(body))
	}
}
