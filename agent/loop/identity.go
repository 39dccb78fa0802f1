package loop

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// IdentityFile is the host's credential inside the state directory.
const IdentityFile = "identity.json"

// Identity is what the coordinator gave this host at registration.
type Identity struct {
	HostID     string `json:"host_id"`
	HostSecret string `json:"host_secret"`
}

// LoadIdentity reads the identity in stateDir; ok is false when the host never registered.
func LoadIdentity(stateDir string) (id Identity, ok bool, err error) {
	path := filepath.Join(stateDir, IdentityFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Identity{}, false, nil
	}
	if err != nil {
		return Identity{}, false, fmt.Errorf("read host identity: %w", err)
	}
	if err := json.Unmarshal(b, &id); err != nil || id.HostID == "" || id.HostSecret == "" {
		return Identity{}, false, fmt.Errorf("host identity %s is unreadable or incomplete (%v); remove it to register as a new host", path, err)
	}
	return id, true, nil
}

// SaveIdentity writes the identity 0600, atomically and durably: after a crash the file
// holds the old identity or the new one, and a returned nil means it survives power loss.
func SaveIdentity(stateDir string, id Identity) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("encode host identity: %w", err)
	}
	path := filepath.Join(stateDir, IdentityFile)
	f, err := os.CreateTemp(stateDir, "."+IdentityFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("write host identity: %w", err)
	}
	tmp := f.Name()
	fail := func(what string, err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write host identity %s: %s: %w", path, what, err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail("chmod", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := f.Close(); err != nil {
		return fail("close", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write host identity %s: rename: %w", path, err)
	}
	d, err := os.Open(stateDir)
	if err != nil {
		return fmt.Errorf("write host identity: open %s for fsync: %w", stateDir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write host identity: fsync %s: %w", stateDir, err)
	}
	return nil
}
