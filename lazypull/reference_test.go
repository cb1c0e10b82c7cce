package lazypull

import (
	"strings"
	"testing"
)

func TestParseReference(t *testing.T) {
	const dgst = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := []struct {
		in, repo, tag, digest, familiar string
	}{
		{"busybox", "docker.io/library/busybox", "latest", "", "busybox"},
		{"busybox:1.36", "docker.io/library/busybox", "1.36", "", "busybox"},
		{"user/app", "docker.io/user/app", "latest", "", "user/app"},
		{"docker.io/library/busybox:latest", "docker.io/library/busybox", "latest", "", "busybox"},
		{"index.docker.io/library/busybox", "docker.io/library/busybox", "latest", "", "busybox"},
		{"localhost/app", "localhost/app", "latest", "", "localhost/app"},
		{"127.0.0.1:5000/ns/app:v2", "127.0.0.1:5000/ns/app", "v2", "", "127.0.0.1:5000/ns/app"},
		{"quay.io/a/b/c:t", "quay.io/a/b/c", "t", "", "quay.io/a/b/c"},
		{"app@" + dgst, "docker.io/library/app", "", dgst, "app"},
		{"app:tag@" + dgst, "docker.io/library/app", "tag", dgst, "app"},
		{"host:5000/app:tag@" + dgst, "host:5000/app", "tag", dgst, "host:5000/app"},
	}
	for _, c := range cases {
		r, err := ParseReference(c.in)
		if err != nil {
			t.Errorf("ParseReference(%q): %v", c.in, err)
			continue
		}
		if r.Repo != c.repo || r.Tag != c.tag || r.Digest != c.digest || r.Familiar() != c.familiar {
			t.Errorf("ParseReference(%q) = repo %q tag %q digest %q familiar %q; want %q %q %q %q",
				c.in, r.Repo, r.Tag, r.Digest, r.Familiar(), c.repo, c.tag, c.digest, c.familiar)
		}
	}
}

func TestParseReferenceMalformed(t *testing.T) {
	for _, s := range []string{"", " busybox", "Busybox", "busybox:", "busybox@sha256:12", "a//b", "busybox:tag:tag", "-x", "busybox@", "app:bad tag"} {
		if _, err := ParseReference(s); err == nil {
			t.Errorf("ParseReference(%q) succeeded; want an error", s)
		} else if want := `"` + s + `"`; !strings.Contains(err.Error(), want) {
			t.Errorf("ParseReference(%q) error %q does not name the reference", s, err)
		}
	}
}
