package extract_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/manifest"
)

// FuzzExtract feeds arbitrary tar bytes to the extractor with a manifest that describes
// whatever the tar holds, so the fuzzer can reach the success path. Properties: no panic;
// on error nothing is left behind; on success nothing outside dest was created and every
// symlink resolves inside dest.
func FuzzExtract(f *testing.F) {
	seeds := [][]ent{
		{dir("a"), file("a/b", 0o644, "hello"), symlink("a/c", "b")},
		{file("../x", 0o644, "x")},
		{file("/etc/x", 0o644, "x")},
		{symlink("root", "/")},
		{dir("d"), symlink("d/up", ".."), symlink("d/esc", "up/..")},
		{file("a", 0o644, "1"), {hdr: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "a"}}},
		{{hdr: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}}},
		{{hdr: tar.Header{Name: "p", Typeflag: tar.TypeFifo}}},
		{file("a", 0o644, "1"), file("a", 0o644, "1")},
		{dir("d"), symlink("d/l", "."), file("d/l/x", 0o644, "x")},
	}
	for _, s := range seeds {
		var buf bytes.Buffer
		writeTar(f, &buf, s)
		f.Add(buf.Bytes())
	}
	// One encoder for all runs: building one per input costs more than the extraction.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m := describe(raw)
		parent := t.TempDir()
		outside := filepath.Join(parent, "outside")
		if err := os.Mkdir(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		dest := filepath.Join(parent, "rel")
		lim := extract.Limits{MaxTotalBytes: 1 << 20, MaxFiles: 200, MaxFileBytes: 1 << 20}
		err := extract.Extract(context.Background(), bytes.NewReader(enc.EncodeAll(raw, nil)), m, dest, lim)
		if left, _ := os.ReadDir(outside); len(left) != 0 {
			t.Fatalf("extraction wrote outside the release directory: %v", left)
		}
		if err != nil {
			if _, serr := os.Lstat(dest); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("failed extraction (%v) left %s", err, dest)
			}
			if _, serr := os.Lstat(dest + extract.PartialSuffix); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("failed extraction (%v) left the .partial directory", err)
			}
			return
		}
		realDest, _ := filepath.EvalSymlinks(dest)
		_ = filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Type()&fs.ModeSymlink == 0 {
				return nil
			}
			resolved, rerr := filepath.EvalSymlinks(p)
			if rerr != nil {
				return nil // dangling inside the tree is allowed
			}
			if resolved != realDest && !strings.HasPrefix(resolved, realDest+string(filepath.Separator)) {
				t.Errorf("symlink %s resolves to %s, outside %s", p, resolved, realDest)
			}
			return nil
		})
		os.RemoveAll(dest) // read-only dirs would otherwise trouble t.TempDir cleanup
		_ = filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o700)
			}
			return nil
		})
	})
}

// describe builds a manifest matching the tar's first occurrence of each name.
func describe(raw []byte) *manifest.Manifest {
	m := &manifest.Manifest{}
	seen := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err != nil {
			return m
		}
		name := strings.TrimSuffix(h.Name, "/")
		if seen[name] {
			continue
		}
		seen[name] = true
		e := manifest.Entry{Path: name, Mode: manifest.Mode(fs.FileMode(h.Mode).Perm())}
		switch h.Typeflag {
		case tar.TypeDir:
			e.Type = manifest.TypeDir
		case tar.TypeSymlink:
			e.Type, e.Target = manifest.TypeSymlink, h.Linkname
		default:
			hs := sha256.New()
			n, _ := io.Copy(hs, tr)
			e.Type, e.Size, e.SHA256 = manifest.TypeFile, n, hex.EncodeToString(hs.Sum(nil))
		}
		m.Files = append(m.Files, e)
	}
}
