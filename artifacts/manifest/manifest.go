// Package manifest defines the signed description of an artifact: which files the archive
// holds, with their modes, sizes and hashes, and the hash of the archive itself.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// FormatVersion is the only manifest format this code reads and writes.
const FormatVersion = 1

// ErrPathEscapes means a path is absolute or climbs out of the root with "..".
var ErrPathEscapes = errors.New("path escapes the release directory")

// ErrInvalid marks a manifest that is malformed or breaks a format rule.
var ErrInvalid = errors.New("invalid manifest")

// Type is the kind of a manifest entry.
type Type string

// Entry types. Hard links in an archive are described as plain files: what matters to a
// consumer is the content at the path, not how the archive shares it.
const (
	TypeFile    Type = "file"
	TypeDir     Type = "dir"
	TypeSymlink Type = "symlink"
)

// Mode holds permission bits only; it is written as an octal string so humans can read it.
type Mode fs.FileMode

// MarshalJSON writes the mode as "0755".
func (m Mode) MarshalJSON() ([]byte, error) {
	return json.Marshal(fmt.Sprintf("%04o", uint32(m)))
}

// UnmarshalJSON reads the mode from an octal string.
func (m *Mode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("mode must be an octal string such as \"0644\": %w", err)
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || len(s) != 4 {
		return fmt.Errorf("mode %q is not a 4-digit octal string such as \"0644\"", s)
	}
	*m = Mode(v)
	return nil
}

// Entry describes one path in the archive.
type Entry struct {
	Path   string `json:"path"`
	Type   Type   `json:"type"`
	Mode   Mode   `json:"mode"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Target string `json:"target,omitempty"`
}

// Archive identifies the compressed archive the manifest describes.
type Archive struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Manifest is the signed description of an artifact.
type Manifest struct {
	FormatVersion int       `json:"format_version"`
	Pipeline      string    `json:"pipeline"`
	Commit        string    `json:"commit"`
	Created       time.Time `json:"created"`
	Builder       string    `json:"builder"`
	Archive       Archive   `json:"archive"`
	Files         []Entry   `json:"files"`
}

var (
	pipelineRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	sha256RE   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidPipeline reports whether name can be used as a pipeline name in object keys.
func ValidPipeline(name string) error {
	if !pipelineRE.MatchString(name) {
		return fmt.Errorf("pipeline name %q: use 1-63 characters of a-z, 0-9, '.', '_', '-' starting with a letter or digit", name)
	}
	return nil
}

// ValidSHA256 reports whether s is a lowercase hex sha256 digest.
func ValidSHA256(s string) bool { return sha256RE.MatchString(s) }

// ValidPath reports whether p is a clean, relative, slash-separated path that stays inside
// the root: the same rule the extractor applies to archive entries.
func ValidPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("path is empty")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("%w: it is absolute", ErrPathEscapes)
	case strings.ContainsRune(p, 0):
		return errors.New("path contains a NUL byte")
	case p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/.."):
		return ErrPathEscapes
	case path.Clean(p) != p:
		return errors.New("path is not in clean form (no '.', '//' or trailing '/')")
	}
	return nil
}

// Validate checks every rule of the format and returns the first broken one, wrapped in ErrInvalid.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if m.FormatVersion != FormatVersion {
		return bad("format_version %d is not supported (this build reads %d); upgrade captain", m.FormatVersion, FormatVersion)
	}
	if err := ValidPipeline(m.Pipeline); err != nil {
		return bad("%v", err)
	}
	if m.Commit == "" {
		return bad("commit is empty")
	}
	if m.Created.IsZero() {
		return bad("created is missing")
	}
	if !ValidSHA256(m.Archive.SHA256) {
		return bad("archive.sha256 %q is not a lowercase hex sha256", m.Archive.SHA256)
	}
	if m.Archive.Size <= 0 {
		return bad("archive.size %d must be positive", m.Archive.Size)
	}
	seen := make(map[string]Type, len(m.Files))
	links := make(map[string]string)
	for i, e := range m.Files {
		if err := ValidPath(e.Path); err != nil {
			return bad("files[%d] %q: %v", i, e.Path, err)
		}
		if _, dup := seen[e.Path]; dup {
			return bad("files[%d] %q: listed twice", i, e.Path)
		}
		if e.Mode&^0o777 != 0 {
			return bad("files[%d] %q: mode %04o has bits beyond 0777", i, e.Path, uint32(e.Mode))
		}
		switch e.Type {
		case TypeFile:
			if e.Size < 0 {
				return bad("files[%d] %q: negative size", i, e.Path)
			}
			if !ValidSHA256(e.SHA256) {
				return bad("files[%d] %q: sha256 %q is not a lowercase hex sha256", i, e.Path, e.SHA256)
			}
			if e.Target != "" {
				return bad("files[%d] %q: a file has no target", i, e.Path)
			}
		case TypeDir:
			if e.Size != 0 || e.SHA256 != "" || e.Target != "" {
				return bad("files[%d] %q: a dir has no size, sha256 or target", i, e.Path)
			}
		case TypeSymlink:
			if e.Target == "" || strings.ContainsRune(e.Target, 0) {
				return bad("files[%d] %q: a symlink needs a target", i, e.Path)
			}
			if e.Size != 0 || e.SHA256 != "" {
				return bad("files[%d] %q: a symlink has no size or sha256", i, e.Path)
			}
		default:
			return bad("files[%d] %q: unknown type %q (want file, dir or symlink)", i, e.Path, e.Type)
		}
		seen[e.Path] = e.Type
		if e.Type == TypeSymlink {
			links[e.Path] = e.Target
		}
	}
	for i, e := range m.Files {
		if e.Type != TypeSymlink {
			continue
		}
		err := CheckSymlink(e.Path, e.Target, func(p string) (string, bool) {
			if x, ok := links[p]; ok {
				return x, true
			}
			return "", false
		})
		if err != nil {
			return bad("files[%d] %q -> %q: %v", i, e.Path, e.Target, err)
		}
	}
	// Every parent must be a listed directory: the extractor creates paths only inside
	// directories it made itself, never through a symlink.
	for i, e := range m.Files {
		if dir := path.Dir(e.Path); dir != "." && seen[dir] != TypeDir {
			return bad("files[%d] %q: parent %q is not listed as a dir", i, e.Path, dir)
		}
	}
	return nil
}

// Parse decodes and validates manifest bytes. Unknown fields are rejected so that a manifest
// written by a newer format is never half-understood.
func Parse(b []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Marshal validates m and encodes it. The bytes returned are the ones to sign and store:
// the signature covers these exact bytes, never a re-encoding.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// Lookup returns the entries by path.
func (m *Manifest) Lookup() map[string]Entry {
	out := make(map[string]Entry, len(m.Files))
	for _, e := range m.Files {
		out[e.Path] = e
	}
	return out
}
