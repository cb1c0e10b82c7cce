//go:build !strata_noregistry

package lazypull

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Remote reads parts of blobs from registries with HTTP Range requests,
// for lazy layers: one authenticated transport per repository, which
// renews its token when the registry says it expired.
type Remote struct {
	opts Options
	log  *slog.Logger

	mu         sync.Mutex
	transports map[string]http.RoundTripper
	// Fetched counts blob bytes received.
	Fetched atomic.Int64
	// onDemand counts reads a process waits for; background fetches
	// yield to them.
	onDemand atomic.Int32
}

// yielding makes a background stream wait while on-demand reads are in
// flight: the connection's receive window fills and the server pauses,
// so the link is theirs.
type yielding struct {
	r io.Reader
	m *Remote
}

func (y yielding) Read(p []byte) (int, error) {
	for i := 0; y.m.onDemand.Load() > 0 && i < 5000; i++ {
		time.Sleep(2 * time.Millisecond)
	}
	return y.r.Read(p)
}

type backgroundKey struct{}

// inBackground marks ctx as that of a background fetch, which yields to
// the on-demand reads of m.
func inBackground(ctx context.Context, m *Remote) context.Context {
	return context.WithValue(ctx, backgroundKey{}, m)
}

// NewRemote returns a Remote configured as a Puller would be.
func NewRemote(opts Options) *Remote {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Remote{opts: opts, log: log, transports: map[string]http.RoundTripper{}}
}

// repository parses a repository recorded in the store, reached over
// plain HTTP when configured insecure (loopback always is).
func (r *Remote) repository(repo string) (name.Repository, error) {
	rp, err := name.NewRepository(repo)
	if err != nil {
		return rp, fmt.Errorf("repository %q: %w", repo, err)
	}
	for _, h := range r.opts.Insecure {
		if h == rp.RegistryStr() {
			return name.NewRepository(repo, name.Insecure)
		}
	}
	return rp, nil
}

func (r *Remote) transport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.transports[repo.Name()]; ok {
		return t, nil
	}
	kc := r.opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	auth, err := authn.Resolve(ctx, kc, repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", repo, err)
	}
	base := r.opts.Transport
	if base == nil {
		base = remote.DefaultTransport
	}
	var t http.RoundTripper
	err = r.opts.Retry.do(ctx, "registry "+repo.RegistryStr(), r.log.Debug, func() error {
		var err error
		t, err = transport.NewWithContext(ctx, repo.Registry, auth, base, []string{repo.Scope(transport.PullScope)})
		return err
	})
	if err != nil {
		return nil, err
	}
	r.transports[repo.Name()] = t
	return t, nil
}

// blob is one blob of a repository, read in ranges.
type blob struct {
	r      *Remote
	repo   name.Repository
	digest string
	size   int64
	// fetched counts the bytes received for this blob.
	fetched atomic.Int64
}

func (r *Remote) blob(repo name.Repository, digest string, size int64) *blob {
	return &blob{r: r, repo: repo, digest: digest, size: size}
}

// readRangeWaiting is readRange for a process waiting on a read: faults
// are retried for as long as Options.ReadTimeout allows.
func (b *blob) readRangeWaiting(ctx context.Context, off, n int64) ([]byte, error) {
	return b.readRangeWith(ctx, b.waiting(), off, n)
}

// waiting is the retry of a read a process waits for: for as long as
// Options.ReadTimeout allows (30 seconds when unset).
func (b *blob) waiting() Retry {
	r := b.r.opts.Retry
	r.MaxElapsed = cmp.Or(b.r.opts.ReadTimeout, 30*time.Second)
	return r
}

// readRange returns the n bytes at off, retrying faults of the network
// and the registry with backoff.
func (b *blob) readRange(ctx context.Context, off, n int64) ([]byte, error) {
	return b.readRangeWith(ctx, b.r.opts.Retry, off, n)
}

func (b *blob) readRangeWith(ctx context.Context, retry Retry, off, n int64) ([]byte, error) {
	var out []byte
	err := retry.do(ctx, "blob "+b.digest, b.r.log.Debug, func() error {
		var err error
		out, err = b.get(ctx, off, n)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("blob %s bytes %d-%d: %w", b.digest, off, off+n-1, err)
	}
	return out, nil
}

func (b *blob) get(ctx context.Context, off, n int64) ([]byte, error) {
	body, err := b.open(ctx, off, n)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	buf := make([]byte, n)
	got, err := io.ReadFull(body, buf)
	if err != nil {
		return nil, &truncatedError{Digest: b.digest, Got: int64(got), Want: n}
	}
	return buf, nil
}

// stream opens the n bytes at off as a stream, retrying the request (not
// the reading) as readRange does.
func (b *blob) stream(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	var body io.ReadCloser
	err := b.r.opts.Retry.do(ctx, "blob "+b.digest, b.r.log.Debug, func() error {
		var err error
		body, err = b.open(ctx, off, n)
		return err
	})
	return body, err
}

// counted counts what is read through it as fetched.
type counted struct {
	io.ReadCloser
	b *blob
}

func (c counted) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.b.r.Fetched.Add(int64(n))
	c.b.fetched.Add(int64(n))
	return n, err
}

// open sends a Range request for n bytes at off and returns the body,
// positioned at off.
func (b *blob) open(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	resp, err := b.request(ctx, []span{{off, n}})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		// The registry ignored the range: skip to it.
		if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
			resp.Body.Close()
			return nil, &truncatedError{Digest: b.digest, Got: 0, Want: off + n}
		}
	}
	return counted{resp.Body, b}, nil
}

// request sends a GET of the blob for the spans (one Range header) and
// returns a response of the whole blob or of the ranges.
func (b *blob) request(ctx context.Context, spans []span) (*http.Response, error) {
	var ranges []string
	for _, s := range spans {
		if s.off < 0 || s.n <= 0 || s.off+s.n > b.size {
			return nil, fmt.Errorf("blob %s: range %d+%d outside its %d bytes", b.digest, s.off, s.n, b.size)
		}
		ranges = append(ranges, fmt.Sprintf("%d-%d", s.off, s.off+s.n-1))
	}
	t, err := b.r.transport(ctx, b.repo)
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", b.repo.Registry.Scheme(), b.repo.RegistryStr(), b.repo.RepositoryStr(), b.digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", "bytes="+strings.Join(ranges, ","))
	req.Header.Set("User-Agent", "strata")
	resp, err := (&http.Client{Transport: t}).Do(req)
	if err != nil {
		return nil, err
	}
	if err := transport.CheckError(resp, http.StatusPartialContent, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

// readerAt serves ReadAt from the blob, for readers that want one.
type readerAt struct {
	ctx context.Context
	b   *blob
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	n := min(int64(len(p)), r.b.size-off)
	if n <= 0 {
		return 0, io.EOF
	}
	data, err := r.b.readRange(r.ctx, off, n)
	if err != nil {
		return 0, err
	}
	copy(p, data)
	if int(n) < len(p) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// span is a byte range of a blob.
type span struct{ off, n int64 }

// readSpans returns the bytes of several spans, in one multi-range
// request where the registry answers with multipart/byteranges, else one
// request a span.
func (b *blob) readSpans(ctx context.Context, spans []span) ([][]byte, error) {
	if len(spans) == 1 {
		d, err := b.readRangeWaiting(ctx, spans[0].off, spans[0].n)
		return [][]byte{d}, err
	}
	var out [][]byte
	err := b.waiting().do(ctx, "blob "+b.digest, b.r.log.Debug, func() error {
		var err error
		out, err = b.getSpans(ctx, spans)
		return err
	})
	if errors.Is(err, errNoMultipart) {
		out = out[:0]
		for _, s := range spans {
			d, err := b.readRangeWaiting(ctx, s.off, s.n)
			if err != nil {
				return nil, err
			}
			out = append(out, d)
		}
		return out, nil
	}
	return out, err
}

var errNoMultipart = errors.New("the registry does not answer multi-range requests")

func (b *blob) getSpans(ctx context.Context, spans []span) ([][]byte, error) {
	resp, err := b.request(ctx, spans)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusPartialContent || mt != "multipart/byteranges" {
		return nil, errNoMultipart
	}
	out := make([][]byte, len(spans))
	mr := multipart.NewReader(resp.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, &truncatedError{Digest: b.digest}
		}
		var start, end, total int64
		if _, err := fmt.Sscanf(part.Header.Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &total); err != nil {
			return nil, fmt.Errorf("blob %s: part with Content-Range %q", b.digest, part.Header.Get("Content-Range"))
		}
		i := slices.IndexFunc(spans, func(s span) bool { return s.off == start && s.off+s.n-1 == end })
		if i < 0 {
			return nil, fmt.Errorf("blob %s: a part for bytes %d-%d, which were not asked for", b.digest, start, end)
		}
		data, err := io.ReadAll(io.LimitReader(part, spans[i].n+1))
		b.r.Fetched.Add(int64(len(data)))
		b.fetched.Add(int64(len(data)))
		if err != nil || int64(len(data)) != spans[i].n {
			return nil, &truncatedError{Digest: b.digest, Got: int64(len(data)), Want: spans[i].n}
		}
		out[i] = data
	}
	for i, d := range out {
		if d == nil {
			return nil, fmt.Errorf("blob %s: no part for bytes %d-%d", b.digest, spans[i].off, spans[i].off+spans[i].n-1)
		}
	}
	return out, nil
}
