//go:build !strata_noregistry

package lazypull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Mirror serves the content of Registry ("docker.io" when a mirror URL is
// given alone, as with Docker's registry-mirrors) from Host over Scheme.
type Mirror struct {
	Registry string
	Host     string
	Insecure bool
}

// ParseMirror parses "URL" (a Docker Hub mirror, like dockerd's
// --registry-mirror) or "REGISTRY=URL" (a mirror of REGISTRY). URL is
// http(s)://host[:port] or a bare host[:port] (HTTPS, HTTP on loopback).
func ParseMirror(s string) (Mirror, error) {
	reg, u, found := strings.Cut(s, "=")
	if !found {
		reg, u = dockerHub, s
	}
	if reg == "index.docker.io" || reg == "registry-1.docker.io" {
		reg = dockerHub
	}
	m := Mirror{Registry: reg}
	if strings.Contains(u, "://") {
		pu, err := url.Parse(u)
		if err != nil || pu.Host == "" || (pu.Scheme != "http" && pu.Scheme != "https") || strings.Trim(pu.Path, "/") != "" {
			return Mirror{}, fmt.Errorf("invalid registry mirror %q: want [REGISTRY=]http(s)://host[:port]", s)
		}
		m.Host, m.Insecure = pu.Host, pu.Scheme == "http"
	} else {
		m.Host = u
	}
	if m.Host == "" || strings.ContainsAny(m.Host, "/ ") || reg == "" {
		return Mirror{}, fmt.Errorf("invalid registry mirror %q: want [REGISTRY=]http(s)://host[:port]", s)
	}
	if _, err := name.NewRegistry(m.Host); err != nil {
		return Mirror{}, fmt.Errorf("invalid registry mirror %q: %w", s, err)
	}
	return m, nil
}

// Retry is how operations against a registry are retried: network faults,
// 5xx, 429 and 408 are retried with exponential backoff.
type Retry struct {
	Attempts int           // total attempts; 0 means 5
	Initial  time.Duration // first backoff; 0 means 250ms
	// MaxElapsed, when set, retries until this much time has passed
	// instead of a number of attempts (the backoff is capped at 5s).
	MaxElapsed time.Duration
}

func (r Retry) do(ctx context.Context, op string, log func(string, ...any), f func() error) error {
	attempts, delay := r.Attempts, r.Initial
	if attempts <= 0 {
		attempts = 5
	}
	if delay <= 0 {
		delay = 250 * time.Millisecond
	}
	var err error
	start := time.Now()
	for i := 1; ; i++ {
		err = f()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		if r.MaxElapsed > 0 {
			delay = min(delay, 5*time.Second)
			if time.Since(start)+delay > r.MaxElapsed {
				return fmt.Errorf("%w (gave up after %d attempts in %v)", err, i, time.Since(start).Round(time.Millisecond))
			}
		} else if i >= attempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempts)
		}
		log("retrying", "op", op, "attempt", i, "after", delay, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// retryable reports whether err is a fault that may pass: the network, a
// server error or throttling. Wrong bytes and missing things are final.
func retryable(err error) bool {
	var mm *DigestMismatchError
	if errors.As(err, &mm) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusTooManyRequests, te.StatusCode == http.StatusRequestTimeout, te.StatusCode >= 500:
			return true
		}
		return false
	}
	var le *localError
	if errors.As(err, &le) {
		return false
	}
	// Only faults of the connection: syscall.Errno also satisfies
	// net.Error, and a local disk error must not be retried.
	var ue *url.Error
	var oe *net.OpError
	if errors.As(err, &ue) || errors.As(err, &oe) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var te2 *truncatedError
	return errors.As(err, &te2)
}

// localError is a failure on this machine (extraction, the disk), never
// worth a retry.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// truncatedError is a blob that ended before its declared size.
type truncatedError struct {
	Digest    string
	Got, Want int64
}

func (e *truncatedError) Error() string {
	return fmt.Sprintf("blob %s truncated: got %d of %d bytes", e.Digest, e.Got, e.Want)
}

// NotFoundError is a repository, tag or digest the registry does not have.
type NotFoundError struct {
	Ref string
	Err error
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("%s: not found: %v", e.Ref, e.Err)
}
func (e *NotFoundError) Unwrap() error { return e.Err }

func isNotFound(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return true
		}
	}
	return false
}

// source is one place to fetch a repository from: a mirror or the origin.
type source struct {
	repo   name.Repository
	mirror bool
}

func (s source) String() string { return s.repo.RegistryStr() }

// remoteOptions are the go-containerregistry options for one operation.
// Its own retries are off: Retry.do retries whole operations, so a delay
// schedule is not multiplied.
func (p *Puller) remoteOptions(ctx context.Context) []remote.Option {
	kc := p.opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	o := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithRetryBackoff(remote.Backoff{Duration: time.Millisecond, Factor: 1, Steps: 1}),
		remote.WithRetryPredicate(func(error) bool { return false }),
		remote.WithRetryStatusCodes(),
		remote.WithUserAgent("strata"),
	}
	if p.opts.Transport != nil {
		o = append(o, remote.WithTransport(p.opts.Transport))
	}
	return o
}

// sources lists where to fetch ref from: matching mirrors in order, then
// the origin.
func (p *Puller) sources(ref Reference) ([]source, error) {
	var out []source
	for _, m := range p.opts.Mirrors {
		if m.Registry != ref.Registry() {
			continue
		}
		var opts []name.Option
		if m.Insecure || p.insecure(m.Host) {
			opts = append(opts, name.Insecure)
		}
		path := ref.name.RepositoryStr()
		r, err := name.NewRepository(m.Host+"/"+path, opts...)
		if err != nil {
			return nil, fmt.Errorf("mirror %s for %s: %w", m.Host, ref.Repo, err)
		}
		out = append(out, source{repo: r, mirror: true})
	}
	return append(out, source{repo: ref.name}), nil
}

func (p *Puller) insecure(host string) bool {
	for _, h := range p.opts.Insecure {
		if h == host {
			return true
		}
	}
	return false
}
