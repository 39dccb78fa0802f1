// Package archive writes the artifact archive: a deterministic tar stream compressed with
// zstd, so the same tree always yields the same bytes and therefore the same object key.
package archive

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/captain-cd/captain/artifacts/manifest"
)

// modTime is the fixed modification time of every entry: a build's wall clock must not
// change the archive bytes.
var modTime = time.Unix(0, 0).UTC()

// NewEncoder returns the zstd writer with every option that affects output pinned, so the
// compressed bytes do not depend on the machine that builds them.
func NewEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(2),
		zstd.WithEncoderCRC(true),
		zstd.WithWindowSize(8<<20),
	)
}

// Write archives the tree at dir into w (tar, zstd) and returns the manifest entries, in
// archive order. Entries are sorted, with mtime fixed, uid/gid 0 and no user or group names.
// Only regular files, directories and symlinks are accepted.
func Write(ctx context.Context, dir string, w io.Writer) ([]manifest.Entry, error) {
	zw, err := NewEncoder(w)
	if err != nil {
		return nil, fmt.Errorf("start zstd encoder: %w", err)
	}
	tw := tar.NewWriter(zw)
	var entries []manifest.Entry
	// WalkDir visits entries in lexical order, which makes the order deterministic.
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		perm := info.Mode().Perm()
		hdr := &tar.Header{Name: rel, Mode: int64(perm), ModTime: modTime, Format: tar.FormatPAX}
		e := manifest.Entry{Path: rel, Mode: manifest.Mode(perm)}
		switch {
		case info.Mode().IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
			e.Type = manifest.TypeDir
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			e.Type, e.Target = manifest.TypeSymlink, target
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			sum, err := copyFile(tw, p, info.Size())
			if err != nil {
				return err
			}
			e.Type, e.Size, e.SHA256 = manifest.TypeFile, info.Size(), sum
		default:
			return fmt.Errorf("%s is a %s: an artifact holds only regular files, directories and symlinks", p, info.Mode().Type())
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		zw.Close()
		return nil, fmt.Errorf("archive %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		zw.Close()
		return nil, fmt.Errorf("finish tar stream: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("finish zstd stream: %w", err)
	}
	return entries, nil
}

func copyFile(w io.Writer, name string, size int64) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(f, size))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	if n != size {
		return "", fmt.Errorf("%s shrank from %d to %d bytes while archiving: do not change the tree during a push", name, size, n)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Built is an archive written to a file, with what the manifest needs to know about it.
type Built struct {
	Path    string
	SHA256  string
	Size    int64
	Entries []manifest.Entry
}

// WriteFile archives dir into a new temporary file in tmpDir and hashes it on the way.
// The caller removes Built.Path when done.
func WriteFile(ctx context.Context, dir, tmpDir string) (*Built, error) {
	f, err := os.CreateTemp(tmpDir, "captain-artifact-*.tar.zst")
	if err != nil {
		return nil, fmt.Errorf("create archive file: %w", err)
	}
	fail := func(err error) (*Built, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	entries, err := Write(ctx, dir, cw)
	if err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(fmt.Errorf("close archive file: %w", err))
	}
	return &Built{Path: f.Name(), SHA256: hex.EncodeToString(h.Sum(nil)), Size: cw.n, Entries: entries}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
