package lazypull

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// dockerHub is how Docker names its default registry to users; the
// go-containerregistry name for it is index.docker.io.
const dockerHub = "docker.io"

// Reference is an image reference resolved as Docker resolves it: a
// registry (default Docker Hub, with library/ for one-part names), a
// repository, and a tag (default latest) and/or a digest.
type Reference struct {
	// Repo is the canonical repository, e.g. "docker.io/library/busybox".
	Repo string
	// Tag is empty when the reference names only a digest.
	Tag string
	// Digest is empty unless the reference pins one ("sha256:…").
	Digest string

	name name.Repository
}

// pathComponents is the distribution reference grammar for the repository
// path; go-containerregistry accepts more (empty or dash-led components).
var pathComponents = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

// ParseReference parses s the way `docker pull` does. insecure lists
// registries reached over plain HTTP (loopback ones always are).
func ParseReference(s string, insecure ...string) (Reference, error) {
	if s == "" || strings.TrimSpace(s) != s {
		return Reference{}, fmt.Errorf("invalid reference %q", s)
	}
	var opts []name.Option
	base, _, hasDigest := strings.Cut(s, "@")
	reg := registryOf(base)
	for _, r := range insecure {
		if r == reg {
			opts = append(opts, name.Insecure)
		}
	}
	ref := Reference{}
	if hasDigest {
		d, err := name.NewDigest(s, opts...)
		if err != nil {
			return Reference{}, fmt.Errorf("invalid reference %q: %w", s, err)
		}
		ref.name = d.Context()
		ref.Digest = d.DigestStr()
		if hasExplicitTag(base) {
			t, err := name.NewTag(base, opts...)
			if err != nil {
				return Reference{}, fmt.Errorf("invalid reference %q: %w", s, err)
			}
			ref.Tag = t.TagStr()
		}
	} else {
		t, err := name.NewTag(s, append(opts, name.WithDefaultTag("latest"))...)
		if err != nil {
			return Reference{}, fmt.Errorf("invalid reference %q: %w", s, err)
		}
		ref.name = t.Context()
		ref.Tag = t.TagStr()
	}
	if !pathComponents.MatchString(ref.name.RepositoryStr()) {
		return Reference{}, fmt.Errorf("invalid reference %q: repository name must be lowercase path components of [a-z0-9] separated by '.', '_', '__' or '-'", s)
	}
	ref.Repo = canonicalRepo(ref.name)
	return ref, nil
}

// registryOf returns the registry part of a reference string as Docker
// splits it: the first component when it has a dot or a colon or is
// localhost.
func registryOf(s string) string {
	first, _, found := strings.Cut(s, "/")
	if !found {
		return dockerHub
	}
	if strings.ContainsAny(first, ".:") || first == "localhost" {
		return first
	}
	return dockerHub
}

// hasExplicitTag reports whether the last path component carries ":tag".
func hasExplicitTag(s string) bool {
	last := s[strings.LastIndex(s, "/")+1:]
	return strings.Contains(last, ":")
}

func canonicalRepo(r name.Repository) string {
	reg := r.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = dockerHub
	}
	return reg + "/" + r.RepositoryStr()
}

// Registry is the host[:port] of the reference, "docker.io" for Docker Hub.
func (r Reference) Registry() string {
	reg, _, _ := strings.Cut(r.Repo, "/")
	return reg
}

// String is the canonical form: repo[:tag][@digest].
func (r Reference) String() string {
	s := r.Repo
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// Familiar is the short form Docker prints: Docker Hub's "docker.io/" and
// "library/" dropped.
func (r Reference) Familiar() string {
	return FamiliarRepo(r.Repo)
}

// FamiliarRepo shortens a canonical repository the way Docker displays it.
func FamiliarRepo(repo string) string {
	if rest, ok := strings.CutPrefix(repo, dockerHub+"/"); ok {
		return strings.TrimPrefix(rest, "library/")
	}
	return repo
}

// nameRef is the go-containerregistry reference to fetch: by digest when
// pinned, else by tag.
func (r Reference) nameRef() name.Reference {
	if r.Digest != "" {
		return r.name.Digest(r.Digest)
	}
	return r.name.Tag(r.Tag)
}
