package lazypull

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Config is <root>/config.json: settings that apply to every command.
type Config struct {
	// Mirrors are tried in order before the origin registry; entries take
	// the --registry-mirror forms.
	Mirrors []string `json:"mirrors,omitempty"`
	// InsecureRegistries are reached over plain HTTP.
	InsecureRegistries []string `json:"insecure-registries,omitempty"`
	// CacheMax bounds the chunk cache of lazy layers ("10g"); empty: none.
	CacheMax string `json:"cache-max,omitempty"`
}

// LoadConfig reads <root>/config.json; a missing file is an empty config.
func LoadConfig(root string) (Config, error) {
	var c Config
	p := filepath.Join(root, "config.json")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", p, err)
	}
	return c, nil
}
