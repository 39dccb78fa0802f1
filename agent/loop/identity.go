package loop

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/captain-cd/captain/agent/atomicfile"
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
	if err := atomicfile.Write(filepath.Join(stateDir, IdentityFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save host identity: %w", err)
	}
	return nil
}
