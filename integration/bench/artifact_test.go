package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/s3test"
)

// writeArtifactTree writes total bytes: half in 32 KiB files (half of them text-like and
// compressible, half random) over 64 directories, half in one random file.
func writeArtifactTree(dir string, total int64) (int, error) {
	const small = 32 << 10
	n := int(total / 2 / small)
	rng := mrand.New(mrand.NewPCG(1, 2))
	buf := make([]byte, small)
	for i := range n {
		d := filepath.Join(dir, fmt.Sprintf("pkg%02d", i%64))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, err
		}
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
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.dat", i)), buf, 0o644); err != nil {
			return 0, err
		}
	}
	big, err := os.Create(filepath.Join(dir, "big.bin"))
	if err != nil {
		return 0, err
	}
	if _, err := io.CopyN(big, rand.Reader, total-int64(n)*small); err != nil {
		big.Close()
		return 0, err
	}
	return n + 1, big.Close()
}

// benchArtifact times the agent's artifact path (download from versitygw, verify the signed
// manifest and the archive's digest, extract with limits into a fresh directory, fsync) against
// `curl | zstd -d | tar -x` of the same object from the same server, three runs each.
func benchArtifact(t *testing.T, e *env) []result {
	total := int64(scaled(256, e.scale, 32)) << 20
	gw := s3test.Start(t)
	st := gw.Store()
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := writeArtifactTree(src, total)
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := push.Push(ctx, st, push.Options{Dir: src, Pipeline: "bench", Commit: "c", Key: priv, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(src); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	const runs = 3
	median := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }

	var captain []time.Duration
	for i := range runs {
		cache, dest := filepath.Join(work, fmt.Sprint("cache", i)), filepath.Join(work, fmt.Sprint("rel", i))
		start := time.Now()
		f := &fetch.Fetcher{Store: st, CacheDir: cache, Trusted: []ed25519.PublicKey{pub}}
		a, err := f.Fetch(ctx, res.Ref)
		if err != nil {
			t.Fatal(err)
		}
		fetched := time.Since(start)
		if err := a.Extract(ctx, dest, extract.Limits{}); err != nil {
			t.Fatal(err)
		}
		captain = append(captain, time.Since(start))
		t.Logf("run %d: fetch + verify %s, extract %s", i, fetched.Round(time.Millisecond), (captain[i] - fetched).Round(time.Millisecond))
		if err := os.RemoveAll(cache); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(dest); err != nil {
			t.Fatal(err)
		}
	}
	c := median(captain)
	sc := fmt.Sprintf("artifact path, %d MiB (%d files, %d MiB compressed)", total>>20, files, res.Size>>20)
	out := []result{{Scenario: sc, Metric: "fetch + verify + extract (median of 3)", Value: float64(c.Milliseconds()), Unit: "ms",
		Note: fmt.Sprintf("%.0f MiB/s of content", float64(total>>20)/c.Seconds())}}

	for _, tool := range []string{"bash", "curl", "zstd", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			out[0].Note += fmt.Sprintf("; no baseline: %s is not installed (apt-get install curl zstd)", tool)
			return out
		}
	}
	u, err := st.PresignGet(ctx, res.Ref.ArchiveKey(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var curl []time.Duration
	for i := range runs {
		dest := filepath.Join(work, fmt.Sprint("curl", i))
		if err := os.Mkdir(dest, 0o755); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		cmd := exec.Command("bash", "-o", "pipefail", "-c", `curl -sf "$URL" | zstd -dq | tar -x -C "$DEST"`)
		cmd.Env = append(os.Environ(), "URL="+u.String(), "DEST="+dest)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("curl | zstd -d | tar -x: %v: %s", err, b)
		}
		curl = append(curl, time.Since(start))
		if err := os.RemoveAll(dest); err != nil {
			t.Fatal(err)
		}
	}
	b := median(curl)
	ratio := b.Seconds() / c.Seconds() * 100
	return append(out,
		result{Scenario: sc, Metric: "curl | zstd -d | tar -x (median of 3)", Value: float64(b.Milliseconds()), Unit: "ms"},
		result{Scenario: sc, Metric: "Captain's speed / baseline's", Value: ratio, Unit: "%", Target: ">= 80 %", Meets: boolp(ratio >= 80),
			Note: "Captain also checks the signature and digest, enforces extraction limits, and fsyncs the release before it can be flipped to; the baseline does none of that"},
	)
}
