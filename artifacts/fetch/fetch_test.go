package fetch_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/artifacts/store"
)

type fixture struct {
	gw      *s3test.Gateway
	st      *store.Store
	ref     store.Ref
	trusted manifest.TrustedKeys
	src     string
}

func setup(t *testing.T, bigBytes int) *fixture {
	t.Helper()
	gw := s3test.Start(t)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	os.MkdirAll(filepath.Join(src, "static/css"), 0o755)
	os.WriteFile(filepath.Join(src, "bin/app"), []byte("#!/bin/sh\nexec true\n"), 0o755)
	os.WriteFile(filepath.Join(src, "static/css/site.css"), []byte("body{}"), 0o644)
	os.Symlink("../bin/app", filepath.Join(src, "static/app"))
	if bigBytes > 0 {
		b := make([]byte, bigBytes)
		rand.Read(b)
		os.WriteFile(filepath.Join(src, "blob"), b, 0o600)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	st := gw.Store()
	res, err := push.Push(context.Background(), st, push.Options{Dir: src, Pipeline: "web", Commit: "abc123", Key: priv, TempDir: t.TempDir()})
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return &fixture{gw: gw, st: st, ref: res.Ref, trusted: manifest.TrustedKeys{pub}, src: src}
}

func (fx *fixture) fetcher(t *testing.T) *fetch.Fetcher {
	return &fetch.Fetcher{Store: fx.st, CacheDir: t.TempDir(), Trusted: fx.trusted,
		Retry: fetch.Retry{Attempts: 3, Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
}

func sameTree(t *testing.T, a, b string) {
	t.Helper()
	err := filepath.Walk(a, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		other, err := os.Lstat(filepath.Join(b, rel))
		if err != nil {
			t.Errorf("%s missing from the extracted tree: %v", rel, err)
			return nil
		}
		if rel != "." && other.Mode() != fi.Mode() {
			t.Errorf("%s mode %v, want %v", rel, other.Mode(), fi.Mode())
		}
		if fi.Mode().IsRegular() {
			x, _ := os.ReadFile(p)
			y, _ := os.ReadFile(filepath.Join(b, rel))
			if !bytes.Equal(x, y) {
				t.Errorf("%s content differs", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPushFetchExtractRoundTrip(t *testing.T) {
	fx := setup(t, 0)
	f := fx.fetcher(t)
	ctx := context.Background()
	a, err := f.Fetch(ctx, fx.ref)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if a.FromCache || a.Manifest.Commit != "abc123" {
		t.Errorf("first fetch: FromCache=%v commit=%s", a.FromCache, a.Manifest.Commit)
	}
	dest := filepath.Join(t.TempDir(), "1-d1")
	if err := a.Extract(ctx, dest, extract.Limits{}); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	sameTree(t, fx.src, dest)
	if target, _ := os.Readlink(filepath.Join(dest, "static/app")); target != "../bin/app" {
		t.Errorf("symlink target = %q", target)
	}

	// With S3 gone, the cached, verified copy is enough (rollbacks need no download).
	fx.gw.Stop()
	again, err := f.Fetch(ctx, fx.ref)
	if err != nil || !again.FromCache {
		t.Fatalf("second fetch with S3 stopped: FromCache=%v err=%v", again != nil && again.FromCache, err)
	}
	entries, _ := os.ReadDir(f.CacheDir)
	if len(entries) != 3 {
		t.Errorf("cache holds %d files, want archive, manifest, signature", len(entries))
	}
}

func TestFetchRejectsTamperedArtifactBeforeExtraction(t *testing.T) {
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name    string
		tamper  func(t *testing.T, fx *fixture)
		trusted func(fx *fixture) manifest.TrustedKeys
		want    error
	}{
		{name: "archive bytes changed", want: fetch.ErrVerification, tamper: func(t *testing.T, fx *fixture) {
			flipByte(t, fx.gw.ObjectPath(fx.ref.ArchiveKey()), 100)
		}},
		{name: "manifest changed", want: manifest.ErrBadSignature, tamper: func(t *testing.T, fx *fixture) {
			p := fx.gw.ObjectPath(fx.ref.ManifestKey())
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte(`"abc123"`), []byte(`"abc124"`), 1), 0o644)
		}},
		{name: "signature changed", want: manifest.ErrBadSignature, tamper: func(t *testing.T, fx *fixture) {
			flipByte(t, fx.gw.ObjectPath(fx.ref.SignatureKey()), 5)
		}},
		{name: "signed by an untrusted key", want: manifest.ErrBadSignature,
			trusted: func(*fixture) manifest.TrustedKeys { return manifest.TrustedKeys{other} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx := setup(t, 0)
			if tc.tamper != nil {
				tc.tamper(t, fx)
			}
			f := fx.fetcher(t)
			if tc.trusted != nil {
				f.Trusted = tc.trusted(fx)
			}
			a, err := f.Fetch(context.Background(), fx.ref)
			if !errors.Is(err, fetch.ErrVerification) || !errors.Is(err, tc.want) {
				t.Fatalf("Fetch = %v, %v; want ErrVerification and %v", a, err, tc.want)
			}
			if left, _ := os.ReadDir(f.CacheDir); len(left) != 0 {
				t.Errorf("rejected artifact left %d files in the cache", len(left))
			}
		})
	}
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

func TestFetchWithWrongCredentialsFailsClearlyWithoutRetrying(t *testing.T) {
	fx := setup(t, 0)
	cfg := fx.gw.Config()
	cfg.Credentials = credentials.NewStaticV4("nobody", "wrong-secret", "")
	st, err := store.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := fx.fetcher(t)
	f.Store = st
	f.Retry = fetch.Retry{Attempts: 5, Initial: time.Second, Max: time.Second}
	start := time.Now()
	_, err = f.Fetch(context.Background(), fx.ref)
	if !errors.Is(err, store.ErrAccessDenied) || !strings.Contains(err.Error(), "check AWS_ACCESS_KEY_ID") {
		t.Fatalf("err = %v, want ErrAccessDenied naming the S3 error code", err)
	}
	t.Logf("error: %v", err)
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("credential error took %v: it was retried", d)
	}
}

// killingStore passes through to the real store, but kills the gateway once the archive
// download has delivered its first bytes, and optionally brings it back on the next request.
type killingStore struct {
	real    *store.Store
	gw      *s3test.Gateway
	restart bool
	once    sync.Once
	mu      sync.Mutex
	gets    []int64 // offsets of archive requests
}

func (k *killingStore) Bucket() string { return k.real.Bucket() }

func (k *killingStore) Get(ctx context.Context, key string, offset int64) (io.ReadCloser, int64, error) {
	if !strings.HasSuffix(key, ".tar.zst") {
		return k.real.Get(ctx, key, offset)
	}
	k.mu.Lock()
	k.gets = append(k.gets, offset)
	n := len(k.gets)
	k.mu.Unlock()
	if n > 1 && k.restart {
		k.once.Do(k.gw.Restart)
	}
	rc, size, err := k.real.Get(ctx, key, offset)
	if err != nil || n > 1 {
		return rc, size, err
	}
	return &killAfter{ReadCloser: rc, after: 1 << 20, kill: k.gw.Stop}, size, nil
}

type killAfter struct {
	io.ReadCloser
	after int64
	read  int64
	kill  func()
}

func (r *killAfter) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.read += int64(n)
	if r.read >= r.after && r.kill != nil {
		r.kill()
		r.kill = nil
	}
	return n, err
}

func TestFetchWhenS3StopsMidDownload(t *testing.T) {
	t.Run("stays down: retries, then a clear error, cache untouched", func(t *testing.T) {
		fx := setup(t, 24<<20)
		ks := &killingStore{real: fx.st, gw: fx.gw}
		f := fx.fetcher(t)
		f.Store = ks
		_, err := f.Fetch(context.Background(), fx.ref)
		if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") {
			t.Fatalf("err = %v, want a give-up error after 3 attempts", err)
		}
		t.Logf("error: %v", err)
		if len(ks.gets) != 3 {
			t.Errorf("archive requested %d times, want 3", len(ks.gets))
		}
		if left, _ := os.ReadDir(f.CacheDir); len(left) != 0 {
			t.Errorf("failed fetch left %d files in the cache", len(left))
		}
	})
	t.Run("comes back: download resumes and verifies", func(t *testing.T) {
		fx := setup(t, 24<<20)
		ks := &killingStore{real: fx.st, gw: fx.gw, restart: true}
		f := fx.fetcher(t)
		f.Store = ks
		a, err := f.Fetch(context.Background(), fx.ref)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		if len(ks.gets) < 2 || ks.gets[len(ks.gets)-1] == 0 {
			t.Errorf("archive request offsets %v: want a resumed request after the first", ks.gets)
		}
		dest := filepath.Join(t.TempDir(), "r")
		if err := a.Extract(context.Background(), dest, extract.Limits{}); err != nil {
			t.Fatal(err)
		}
		sameTree(t, fx.src, dest)
	})
}

func TestFetchRefusesRefFromAnotherBucket(t *testing.T) {
	fx := setup(t, 0)
	ref := fx.ref
	ref.Bucket = "elsewhere"
	if _, err := fx.fetcher(t).Fetch(context.Background(), ref); err == nil || !strings.Contains(err.Error(), `this fetcher reads bucket "artifacts"`) {
		t.Fatalf("err = %v, want a bucket mismatch", err)
	}
}

func TestFetchRemovesAbandonedTempFilesAndRepairsCache(t *testing.T) {
	fx := setup(t, 0)
	f := fx.fetcher(t)
	stale := filepath.Join(f.CacheDir, "."+fx.ref.SHA256+".tar.zst.tmp-123")
	os.WriteFile(stale, []byte("half"), 0o600)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(stale, old, old)
	a, err := f.Fetch(context.Background(), fx.ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("abandoned temp file still there: %v", err)
	}
	// A cached archive that no longer matches is downloaded again, not trusted.
	flipByte(t, a.ArchivePath, 10)
	again, err := f.Fetch(context.Background(), fx.ref)
	if err != nil || again.FromCache {
		t.Fatalf("fetch over a corrupt cache entry: FromCache=%v err=%v", again != nil && again.FromCache, err)
	}
	if third, err := f.Fetch(context.Background(), fx.ref); err != nil || !third.FromCache {
		t.Errorf("repaired cache entry not served from cache: %v", err)
	}
}

func TestFetchHonoursContextCancel(t *testing.T) {
	fx := setup(t, 0)
	fx.gw.Stop()
	f := fx.fetcher(t)
	f.Retry = fetch.Retry{Attempts: 100, Initial: time.Second, Max: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := f.Fetch(ctx, fx.ref)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}
