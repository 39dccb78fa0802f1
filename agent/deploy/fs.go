package deploy

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/captain-cd/captain/agent/atomicfile"
	"github.com/captain-cd/captain/artifacts/manifest"
)

// CurrentLink is the name of the symlink in the app root that points at the running release.
const CurrentLink = "current"

// ReleasesDir is the directory in the app root that holds one directory per deployment.
const ReleasesDir = "releases"

const tmpLinkPrefix = CurrentLink + ".tmp-"

// Flip points appRoot/current at target (relative to appRoot, e.g. "releases/7-d-0001") in
// one rename, so a reader sees the old target or the new one and never a missing link, and
// syncs appRoot so the new link survives power loss.
func Flip(appRoot, target string) error {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("flip current: %w", err)
	}
	tmp := filepath.Join(appRoot, tmpLinkPrefix+hex.EncodeToString(rnd[:]))
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("flip current: create %s: %w", tmp, err)
	}
	cur := filepath.Join(appRoot, CurrentLink)
	if err := os.Rename(tmp, cur); err != nil {
		os.Remove(tmp)
		if fi, serr := os.Lstat(cur); serr == nil && fi.Mode()&fs.ModeSymlink == 0 {
			return fmt.Errorf("flip current: %s is a %s, not a symlink; move it away so captain can manage it: %w", cur, fi.Mode().Type(), err)
		}
		return fmt.Errorf("flip current: rename over %s: %w", cur, err)
	}
	if err := syncDir(appRoot); err != nil {
		return fmt.Errorf("flip current: sync %s: %w", appRoot, err)
	}
	return nil
}

// ReadCurrent returns the target of appRoot/current, or "" when there is none.
func ReadCurrent(appRoot string) (string, error) {
	t, err := os.Readlink(filepath.Join(appRoot, CurrentLink))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", filepath.Join(appRoot, CurrentLink), err)
	}
	return t, nil
}

// removeTempLinks deletes current.tmp-* links left by a flip that crashed before its rename.
func removeTempLinks(appRoot string) {
	ents, _ := os.ReadDir(appRoot)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpLinkPrefix) && e.Type()&fs.ModeSymlink != 0 {
			os.Remove(filepath.Join(appRoot, e.Name()))
		}
	}
}

func syncDir(dir string) error { return atomicfile.SyncDir(dir) }

// removeTree removes dir even where the artifact made directories read-only.
func removeTree(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

// verifyTree checks that dir holds exactly what m lists: types, modes, sizes, file hashes
// and link targets, and nothing else. It is used when a crash left a release directory whose
// extraction the state file does not vouch for.
func verifyTree(dir string, m *manifest.Manifest) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	want := m.Lookup()
	for _, e := range m.Files {
		fi, err := root.Lstat(e.Path)
		if err != nil {
			return fmt.Errorf("%s: %w", e.Path, err)
		}
		if manifest.Mode(fi.Mode().Perm()) != e.Mode && e.Type != manifest.TypeSymlink {
			return fmt.Errorf("%s: mode %04o, manifest says %04o", e.Path, fi.Mode().Perm(), uint32(e.Mode))
		}
		switch e.Type {
		case manifest.TypeDir:
			if !fi.IsDir() {
				return fmt.Errorf("%s: not a directory", e.Path)
			}
		case manifest.TypeSymlink:
			t, err := root.Readlink(e.Path)
			if err != nil || fi.Mode()&fs.ModeSymlink == 0 || t != e.Target {
				return fmt.Errorf("%s: not a symlink to %q", e.Path, e.Target)
			}
		case manifest.TypeFile:
			if !fi.Mode().IsRegular() || fi.Size() != e.Size {
				return fmt.Errorf("%s: not a regular file of %d bytes", e.Path, e.Size)
			}
			f, err := root.Open(e.Path)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", e.Path, err)
			}
			if hex.EncodeToString(h.Sum(nil)) != e.SHA256 {
				return fmt.Errorf("%s: content differs from the manifest", e.Path)
			}
		}
	}
	// Nothing extra: an extra file means the directory is not what this artifact produces.
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		if _, ok := want[path.Clean(p)]; !ok {
			return fmt.Errorf("%s: not in the manifest", p)
		}
		return nil
	})
}
