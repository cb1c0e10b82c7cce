package main

import (
	"strings"
	"testing"
)

func TestParseMountFlags(t *testing.T) {
	for _, c := range []struct {
		vols, mounts, tmpfs []string
		want                string // kind src dst ro copy data, or the error
	}{
		{vols: []string{"data:/d"}, want: "volume data /d false true "},
		{vols: []string{"data:/d:ro,nocopy"}, want: "volume data /d true false "},
		{vols: []string{"/host/p:/d/:rw,z"}, want: "bind /host/p /d false true "},
		{vols: []string{"/anon"}, want: "volume  /anon false true "},
		{vols: []string{"rel:dir"}, want: "must be absolute"},
		{vols: []string{"data:/"}, want: "cannot mount over the root"},
		{vols: []string{"a:b:c:d"}, want: "too many colons"},
		{vols: []string{"./x:/d"}, want: "neither an absolute host path nor a valid volume name"},
		{vols: []string{"data:/d:exec"}, want: `unknown option "exec"`},
		{mounts: []string{"type=bind,src=/h,dst=/d,readonly"}, want: "bind /h /d true true "},
		{mounts: []string{"type=volume,source=v,target=/d,volume-nocopy=true"}, want: "volume v /d false false "},
		{mounts: []string{"type=tmpfs,dst=/t,tmpfs-size=1m,tmpfs-mode=1777"}, want: "tmpfs  /t false true size=1048576,mode=1777"},
		{mounts: []string{"type=nfs,dst=/d"}, want: `unknown type "nfs"`},
		{mounts: []string{"type=bind,src=rel,dst=/d"}, want: "absolute host path"},
		{mounts: []string{"src=v"}, want: "destination"},
		{mounts: []string{"type=volume,dst=/d,colour=red"}, want: `unknown option "colour"`},
		{mounts: []string{"type=volume,dst=/d,readonly=maybe"}, want: "true or false"},
		{tmpfs: []string{"/run:size=64k,mode=700"}, want: "tmpfs  /run false false size=65536,mode=700"},
		{tmpfs: []string{"/run:bogus=1"}, want: `unknown option "bogus=1"`},
		{vols: []string{"a:/d"}, tmpfs: []string{"/d"}, want: "duplicate mount point"},
	} {
		got, err := parseMountFlags(c.vols, c.mounts, c.tmpfs)
		var s string
		if err != nil {
			s = err.Error()
		} else {
			m := got[0]
			s = strings.Join([]string{m.kind, m.src, m.dst, boolStr(m.readOnly), boolStr(m.copyUp), m.data}, " ")
		}
		if !strings.Contains(s, c.want) {
			t.Errorf("%v %v %v: got %q, want %q", c.vols, c.mounts, c.tmpfs, s, c.want)
		}
	}
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func TestParseBytes(t *testing.T) {
	for s, want := range map[string]int64{"64m": 64 << 20, "1g": 1 << 30, "512k": 512 << 10, "100": 100, "1.5g": 3 << 29, "10MB": 10 << 20} {
		if got, err := parseBytes(s); err != nil || got != want {
			t.Errorf("%s: %d %v", s, got, err)
		}
	}
	for _, s := range []string{"", "m", "-1m", "ten"} {
		if _, err := parseBytes(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
