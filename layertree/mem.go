package layertree

import (
	"bytes"
	"context"
	"io/fs"
	"maps"
	"os"
	"strings"
	"sync"
)

// Mem is an in-memory Tree for tests: build it with Add, then share it.
type Mem struct {
	mu      sync.RWMutex
	entries map[string]*memEntry
}

type memEntry struct {
	Entry
	data   []byte
	xattrs map[string][]byte
}

// NewMem returns an empty tree whose root is a 0755 directory.
func NewMem() *Mem {
	return &Mem{entries: map[string]*memEntry{"": {Entry: Entry{Mode: ModeDir | 0o755, Nlink: 2}}}}
}

// Add puts e at path (its Name is set from path), creating missing parent
// directories 0755; data is a regular file's content.
func (m *Mem) Add(path string, e Entry, data []byte, xattrs map[string][]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, name := splitPath(path)
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if _, ok := m.entries[p]; !ok && p != "" {
			m.entries[p] = &memEntry{Entry: Entry{Name: parts[i], Mode: ModeDir | 0o755, Nlink: 2}}
		}
	}
	e.Name = name
	if e.Type() == ModeRegular && e.Size == 0 {
		e.Size = int64(len(data))
	}
	if e.Nlink == 0 {
		e.Nlink = 1
	}
	m.entries[path] = &memEntry{Entry: e, data: data, xattrs: maps.Clone(xattrs)}
}

func (m *Mem) get(path string) (*memEntry, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	e, ok := m.entries[path]
	if !ok {
		return nil, &os.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
	}
	return e, nil
}

// Stat returns the entry at path.
func (m *Mem) Stat(_ context.Context, path string) (Entry, error) {
	e, err := m.get(path)
	if err != nil {
		return Entry{}, err
	}
	return e.Entry, nil
}

// ReadDir lists the direct children of path.
func (m *Mem) ReadDir(_ context.Context, path string) ([]Entry, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []Entry
	for p, e := range m.entries {
		if p == "" {
			continue
		}
		if dir, _ := splitPath(p); dir == path {
			out = append(out, e.Entry)
		}
	}
	return out, nil
}

// Xattrs returns the entry's xattrs as the union shows them (Shown).
func (m *Mem) Xattrs(_ context.Context, path string) (map[string][]byte, error) {
	e, err := m.get(path)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(e.xattrs))
	for k, v := range e.xattrs {
		if shown, ok := Shown(k); ok {
			out[shown] = v
		}
	}
	return out, nil
}

// Open returns a reader of a regular file's content.
func (m *Mem) Open(_ context.Context, path string) (File, error) {
	e, err := m.get(path)
	if err != nil {
		return nil, err
	}
	return memFile{bytes.NewReader(e.data)}, nil
}

type memFile struct{ *bytes.Reader }

func (memFile) Close() error { return nil }
