package extract_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/manifest"
)

// ent is one hand-made tar entry.
type ent struct {
	hdr  tar.Header
	body []byte
}

func file(name string, mode int64, body string) ent {
	return ent{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body))}, body: []byte(body)}
}
func dir(name string) ent {
	return ent{hdr: tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o755}}
}
func symlink(name, target string) ent {
	return ent{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}

func writeTar(t testing.TB, w io.Writer, ents []ent) {
	t.Helper()
	tw := tar.NewWriter(w)
	for _, e := range ents {
		h := e.hdr
		h.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("write header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatalf("write body %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func zstdBytes(t testing.TB, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func archiveOf(t testing.TB, ents []ent) []byte {
	var raw bytes.Buffer
	writeTar(t, &raw, ents)
	return zstdBytes(t, raw.Bytes())
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// manifestFor describes the entries exactly as the archive holds them, hostile ones included,
// so that a rejection comes from the extractor's own rules and not from a manifest mismatch.
// It is deliberately not validated.
func manifestFor(ents []ent) *manifest.Manifest {
	m := &manifest.Manifest{FormatVersion: 1, Pipeline: "web", Commit: "c", Created: time.Unix(1, 0)}
	for _, e := range ents {
		name := strings.TrimSuffix(e.hdr.Name, "/")
		me := manifest.Entry{Path: name, Mode: manifest.Mode(fs.FileMode(e.hdr.Mode).Perm())}
		switch e.hdr.Typeflag {
		case tar.TypeDir:
			me.Type = manifest.TypeDir
		case tar.TypeSymlink:
			me.Type, me.Target, me.Mode = manifest.TypeSymlink, e.hdr.Linkname, 0o777
		default:
			me.Type, me.Size, me.SHA256 = manifest.TypeFile, int64(len(e.body)), sum(e.body)
		}
		m.Files = append(m.Files, me)
	}
	return m
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		t.Fatalf("rejected archive left %v in %s", names, dir)
	}
}

func TestExtractWritesTreeMatchingManifest(t *testing.T) {
	ents := []ent{
		dir("bin"),
		file("bin/app", 0o4755, "#!/bin/sh\necho hi\n"), // setuid must be dropped
		dir("conf"),
		file("conf/app.toml", 0o640, "x = 1\n"),
		symlink("conf/current", "app.toml"),
		symlink("up", "conf/../bin/app"),
		{hdr: tar.Header{Name: "bin/app2", Typeflag: tar.TypeLink, Linkname: "bin/app"}},
	}
	m := manifestFor(ents[:6])
	m.Files[1].Mode = 0o755
	m.Files = append(m.Files, manifest.Entry{Path: "bin/app2", Type: manifest.TypeFile, Mode: 0o755, Size: m.Files[1].Size, SHA256: m.Files[1].SHA256})
	parent := t.TempDir()
	dest := filepath.Join(parent, "1-d1")
	if err := extract.Extract(context.Background(), bytes.NewReader(archiveOf(t, ents)), m, dest, extract.Limits{}); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dest, "bin/app"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o755 {
		t.Errorf("bin/app mode = %v, want -rwxr-xr-x (setuid stripped)", fi.Mode())
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "up")); string(b) != "#!/bin/sh\necho hi\n" {
		t.Errorf("symlink up reads %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "bin/app2")); string(b) != "#!/bin/sh\necho hi\n" {
		t.Errorf("hardlink reads %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(dest, "conf/app.toml")); fi.Mode() != 0o640 {
		t.Errorf("conf/app.toml mode = %v", fi.Mode())
	}
	if _, err := os.Lstat(dest + extract.PartialSuffix); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf(".partial left behind: %v", err)
	}
	// Every deployment gets a new directory: extracting over an existing one is refused.
	if err := extract.Extract(context.Background(), bytes.NewReader(archiveOf(t, ents)), m, dest, extract.Limits{}); err == nil {
		t.Error("second Extract into an existing directory succeeded")
	}
}

// streamed generates a tar+zstd stream on the fly (so a test can claim 10 GB or a million
// entries without storing them) and returns a stop function reporting how many uncompressed
// bytes were generated before the reader gave up.
func streamed(t *testing.T, gen func(tw *tar.Writer) error) (io.Reader, func() int64) {
	pr, pw := io.Pipe()
	done := make(chan int64, 1)
	go func() {
		zw, err := zstd.NewWriter(pw, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			pw.CloseWithError(err)
			done <- 0
			return
		}
		cw := &counter{w: zw}
		tw := tar.NewWriter(cw)
		err = gen(tw)
		if err == nil {
			err = tw.Close()
		}
		if err == nil {
			err = zw.Close()
		}
		pw.CloseWithError(err)
		done <- cw.n
	}()
	var produced int64 = -1
	stop := func() int64 {
		if produced < 0 {
			pr.CloseWithError(errors.New("reader done"))
			produced = <-done
		}
		return produced
	}
	t.Cleanup(func() { stop() })
	return pr, stop
}

type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func TestExtractRejectsHostileArchives(t *testing.T) {
	const tenGB = 10 << 30
	const million = 1_000_000
	small := extract.Limits{MaxTotalBytes: 64 << 20, MaxFiles: 2_000, MaxFileBytes: 32 << 20}
	cases := []struct {
		name    string
		ents    []ent
		stream  func(tw *tar.Writer) error // generated on the fly instead of ents
		m       *manifest.Manifest         // nil: manifestFor(ents)
		limits  extract.Limits
		kind    error
		message string
	}{
		{name: "parent traversal", ents: []ent{file("../x", 0o644, "x")}, kind: extract.ErrUnsafePath,
			message: `entry "../x": path escapes the release directory`},
		{name: "traversal inside path", ents: []ent{dir("a"), file("a/../../x", 0o644, "x")}, kind: extract.ErrUnsafePath},
		{name: "absolute path", ents: []ent{file("/etc/x", 0o644, "x")}, kind: extract.ErrUnsafePath,
			message: `entry "/etc/x": path escapes the release directory`},
		{name: "symlink to root", ents: []ent{symlink("root", "/")}, kind: extract.ErrUnsafePath,
			message: `entry "root": symlink to "/"`},
		{name: "symlink with dotdot", ents: []ent{symlink("up", "../../etc")}, kind: extract.ErrUnsafePath},
		{name: "symlink chain escaping", ents: []ent{dir("d"), symlink("d/up", ".."), symlink("d/esc", "up/..")}, kind: extract.ErrUnsafePath,
			message: `entry "d/esc"`},
		{name: "file through symlinked dir", ents: []ent{dir("d"), symlink("d/l", "."), file("d/l/x", 0o644, "x")}, kind: extract.ErrUnsafePath},
		{name: "hardlink to outside", ents: []ent{{hdr: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}}}, kind: extract.ErrUnsafePath,
			message: `entry "h": hardlink to "../../etc/passwd"`},
		{name: "hardlink to absolute", ents: []ent{{hdr: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}}}, kind: extract.ErrUnsafePath},
		{name: "fifo", ents: []ent{{hdr: tar.Header{Name: "p", Typeflag: tar.TypeFifo, Mode: 0o644}}}, kind: extract.ErrUnsupportedType},
		{name: "char device", ents: []ent{{hdr: tar.Header{Name: "null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}}}, kind: extract.ErrUnsupportedType},
		{name: "block device", ents: []ent{{hdr: tar.Header{Name: "sda", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 8}}}, kind: extract.ErrUnsupportedType},
		{name: "duplicate names", ents: []ent{file("a", 0o644, "1"), file("a", 0o644, "1")}, kind: extract.ErrDuplicate,
			message: `entry "a": appears twice`},
		{name: "file not in manifest", ents: []ent{file("a", 0o644, "1"), file("extra", 0o644, "2")},
			m: manifestFor([]ent{file("a", 0o644, "1")}), kind: extract.ErrManifestMismatch, message: `entry "extra": not in the manifest`},
		{name: "manifest entry missing from archive", ents: []ent{file("a", 0o644, "1")},
			m: manifestFor([]ent{file("a", 0o644, "1"), file("b", 0o644, "2")}), kind: extract.ErrManifestMismatch, message: `entry "b": listed in the manifest`},
		{name: "content differs from manifest", ents: []ent{file("a", 0o644, "evil")},
			m: manifestFor([]ent{file("a", 0o644, "good")}), kind: extract.ErrManifestMismatch, message: `entry "a": sha256`},
		{name: "10 GB zero-filled file under default limits", limits: extract.Limits{},
			m: &manifest.Manifest{Files: []manifest.Entry{{Path: "bomb", Type: manifest.TypeFile, Mode: 0o644, Size: tenGB}}},
			stream: func(tw *tar.Writer) error {
				if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: tenGB}); err != nil {
					return err
				}
				return writeZeros(tw, tenGB)
			}, kind: extract.ErrLimit, message: `entry "bomb": size 10737418240 exceeds the per-file limit`},
		{name: "10 GB zero-filled file under a total limit", limits: extract.Limits{MaxTotalBytes: 64 << 20, MaxFileBytes: 16 << 30},
			m: &manifest.Manifest{Files: []manifest.Entry{{Path: "bomb", Type: manifest.TypeFile, Mode: 0o644, Size: tenGB}}},
			stream: func(tw *tar.Writer) error {
				if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: tenGB}); err != nil {
					return err
				}
				return writeZeros(tw, tenGB)
			}, kind: extract.ErrLimit, message: `total size would exceed`},
		{name: "1M empty files", limits: small, m: emptyFiles(small.MaxFiles + 1),
			stream: func(tw *tar.Writer) error {
				for i := range million {
					if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%07d", i), Typeflag: tar.TypeReg, Mode: 0o644}); err != nil {
						return err
					}
				}
				return nil
			}, kind: extract.ErrLimit, message: `file count limit exceeded`},
		{name: "truncated file", m: manifestFor([]ent{file("a", 0o644, strings.Repeat("x", 1000))}),
			stream: func(tw *tar.Writer) error {
				if err := tw.WriteHeader(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1000}); err != nil {
					return err
				}
				_, err := tw.Write([]byte("xxx"))
				return err // tw.Close fails on the short entry: the stream just ends
			}, kind: extract.ErrCorrupt},
		{name: "not a tar stream", ents: nil, kind: extract.ErrCorrupt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r io.Reader
			stop := func() int64 { return 0 }
			switch {
			case tc.stream != nil:
				r, stop = streamed(t, tc.stream)
			case tc.ents == nil:
				r = bytes.NewReader(zstdBytes(t, bytes.Repeat([]byte("garbage!"), 200)))
			default:
				r = bytes.NewReader(archiveOf(t, tc.ents))
			}
			m := tc.m
			if m == nil {
				m = manifestFor(tc.ents)
			}
			parent := t.TempDir()
			err := extract.Extract(context.Background(), r, m, filepath.Join(parent, "1-d1"), tc.limits)
			produced := stop()
			if err == nil {
				t.Fatal("hostile archive was extracted")
			}
			if !errors.Is(err, extract.ErrRejected) || !errors.Is(err, tc.kind) {
				t.Fatalf("error %q: want ErrRejected and %v", err, tc.kind)
			}
			if tc.message != "" && !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not contain %q", err, tc.message)
			}
			// The generator blocks once the extractor stops reading; a limit that works stops
			// it within a few zstd blocks, far from the 10 GB or 1M entries claimed.
			if produced > 64<<20 {
				t.Errorf("extractor let the generator produce %d bytes before stopping", produced)
			}
			t.Logf("generated %d uncompressed bytes before the rejection", produced)
			assertEmpty(t, parent)
		})
	}
}

func writeZeros(w io.Writer, n int64) error {
	zeros := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := w.Write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func emptyFiles(n int) *manifest.Manifest {
	m := &manifest.Manifest{}
	for i := range n {
		m.Files = append(m.Files, manifest.Entry{Path: fmt.Sprintf("f%07d", i), Type: manifest.TypeFile, Mode: 0o644, SHA256: sum(nil)})
	}
	return m
}

func TestExtractHonoursContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	parent := t.TempDir()
	ents := []ent{file("a", 0o644, "1")}
	err := extract.Extract(ctx, bytes.NewReader(archiveOf(t, ents)), manifestFor(ents), filepath.Join(parent, "r"), extract.Limits{})
	if !errors.Is(err, context.Canceled) || errors.Is(err, extract.ErrRejected) {
		t.Fatalf("err = %v, want context.Canceled and not a rejection", err)
	}
	assertEmpty(t, parent)
}
