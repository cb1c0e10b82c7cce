// Package volumes manages named volumes: storage that bypasses the
// container layer and outlives containers. A volume is a directory,
// <root>/volumes/<name>/_data, with its metadata in volume.json beside it.
package volumes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/stratafs/strata/internal/fsutil"
)

// Volume is one named or anonymous volume.
type Volume struct {
	Name      string    `json:"Name"`
	Driver    string    `json:"Driver"`
	CreatedAt time.Time `json:"CreatedAt"`
	// Mountpoint is the host directory containers see.
	Mountpoint string `json:"Mountpoint"`
	// Anonymous volumes are made for one container, from the image's
	// Volumes or `-v /path`, and removed with it by `rm -v` or `--rm`.
	Anonymous bool `json:"Anonymous,omitempty"`
}

// Store is the volumes under one root.
type Store struct {
	dir string
}

// NotFoundError is a name that names no volume.
type NotFoundError struct{ Name string }

func (e *NotFoundError) Error() string { return "no such volume: " + e.Name }

// InUseError is a volume a container still mounts.
type InUseError struct {
	Name       string
	Containers []string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("volume %s is in use by container(s) %v: remove them first", e.Name, e.Containers)
}

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// Open opens (making it) the volume store under root.
func Open(root string) (*Store, error) {
	dir := filepath.Join(root, "volumes")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("volume store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// ValidName tells whether s can name a volume (else it is a path).
func ValidName(s string) bool { return validName.MatchString(s) }

func (s *Store) lock(ctx context.Context) (*fsutil.FileLock, error) {
	return fsutil.Lock(ctx, filepath.Join(s.dir, ".lock"))
}

// Create makes a volume, or returns the existing one of that name; an
// empty name gets a random one. Anonymous volumes belong to the container
// they were made for. created tells whether the volume is new.
func (s *Store) Create(ctx context.Context, name string, anonymous bool) (v *Volume, created bool, err error) {
	if name == "" {
		var b [32]byte
		rand.Read(b[:])
		name = hex.EncodeToString(b[:])
	}
	if !validName.MatchString(name) {
		return nil, false, fmt.Errorf("invalid volume name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", name)
	}
	l, err := s.lock(ctx)
	if err != nil {
		return nil, false, err
	}
	defer l.Unlock()
	if v, err := s.Get(name); err == nil {
		return v, false, nil
	}
	dir := filepath.Join(s.dir, name)
	tmp, err := os.MkdirTemp(s.dir, ".new-")
	if err != nil {
		return nil, false, fmt.Errorf("create volume %s: %w", name, err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Mkdir(filepath.Join(tmp, "_data"), 0o755); err != nil {
		return nil, false, fmt.Errorf("create volume %s: %w", name, err)
	}
	v = &Volume{Name: name, Driver: "local", CreatedAt: time.Now().UTC().Truncate(time.Second), Mountpoint: filepath.Join(dir, "_data"), Anonymous: anonymous}
	b, _ := json.MarshalIndent(v, "", "  ")
	if err := fsutil.WriteFileAtomic(filepath.Join(tmp, "volume.json"), b, 0o600); err != nil {
		return nil, false, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, false, fmt.Errorf("create volume %s: %w", name, err)
	}
	return v, true, nil
}

// Get returns a volume by name.
func (s *Store) Get(name string) (*Volume, error) {
	if !validName.MatchString(name) {
		return nil, &NotFoundError{Name: name}
	}
	b, err := os.ReadFile(filepath.Join(s.dir, name, "volume.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &NotFoundError{Name: name}
	}
	if err != nil {
		return nil, err
	}
	var v Volume
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	return &v, nil
}

// List returns every volume, by name.
func (s *Store) List() ([]*Volume, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []*Volume
	for _, e := range ents {
		if !e.IsDir() || !validName.MatchString(e.Name()) {
			continue
		}
		if v, err := s.Get(e.Name()); err == nil {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes a volume and its data. usedBy lists the containers that
// mount it; a volume in use is never removed.
func (s *Store) Remove(ctx context.Context, name string, usedBy func(name string) []string) error {
	l, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if _, err := s.Get(name); err != nil {
		return err
	}
	if users := usedBy(name); len(users) > 0 {
		return &InUseError{Name: name, Containers: users}
	}
	gone := filepath.Join(s.dir, ".rm-"+name)
	if err := os.Rename(filepath.Join(s.dir, name), gone); err != nil {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	return os.RemoveAll(gone)
}

// Prune removes the volumes no container uses and returns their names
// and the bytes freed. Like docker's, it removes only anonymous volumes
// unless all is set.
func (s *Store) Prune(ctx context.Context, all bool, usedBy func(name string) []string) ([]string, int64, error) {
	vols, err := s.List()
	if err != nil {
		return nil, 0, err
	}
	var names []string
	var freed int64
	for _, v := range vols {
		if !all && !v.Anonymous {
			continue
		}
		if len(usedBy(v.Name)) > 0 {
			continue
		}
		size := fsutil.DirSize(v.Mountpoint)
		if err := s.Remove(ctx, v.Name, usedBy); err != nil {
			var iu *InUseError
			if errors.As(err, &iu) {
				continue
			}
			return names, freed, err
		}
		names = append(names, v.Name)
		freed += size
	}
	return names, freed, nil
}
