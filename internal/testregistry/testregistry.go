// Package testregistry runs the Distribution registry in process on a
// loopback port, for tests and the demo: in-memory or on-disk storage,
// optional basic or bearer-token auth (with a token server of its own),
// and hooks to inject faults and count requests.
package testregistry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// AuthMode selects how the registry authenticates clients.
type AuthMode int

// The auth modes.
const (
	AuthNone AuthMode = iota
	AuthBasic
	AuthToken
)

func (m AuthMode) String() string {
	return [...]string{"none", "basic", "token"}[m]
}

// Options configure a registry.
type Options struct {
	Auth               AuthMode
	Username, Password string
	// TokenTTL is how long issued tokens live (default 5 minutes). The
	// registry allows a minute of clock leeway on top.
	TokenTTL time.Duration
	// Middleware wraps the registry's handler, to inject faults.
	Middleware func(http.Handler) http.Handler
	// StorageDir keeps blobs on disk; "" keeps them in memory.
	StorageDir string
}

// Requests counts what clients asked for.
type Requests struct {
	Total, ManifestGets, BlobGets, TokenGets int64
}

// Registry is a running registry.
type Registry struct {
	// Addr is "127.0.0.1:PORT".
	Addr string

	srv      *http.Server
	tmp      string
	down     atomic.Bool
	total    atomic.Int64
	manifest atomic.Int64
	blob     atomic.Int64
	tokens   atomic.Int64
	signer   jose.Signer
	opts     Options
}

// New starts a registry on 127.0.0.1:0.
func New(ctx context.Context, opts Options) (*Registry, error) {
	// Distribution logs through logrus; the tests' output stays clean.
	logrus.SetOutput(io.Discard)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Registry{Addr: ln.Addr().String(), opts: opts}
	tmp, err := os.MkdirTemp("", "testregistry-")
	if err != nil {
		ln.Close()
		return nil, err
	}
	r.tmp = tmp
	cfg := &configuration.Configuration{}
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true
	cfg.HTTP.Addr = r.Addr
	cfg.HTTP.Secret = "strata-test-secret"
	if opts.StorageDir != "" {
		cfg.Storage = configuration.Storage{"filesystem": configuration.Parameters{"rootdirectory": opts.StorageDir}}
	} else {
		cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}}
	}
	cfg.Storage["delete"] = configuration.Parameters{"enabled": true}
	cfg.Storage["maintenance"] = configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}}
	switch opts.Auth {
	case AuthBasic:
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			return nil, err
		}
		p := filepath.Join(tmp, "htpasswd")
		if err := os.WriteFile(p, []byte(opts.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			return nil, err
		}
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "strata-test", "path": p}}
	case AuthToken:
		bundle, err := r.newSigner()
		if err != nil {
			return nil, err
		}
		p := filepath.Join(tmp, "root.pem")
		if err := os.WriteFile(p, bundle, 0o600); err != nil {
			return nil, err
		}
		cfg.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm": "http://" + r.Addr + "/token", "service": "strata-test", "issuer": "strata-test-issuer", "rootcertbundle": p,
		}}
	}
	app := handlers.NewApp(ctx, cfg)
	var h http.Handler = app
	if opts.Middleware != nil {
		h = opts.Middleware(h)
	}
	mux := http.NewServeMux()
	mux.Handle("/token", http.HandlerFunc(r.serveToken))
	mux.Handle("/", h)
	r.srv = &http.Server{Handler: r.count(mux), ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

// Start is New for a test: it fails the test on error and closes the
// registry when the test ends.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	r, err := New(context.Background(), opts)
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Close stops the registry.
func (r *Registry) Close() error {
	err := r.srv.Close()
	os.RemoveAll(r.tmp)
	return err
}

// Ref is a reference to repoAndTag in this registry.
func (r *Registry) Ref(repoAndTag string) string { return r.Addr + "/" + repoAndTag }

// SetDown makes the registry drop every connection without an answer, as
// a dead server behind a live port does, until SetDown(false).
func (r *Registry) SetDown(down bool) { r.down.Store(down) }

// Requests returns the counts so far.
func (r *Registry) Requests() Requests {
	return Requests{Total: r.total.Load(), ManifestGets: r.manifest.Load(), BlobGets: r.blob.Load(), TokenGets: r.tokens.Load()}
}

func (r *Registry) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.down.Load() {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		r.total.Add(1)
		if req.Method == http.MethodGet {
			switch {
			case strings.Contains(req.URL.Path, "/manifests/"):
				r.manifest.Add(1)
			case strings.Contains(req.URL.Path, "/blobs/"):
				r.blob.Add(1)
			case req.URL.Path == "/token":
				r.tokens.Add(1)
			}
		}
		next.ServeHTTP(w, req)
	})
}

// newSigner makes the token server's key and the self-signed certificate
// the registry trusts, returned as a PEM bundle.
func (r *Registry) newSigner() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata-test-token-signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("x5c", []string{base64.StdEncoding.EncodeToString(der)})
	r.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, opts)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// serveToken is the token server of the Docker registry auth spec: basic
// credentials in, a signed JWT granting the requested scopes out.
func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	if r.signer == nil {
		http.NotFound(w, req)
		return
	}
	user, pass, ok := req.BasicAuth()
	if !ok || user != r.opts.Username || pass != r.opts.Password {
		w.Header().Set("WWW-Authenticate", `Basic realm="strata-test"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
		return
	}
	var access []*token.ResourceActions
	for _, scope := range req.URL.Query()["scope"] {
		parts := strings.Split(scope, ":")
		if len(parts) < 3 {
			continue
		}
		access = append(access, &token.ResourceActions{Type: parts[0], Name: strings.Join(parts[1:len(parts)-1], ":"), Actions: strings.Split(parts[len(parts)-1], ",")})
	}
	ttl := r.opts.TokenTTL
	if ttl == 0 {
		ttl = 5 * time.Minute
	}
	now := time.Now()
	claims := token.ClaimSet{
		Issuer: "strata-test-issuer", Subject: user, Audience: []string{"strata-test"},
		Expiration: now.Add(ttl).Unix(), NotBefore: now.Add(-time.Minute).Unix(), IssuedAt: now.Unix(),
		JWTID: fmt.Sprint(now.UnixNano()), Access: access,
	}
	raw, err := jwt.Signed(r.signer).Claims(claims).Serialize()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": raw, "access_token": raw, "expires_in": int(ttl.Seconds()), "issued_at": now.UTC().Format(time.RFC3339)})
}
