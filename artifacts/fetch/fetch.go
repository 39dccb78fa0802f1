// Package fetch brings an artifact from the bucket into a local cache keyed by its sha256,
// verifying the signature and the archive hash, and unpacks it from there.
package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/store"
)

// ErrVerification means the artifact in the bucket is not what a trusted key signed: a bad
// signature, a manifest for another archive, or archive bytes with the wrong hash.
var ErrVerification = errors.New("artifact verification failed")

// objectGetter is the part of store.Store that fetching needs.
type objectGetter interface {
	Get(ctx context.Context, key string, offset int64) (io.ReadCloser, int64, error)
	Bucket() string
}

// Retry bounds how transient S3 errors are retried: Attempts tries in all, waiting Initial,
// then twice as long each time up to Max.
type Retry struct {
	Attempts int
	Initial  time.Duration
	Max      time.Duration
}

// DefaultRetry rides out a gateway restart of a few seconds.
func DefaultRetry() Retry {
	return Retry{Attempts: 6, Initial: 200 * time.Millisecond, Max: 5 * time.Second}
}

// Fetcher downloads artifacts into CacheDir.
type Fetcher struct {
	Store    objectGetter
	CacheDir string
	Trusted  manifest.TrustedKeys
	Retry    Retry
	// StallTimeout ends a download attempt that receives no bytes for this long; zero means 30s.
	StallTimeout time.Duration
	Logger       *slog.Logger
}

// Artifact is a verified artifact in the cache.
type Artifact struct {
	Ref         store.Ref
	ArchivePath string
	Manifest    *manifest.Manifest
	// FromCache is true when nothing was downloaded.
	FromCache bool
}

const maxManifestBytes = 256 << 20

func (f *Fetcher) paths(sha string) (archive, man, sig string) {
	base := filepath.Join(f.CacheDir, sha)
	return base + ".tar.zst", base + ".manifest.json", base + ".sig"
}

func (f *Fetcher) logger() *slog.Logger {
	if f.Logger != nil {
		return f.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Fetch makes sure the artifact is in the cache and verified, downloading what is missing.
func (f *Fetcher) Fetch(ctx context.Context, ref store.Ref) (*Artifact, error) {
	if err := f.checkRef(ref); err != nil {
		return nil, err
	}
	if len(f.Trusted) == 0 {
		return nil, errors.New("no trusted keys: an artifact is only unpacked after its signature verifies")
	}
	if err := os.MkdirAll(f.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	f.sweep(ref.SHA256)
	if a, err := f.cached(ref); err == nil {
		return a, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		f.logger().Warn("cached artifact failed verification; downloading again", "ref", ref.String(), "err", err)
	}
	mb, sig, m, err := f.fetchManifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	archivePath, manPath, sigPath := f.paths(ref.SHA256)
	if err := f.download(ctx, ref, m, archivePath); err != nil {
		return nil, err
	}
	// The archive is in place; manifest and signature go last, so an entry without them is
	// incomplete and is fetched again rather than trusted.
	if err := writeAtomic(f.CacheDir, sigPath, sig); err != nil {
		return nil, err
	}
	if err := writeAtomic(f.CacheDir, manPath, mb); err != nil {
		return nil, err
	}
	if err := syncDir(f.CacheDir); err != nil {
		return nil, fmt.Errorf("sync cache dir: %w", err)
	}
	return &Artifact{Ref: ref, ArchivePath: archivePath, Manifest: m}, nil
}

func (f *Fetcher) checkRef(ref store.Ref) error {
	if err := ref.Validate(); err != nil {
		return err
	}
	if b := f.Store.Bucket(); b != ref.Bucket {
		return fmt.Errorf("%s is in bucket %q but this fetcher reads bucket %q", ref, ref.Bucket, b)
	}
	return nil
}

// sweep removes temporary files a crashed fetch of this artifact left behind. A live
// download writes at least every StallTimeout, so a file idle for much longer is abandoned.
func (f *Fetcher) sweep(sha string) {
	idle := max(10*time.Minute, 4*f.stallTimeout())
	names, _ := filepath.Glob(filepath.Join(f.CacheDir, "."+sha+".*.tmp-*"))
	for _, n := range names {
		if fi, err := os.Lstat(n); err == nil && time.Since(fi.ModTime()) > idle {
			if os.Remove(n) == nil {
				f.logger().Info("removed abandoned download", "file", n)
			}
		}
	}
}

func (f *Fetcher) stallTimeout() time.Duration {
	if f.StallTimeout > 0 {
		return f.StallTimeout
	}
	return 30 * time.Second
}

// cached returns the entry if all three files are present and verify; fs.ErrNotExist if any
// is missing.
func (f *Fetcher) cached(ref store.Ref) (*Artifact, error) {
	archivePath, manPath, sigPath := f.paths(ref.SHA256)
	mb, err := os.ReadFile(manPath)
	if err != nil {
		return nil, err
	}
	sig, err := os.ReadFile(sigPath)
	if err != nil {
		return nil, err
	}
	m, err := f.verifyManifest(ref, mb, sig)
	if err != nil {
		return nil, err
	}
	sum, n, err := hashFile(archivePath)
	if err != nil {
		return nil, err
	}
	if sum != m.Archive.SHA256 || n != m.Archive.Size {
		return nil, fmt.Errorf("%w: cached archive has sha256 %s (%d bytes), manifest says %s", ErrVerification, sum, n, m.Archive.SHA256)
	}
	return &Artifact{Ref: ref, ArchivePath: archivePath, Manifest: m, FromCache: true}, nil
}

func (f *Fetcher) verifyManifest(ref store.Ref, mb, sig []byte) (*manifest.Manifest, error) {
	m, err := f.Trusted.VerifyAndParse(mb, sig)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrVerification, ref.ManifestKey(), err)
	}
	if m.Archive.SHA256 != ref.SHA256 || m.Pipeline != ref.Pipeline {
		return nil, fmt.Errorf("%w: manifest describes %s/%s, not %s/%s", ErrVerification, m.Pipeline, m.Archive.SHA256, ref.Pipeline, ref.SHA256)
	}
	return m, nil
}

func (f *Fetcher) fetchManifest(ctx context.Context, ref store.Ref) (mb, sig []byte, m *manifest.Manifest, err error) {
	if mb, err = f.readSmall(ctx, "manifest", ref.ManifestKey()); err != nil {
		return nil, nil, nil, err
	}
	if sig, err = f.readSmall(ctx, "signature", ref.SignatureKey()); err != nil {
		return nil, nil, nil, err
	}
	m, err = f.verifyManifest(ref, mb, sig)
	return mb, sig, m, err
}

// Manifest downloads and verifies only the manifest; with no trusted keys it is parsed
// without verification (for read-only views such as diff).
func (f *Fetcher) Manifest(ctx context.Context, ref store.Ref) (*manifest.Manifest, error) {
	if err := f.checkRef(ref); err != nil {
		return nil, err
	}
	mb, err := f.readSmall(ctx, "manifest", ref.ManifestKey())
	if err != nil {
		return nil, err
	}
	if len(f.Trusted) == 0 {
		return manifest.Parse(mb)
	}
	sig, err := f.readSmall(ctx, "signature", ref.SignatureKey())
	if err != nil {
		return nil, err
	}
	return f.verifyManifest(ref, mb, sig)
}

func (f *Fetcher) readSmall(ctx context.Context, what, key string) ([]byte, error) {
	var out []byte
	err := f.retry(ctx, "fetch "+what, func(ctx context.Context, w *watchdog) error {
		rc, _, err := f.Store.Get(ctx, key, 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := io.ReadAll(io.LimitReader(w.reader(rc), maxManifestBytes+1))
		if err != nil {
			return err
		}
		if len(b) > maxManifestBytes {
			return fmt.Errorf("%w: %s is larger than %d bytes", ErrVerification, key, maxManifestBytes)
		}
		out = b
		return nil
	})
	return out, err
}

// download streams the archive into a temporary file in the cache dir, hashing as it goes,
// resuming from the last byte after a transient error, and renames it into place only after
// size and hash match the signed manifest.
func (f *Fetcher) download(ctx context.Context, ref store.Ref, m *manifest.Manifest, dst string) (err error) {
	tmp, err := os.CreateTemp(f.CacheDir, "."+ref.SHA256+".tar.zst.tmp-*")
	if err != nil {
		return fmt.Errorf("create cache file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	var written int64
	want := m.Archive.Size
	err = f.retry(ctx, "fetch archive", func(ctx context.Context, w *watchdog) error {
		rc, _, err := f.Store.Get(ctx, ref.ArchiveKey(), written)
		if err != nil {
			return err
		}
		defer rc.Close()
		// One byte more than the manifest allows, to notice an object that is too long.
		n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(w.reader(rc), want-written+1))
		written += n
		if err != nil {
			return err
		}
		if written < want {
			return fmt.Errorf("download ended after %d of %d bytes: %w", written, want, io.ErrUnexpectedEOF)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if written != want || sum != m.Archive.SHA256 {
		return fmt.Errorf("%w: %s has sha256 %s (%d bytes), the signed manifest says %s (%d bytes)", ErrVerification, ref.ArchiveKey(), sum, written, m.Archive.SHA256, want)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync cache file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close cache file: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("move archive into the cache: %w", err)
	}
	return nil
}

// retry runs fn until it succeeds, fails permanently, or the attempts run out. Each attempt
// gets a context that is cancelled when no bytes arrive for StallTimeout, so a hung
// connection counts as a transient timeout instead of blocking forever.
func (f *Fetcher) retry(ctx context.Context, what string, fn func(ctx context.Context, w *watchdog) error) error {
	r := f.Retry
	if r.Attempts <= 0 {
		r = DefaultRetry()
	}
	wait := r.Initial
	var err error
	for attempt := 1; ; attempt++ {
		err = f.attempt(ctx, fn)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if !store.Transient(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if attempt >= r.Attempts {
			return fmt.Errorf("%s: gave up after %d attempts, the S3 endpoint keeps failing; check that it is up and reachable: %w", what, attempt, err)
		}
		f.logger().Warn("transient S3 error; retrying", "what", what, "attempt", attempt, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(wait*2, r.Max)
	}
}

// errStalled is returned (as a timeout) when an attempt made no progress for StallTimeout.
type errStalled struct{ d time.Duration }

func (e errStalled) Error() string   { return fmt.Sprintf("no data received for %s", e.d) }
func (e errStalled) Timeout() bool   { return true }
func (e errStalled) Temporary() bool { return true }

func (f *Fetcher) attempt(ctx context.Context, fn func(ctx context.Context, w *watchdog) error) error {
	stall := f.stallTimeout()
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := &watchdog{d: stall, cancel: cancel}
	w.arm()
	defer w.stop()
	err := fn(actx, w)
	if c := context.Cause(actx); err != nil && errors.As(c, new(errStalled)) && ctx.Err() == nil {
		return fmt.Errorf("%w (%v)", c, err)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func writeAtomic(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create cache file: %w", err)
	}
	_, err = io.Copy(tmp, bytes.NewReader(data))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func hashFile(name string) (string, int64, error) {
	fh, err := os.Open(name)
	if err != nil {
		return "", 0, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Extract unpacks a fetched artifact into dest (see extract.Extract).
func (a *Artifact) Extract(ctx context.Context, dest string, lim extract.Limits) error {
	fh, err := os.Open(a.ArchivePath)
	if err != nil {
		return fmt.Errorf("open cached archive: %w", err)
	}
	defer fh.Close()
	return extract.Extract(ctx, fh, a.Manifest, dest, lim)
}

// watchdog cancels an attempt when poke is not called for d.
type watchdog struct {
	d      time.Duration
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	t      *time.Timer
}

func (w *watchdog) arm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t = time.AfterFunc(w.d, func() { w.cancel(errStalled{w.d}) })
}

func (w *watchdog) poke() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.t != nil {
		w.t.Reset(w.d)
	}
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.t != nil {
		w.t.Stop()
		w.t = nil
	}
}

// reader pokes the watchdog whenever bytes arrive.
func (w *watchdog) reader(r io.Reader) io.Reader { return &pokeReader{r: r, w: w} }

type pokeReader struct {
	r io.Reader
	w *watchdog
}

func (p *pokeReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.w.poke()
	}
	return n, err
}
