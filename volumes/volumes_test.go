package volumes

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestVolumeLifecycle(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	v, created, err := s.Create(ctx, "data", false)
	if err != nil || !created || v.Anonymous {
		t.Fatalf("create: %+v %v %v", v, created, err)
	}
	if err := os.WriteFile(filepath.Join(v.Mountpoint, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	again, created, err := s.Create(ctx, "data", false)
	if err != nil || created || again.Mountpoint != v.Mountpoint {
		t.Fatalf("second create of a name must return the volume: %+v %v %v", again, created, err)
	}
	anon, _, err := s.Create(ctx, "", true)
	if err != nil || !anon.Anonymous || len(anon.Name) != 64 {
		t.Fatalf("anonymous: %+v %v", anon, err)
	}
	for _, bad := range []string{"../x", "a/b", ".hidden", "-x"} {
		if _, _, err := s.Create(ctx, bad, false); err == nil || !strings.Contains(err.Error(), "invalid volume name") {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	inUse := func(name string) []string {
		if name == "data" {
			return []string{"abc123"}
		}
		return nil
	}
	var iu *InUseError
	if err := s.Remove(ctx, "data", inUse); !errors.As(err, &iu) {
		t.Errorf("remove of a used volume: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(v.Mountpoint, "f")); err != nil || string(b) != "x" {
		t.Errorf("refused remove lost data: %q %v", b, err)
	}
	var nf *NotFoundError
	if err := s.Remove(ctx, "nope", inUse); !errors.As(err, &nf) {
		t.Errorf("remove of a missing volume: %v", err)
	}
	// prune takes unused anonymous volumes only, unless all.
	if _, _, err := s.Create(ctx, "idle", false); err != nil {
		t.Fatal(err)
	}
	names, _, err := s.Prune(ctx, false, inUse)
	if err != nil || !slices.Equal(names, []string{anon.Name}) {
		t.Errorf("prune: %v %v", names, err)
	}
	names, _, err = s.Prune(ctx, true, inUse)
	if err != nil || !slices.Equal(names, []string{"idle"}) {
		t.Errorf("prune -a: %v %v", names, err)
	}
	list, _ := s.List()
	if len(list) != 1 || list[0].Name != "data" {
		t.Errorf("left: %+v", list)
	}
}
