// Package extract unpacks an artifact archive into a fresh release directory, trusting
// nothing in it: every entry is checked against path rules, limits and the signed manifest,
// and all writes go through an os.Root so a missed case still cannot leave the directory.
package extract

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/captain-cd/captain/artifacts/manifest"
)

// ErrRejected is wrapped by every error caused by the archive's content (as opposed to I/O
// on the host): a rejected artifact must not be retried, it must be rebuilt.
var ErrRejected = errors.New("archive rejected")

// Rule sentinels, so callers and tests can tell which rule an archive broke.
var (
	ErrUnsafePath       = errors.New("unsafe path")
	ErrUnsupportedType  = errors.New("unsupported entry type")
	ErrDuplicate        = errors.New("duplicate entry")
	ErrLimit            = errors.New("limit exceeded")
	ErrManifestMismatch = errors.New("archive does not match manifest")
	ErrCorrupt          = errors.New("corrupt archive")
)

// RejectError names the entry and the rule it broke.
type RejectError struct {
	Entry string
	Rule  string
	Kind  error // one of the rule sentinels
}

func (e *RejectError) Error() string {
	if e.Entry == "" {
		return fmt.Sprintf("archive: %s", e.Rule)
	}
	return fmt.Sprintf("entry %q: %s", e.Entry, e.Rule)
}

// Unwrap lets errors.Is match both ErrRejected and the rule sentinel.
func (e *RejectError) Unwrap() []error { return []error{ErrRejected, e.Kind} }

func reject(entry string, kind error, format string, a ...any) error {
	return &RejectError{Entry: entry, Rule: fmt.Sprintf(format, a...), Kind: kind}
}

// Limits bound what one archive may write. Zero fields take the defaults.
type Limits struct {
	MaxTotalBytes int64 // sum of regular file sizes
	MaxFiles      int   // number of entries of any type
	MaxFileBytes  int64 // one regular file
	// MaxDecoderMemory bounds the zstd window a hostile stream can make the decoder
	// allocate. archive.NewEncoder writes 8 MiB windows.
	MaxDecoderMemory uint64
}

// DefaultLimits fit any service we deploy while stopping a decompression bomb.
func DefaultLimits() Limits {
	return Limits{
		MaxTotalBytes:    8 << 30,
		MaxFiles:         1_000_000,
		MaxFileBytes:     4 << 30,
		MaxDecoderMemory: 64 << 20,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = d.MaxTotalBytes
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = d.MaxFiles
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = d.MaxFileBytes
	}
	if l.MaxDecoderMemory == 0 {
		l.MaxDecoderMemory = d.MaxDecoderMemory
	}
	return l
}

// PartialSuffix marks a directory that is still being written.
const PartialSuffix = ".partial"

// Extract unpacks the zstd tar stream r into dest, which must not exist. Entries go into
// dest+".partial"; only when every entry matched m is it synced and renamed to dest. On any
// error the partial directory is removed and dest is not created. m must come from
// manifest.Parse or TrustedKeys.VerifyAndParse.
func Extract(ctx context.Context, r io.Reader, m *manifest.Manifest, dest string, lim Limits) (err error) {
	lim = lim.withDefaults()
	dest = filepath.Clean(dest)
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("release directory %s already exists: every deployment extracts into a new directory", dest)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check release directory: %w", err)
	}
	partial := dest + PartialSuffix
	// A leftover from a crash is garbage by definition: nothing reads a .partial directory.
	if err := removeTree(partial); err != nil {
		return fmt.Errorf("remove stale %s: %w", partial, err)
	}
	if err := os.Mkdir(partial, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", partial, err)
	}
	defer func() {
		if err != nil {
			if rmErr := removeTree(partial); rmErr != nil {
				err = errors.Join(err, fmt.Errorf("clean up %s: %w", partial, rmErr))
			}
		}
	}()
	root, err := os.OpenRoot(partial)
	if err != nil {
		return fmt.Errorf("open %s: %w", partial, err)
	}
	defer root.Close()

	zr, err := zstd.NewReader(r, zstd.WithDecoderMaxMemory(lim.MaxDecoderMemory), zstd.WithDecoderMaxWindow(lim.MaxDecoderMemory))
	if err != nil {
		return fmt.Errorf("start zstd decoder: %w", err)
	}
	defer zr.Close()

	x := &extractor{root: root, m: m.Lookup(), listed: m.Files, lim: lim, seen: map[string]manifest.Type{}, files: map[string]fileInfo{}}
	if err := x.run(ctx, tar.NewReader(zr)); err != nil {
		return err
	}
	if err := x.finish(); err != nil {
		return err
	}
	if err := root.Close(); err != nil {
		return fmt.Errorf("close %s: %w", partial, err)
	}
	if err := os.Rename(partial, dest); err != nil {
		return fmt.Errorf("rename %s to %s: %w", partial, dest, err)
	}
	if err := syncDir(filepath.Dir(dest)); err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Dir(dest), err)
	}
	return nil
}

type fileInfo struct {
	size int64
	sum  string
	mode fs.FileMode
}

type extractor struct {
	root   *os.Root
	m      map[string]manifest.Entry
	listed []manifest.Entry
	lim    Limits
	seen   map[string]manifest.Type
	files  map[string]fileInfo
	dirs   []string // in creation order; permissions are applied at the end, deepest first
	total  int64
	count  int
	buf    []byte
}

func (x *extractor) run(ctx context.Context, tr *tar.Reader) error {
	x.buf = make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return reject("", ErrCorrupt, "cannot read the next entry: %v", err)
		}
		if err := x.entry(ctx, tr, hdr); err != nil {
			return err
		}
	}
}

func (x *extractor) entry(ctx context.Context, tr *tar.Reader, hdr *tar.Header) error {
	name := hdr.Name
	if hdr.Typeflag == tar.TypeDir {
		name = strings.TrimSuffix(name, "/")
	}
	if err := manifest.ValidPath(name); err != nil {
		return reject(hdr.Name, ErrUnsafePath, "%v", err)
	}
	x.count++
	if x.count > x.lim.MaxFiles {
		return reject(name, ErrLimit, "more than %d entries: file count limit exceeded", x.lim.MaxFiles)
	}
	if _, dup := x.seen[name]; dup {
		return reject(name, ErrDuplicate, "appears twice in the archive")
	}
	if dir := path.Dir(name); dir != "." && x.seen[dir] != manifest.TypeDir {
		return reject(name, ErrUnsafePath, "parent %q is not a directory extracted earlier", dir)
	}
	want, listed := x.m[name]
	mode := fs.FileMode(hdr.Mode).Perm() // setuid, setgid and sticky are dropped on purpose
	mismatch := func(format string, a ...any) error {
		return reject(name, ErrManifestMismatch, format, a...)
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if !listed {
			return mismatch("not in the manifest")
		}
		if want.Type != manifest.TypeDir || manifest.Mode(mode) != want.Mode {
			return mismatch("dir %04o, manifest says %s %04o", mode, want.Type, uint32(want.Mode))
		}
		if err := x.root.Mkdir(name, 0o700); err != nil {
			return fmt.Errorf("create dir %q: %w", name, err)
		}
		x.dirs = append(x.dirs, name)
		x.seen[name] = manifest.TypeDir

	case tar.TypeSymlink:
		err := manifest.CheckSymlink(name, hdr.Linkname, func(p string) (string, bool) {
			if e, ok := x.m[p]; ok && e.Type == manifest.TypeSymlink {
				return e.Target, true
			}
			return "", false
		})
		if err != nil {
			return reject(name, ErrUnsafePath, "symlink to %q: %v", hdr.Linkname, err)
		}
		if !listed {
			return mismatch("not in the manifest")
		}
		if want.Type != manifest.TypeSymlink || want.Target != hdr.Linkname {
			return mismatch("symlink to %q, manifest says %s %q", hdr.Linkname, want.Type, want.Target)
		}
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return fmt.Errorf("create symlink %q: %w", name, err)
		}
		x.seen[name] = manifest.TypeSymlink

	case tar.TypeLink:
		target := hdr.Linkname
		if err := manifest.ValidPath(target); err != nil {
			return reject(name, ErrUnsafePath, "hardlink to %q: %v", target, err)
		}
		src, ok := x.files[target]
		if !ok {
			return reject(name, ErrUnsafePath, "hardlink to %q: target is not a regular file extracted earlier", target)
		}
		if !listed {
			return mismatch("not in the manifest")
		}
		if want.Type != manifest.TypeFile || want.SHA256 != src.sum || want.Size != src.size || manifest.Mode(src.mode) != want.Mode {
			return mismatch("hardlink to %q does not have the content or mode the manifest lists", target)
		}
		if err := x.root.Link(target, name); err != nil {
			return fmt.Errorf("create hardlink %q: %w", name, err)
		}
		x.files[name] = src
		x.seen[name] = manifest.TypeFile

	case tar.TypeReg:
		if hdr.Size < 0 || hdr.Size > x.lim.MaxFileBytes {
			return reject(name, ErrLimit, "size %d exceeds the per-file limit of %d bytes", hdr.Size, x.lim.MaxFileBytes)
		}
		if x.total+hdr.Size > x.lim.MaxTotalBytes {
			return reject(name, ErrLimit, "total size would exceed the limit of %d bytes", x.lim.MaxTotalBytes)
		}
		if !listed {
			return mismatch("not in the manifest")
		}
		if want.Type != manifest.TypeFile || want.Size != hdr.Size || want.Mode != manifest.Mode(mode) {
			return mismatch("file %04o of %d bytes, manifest says %s %04o of %d bytes", mode, hdr.Size, want.Type, uint32(want.Mode), want.Size)
		}
		sum, err := x.writeFile(ctx, name, tr, hdr.Size, mode)
		if err != nil {
			return err
		}
		if sum != want.SHA256 {
			return mismatch("sha256 %s, manifest says %s", sum, want.SHA256)
		}
		x.total += hdr.Size
		x.files[name] = fileInfo{size: hdr.Size, sum: sum, mode: mode}
		x.seen[name] = manifest.TypeFile

	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return reject(name, ErrUnsupportedType, "device and fifo entries are not allowed")
	default:
		return reject(name, ErrUnsupportedType, "tar type %q is not allowed (only files, dirs, symlinks, hardlinks)", hdr.Typeflag)
	}
	return nil
}

func (x *extractor) writeFile(ctx context.Context, name string, r io.Reader, size int64, mode fs.FileMode) (string, error) {
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create %q: %w", name, err)
	}
	h := sha256.New()
	var written int64
	for written < size {
		if err := ctx.Err(); err != nil {
			f.Close()
			return "", err
		}
		n, rerr := io.ReadFull(r, x.buf[:min(int64(len(x.buf)), size-written)])
		if n > 0 {
			h.Write(x.buf[:n])
			if _, err := f.Write(x.buf[:n]); err != nil {
				f.Close()
				return "", fmt.Errorf("write %q: %w", name, err)
			}
			written += int64(n)
		}
		if rerr != nil {
			f.Close()
			return "", reject(name, ErrCorrupt, "archive ends inside the file after %d of %d bytes: %v", written, size, rerr)
		}
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return "", fmt.Errorf("chmod %q: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close %q: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (x *extractor) finish() error {
	for _, e := range x.listed {
		if _, ok := x.seen[e.Path]; !ok {
			return reject(e.Path, ErrManifestMismatch, "listed in the manifest (%s) but missing from the archive", e.Type)
		}
	}
	// Restrict directories deepest first, so a read-only parent never blocks a child.
	dirs := slices.Clone(x.dirs)
	slices.Reverse(dirs)
	for _, d := range dirs {
		if err := x.root.Chmod(d, fs.FileMode(x.m[d].Mode)); err != nil {
			return fmt.Errorf("chmod dir %q: %w", d, err)
		}
	}
	if err := x.root.Chmod(".", 0o755); err != nil {
		return fmt.Errorf("chmod release dir: %w", err)
	}
	names := make([]string, 0, len(x.seen)+1)
	for p, t := range x.seen {
		if t != manifest.TypeSymlink {
			names = append(names, p)
		}
	}
	if err := syncTree(x.root, append(names, ".")); err != nil {
		return fmt.Errorf("sync extracted files: %w", err)
	}
	return nil
}

// removeTree removes dir even if the archive made parts of it read-only.
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

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
