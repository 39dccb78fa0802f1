package fetch_test

import (
	"archive/tar"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/artifacts/store"
)

const (
	benchTotal     = 256 << 20
	benchSmallSize = 32 << 10
	benchSmallN    = 4096 // 128 MiB of small files
)

// benchArtifact pushes a 256 MiB tree: 4096 small files of 32 KiB (half text-like and
// compressible, half random) in 64 directories, plus one random 128 MiB file.
func benchArtifact(b *testing.B) (*s3test.Gateway, *store.Store, store.Ref, manifest.TrustedKeys) {
	b.Helper()
	gw := s3test.Start(b)
	src := b.TempDir()
	rng := mrand.New(mrand.NewPCG(1, 2))
	buf := make([]byte, benchSmallSize)
	for i := range benchSmallN {
		d := filepath.Join(src, fmt.Sprintf("pkg%02d", i%64))
		os.MkdirAll(d, 0o755)
		if i%2 == 0 {
			for j := range buf {
				buf[j] = "abcdefghij klmnop\n"[rng.IntN(18)]
			}
		} else {
			for j := 0; j < len(buf); j += 8 {
				v := rng.Uint64()
				for k := range 8 {
					buf[j+k] = byte(v >> (8 * k))
				}
			}
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%04d.dat", i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	big, err := os.Create(filepath.Join(src, "big.bin"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(big, rand.Reader, benchTotal-benchSmallN*benchSmallSize); err != nil {
		b.Fatal(err)
	}
	big.Close()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	st := gw.Store()
	res, err := push.Push(context.Background(), st, push.Options{Dir: src, Pipeline: "bench", Commit: "c", Key: priv, TempDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(src)
	b.Logf("artifact: %d MiB compressed, %d entries", res.Size>>20, res.Files)
	return gw, st, res.Ref, manifest.TrustedKeys{pub}
}

func BenchmarkFetchVerifyExtract(b *testing.B) {
	_, st, ref, keys := benchArtifact(b)
	work := b.TempDir()
	b.SetBytes(benchTotal)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		cache, dest := filepath.Join(work, fmt.Sprint("cache", i)), filepath.Join(work, fmt.Sprint("rel", i))
		f := &fetch.Fetcher{Store: st, CacheDir: cache, Trusted: keys}
		a, err := f.Fetch(context.Background(), ref)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Extract(context.Background(), dest, extract.Limits{}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(cache)
		os.RemoveAll(dest)
		b.StartTimer()
	}
}

// BenchmarkStdlibBaseline is the floor the real path is measured against: a plain GET of
// the object, zstd decode and tar extraction with no verification, limits, or fsync.
func BenchmarkStdlibBaseline(b *testing.B) {
	_, st, ref, _ := benchArtifact(b)
	u, err := st.PresignGet(context.Background(), ref.ArchiveKey(), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	work := b.TempDir()
	b.SetBytes(benchTotal)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		dest := filepath.Join(work, fmt.Sprint("rel", i))
		if err := naiveFetchExtract(u.String(), dest); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dest)
		b.StartTimer()
	}
}

// BenchmarkCurlZstdTar is the design's reference (`curl | zstd -d | tar -x`, DESIGN.md §10),
// for machines that have the three tools.
func BenchmarkCurlZstdTar(b *testing.B) {
	for _, tool := range []string{"bash", "curl", "zstd", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	_, st, ref, _ := benchArtifact(b)
	u, err := st.PresignGet(context.Background(), ref.ArchiveKey(), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	work := b.TempDir()
	b.SetBytes(benchTotal)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		dest := filepath.Join(work, fmt.Sprint("rel", i))
		os.Mkdir(dest, 0o755)
		cmd := exec.Command("bash", "-o", "pipefail", "-c", `curl -sf "$URL" | zstd -dq | tar -x -C "$DEST"`)
		cmd.Env = append(os.Environ(), "URL="+u.String(), "DEST="+dest)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		b.StopTimer()
		os.RemoveAll(dest)
		b.StartTimer()
	}
}

func naiveFetchExtract(url, dest string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET: %s", resp.Status)
	}
	zr, err := zstd.NewReader(resp.Body)
	if err != nil {
		return err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	if err := os.Mkdir(dest, 0o755); err != nil {
		return err
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dest, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(h.Mode).Perm()); err == nil {
				_, err = io.Copy(f, tr)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
		}
		if err != nil {
			return err
		}
	}
}
