// Package push builds an artifact from a directory and stores it: archive, manifest and
// signature, each uploaded only if its key is still free.
package push

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/captain-cd/captain/artifacts/archive"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/store"
)

// ErrConflict means a key already holds different content; nothing was overwritten.
var ErrConflict = errors.New("refusing to overwrite")

// objectStore is the part of store.Store that a push needs.
type objectStore interface {
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, opts store.PutOptions) error
	Get(ctx context.Context, key string, offset int64) (io.ReadCloser, int64, error)
	Stat(ctx context.Context, key string) (store.Info, error)
	ReadAll(ctx context.Context, key string, limit int64) ([]byte, error)
	Bucket() string
}

// Options describe one push.
type Options struct {
	Dir      string
	Pipeline string
	Commit   string
	Builder  string // who built it, e.g. "ci@runner-12"; free text
	Key      ed25519.PrivateKey
	TempDir  string    // where the archive is staged; empty means os.TempDir()
	Now      time.Time // manifest creation time; zero means time.Now()
	// Progress, if set, returns the hook minio-go reports archive upload bytes to.
	Progress func(total int64) io.Reader
	PartSize uint64 // multipart part size; zero uses the store's default
}

// Result says what is stored now.
type Result struct {
	Ref          store.Ref          `json:"ref"`
	URI          string             `json:"uri"`
	Size         int64              `json:"size"`
	Files        int                `json:"files"`
	ArchiveKey   string             `json:"archive_key"`
	ManifestKey  string             `json:"manifest_key"`
	SignatureKey string             `json:"signature_key"`
	Existed      bool               `json:"existed"` // everything was already stored; nothing uploaded
	Manifest     *manifest.Manifest `json:"-"`
}

// maxManifestBytes bounds what is read back from the bucket when comparing.
const maxManifestBytes = 256 << 20

// Push archives opts.Dir and uploads it. Pushing the same tree again is a no-op success;
// a key holding different bytes is never overwritten and yields ErrConflict.
func Push(ctx context.Context, st objectStore, opts Options) (*Result, error) {
	if err := manifest.ValidPipeline(opts.Pipeline); err != nil {
		return nil, err
	}
	if opts.Commit == "" {
		return nil, errors.New("no commit given: pass the commit the tree was built from")
	}
	if len(opts.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("no signing key: pass the private key written by `captain keygen`")
	}
	if fi, err := os.Stat(opts.Dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory to push", opts.Dir)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	built, err := archive.WriteFile(ctx, opts.Dir, opts.TempDir)
	if err != nil {
		return nil, err
	}
	defer os.Remove(built.Path)

	m := &manifest.Manifest{
		FormatVersion: manifest.FormatVersion,
		Pipeline:      opts.Pipeline,
		Commit:        opts.Commit,
		Created:       now.UTC().Truncate(time.Second),
		Builder:       opts.Builder,
		Archive:       manifest.Archive{SHA256: built.SHA256, Size: built.Size},
		Files:         built.Entries,
	}
	mb, err := m.Marshal()
	if err != nil {
		return nil, fmt.Errorf("tree %s cannot be an artifact: %w", opts.Dir, err)
	}
	ref := store.Ref{Bucket: st.Bucket(), Pipeline: opts.Pipeline, SHA256: built.SHA256}
	res := &Result{
		Ref: ref, URI: ref.String(), Size: built.Size, Files: len(m.Files),
		ArchiveKey: ref.ArchiveKey(), ManifestKey: ref.ManifestKey(), SignatureKey: ref.SignatureKey(),
	}

	archiveExisted, err := putArchive(ctx, st, ref, built, opts)
	if err != nil {
		return nil, err
	}
	mb, m, manifestExisted, err := putManifest(ctx, st, ref, mb, m)
	if err != nil {
		return nil, err
	}
	sigExisted, err := putSignature(ctx, st, ref, mb, opts.Key)
	if err != nil {
		return nil, err
	}
	res.Manifest = m
	res.Existed = archiveExisted && manifestExisted && sigExisted
	return res, nil
}

func putArchive(ctx context.Context, st objectStore, ref store.Ref, built *archive.Built, opts Options) (existed bool, err error) {
	f, err := os.Open(built.Path)
	if err != nil {
		return false, fmt.Errorf("open staged archive: %w", err)
	}
	defer f.Close()
	po := store.PutOptions{ContentType: "application/zstd", PartSize: opts.PartSize}
	if opts.Progress != nil {
		po.Progress = opts.Progress(built.Size)
	}
	// If-None-Match is enforced on single-part PUTs, but versitygw v1.8.0 ignores it on
	// CompleteMultipartUpload, so large archives are checked first. The window between the
	// check and the upload only matters for a second writer of different bytes under the same
	// content hash, which cannot happen without tampering.
	if _, err = st.Stat(ctx, ref.ArchiveKey()); errors.Is(err, store.ErrNotFound) {
		err = st.PutIfAbsent(ctx, ref.ArchiveKey(), f, built.Size, po)
	} else if err == nil {
		err = store.ErrExists
	}
	if !errors.Is(err, store.ErrExists) {
		return false, err
	}
	sum, size, err := hashObject(ctx, st, ref.ArchiveKey())
	if err != nil {
		return false, fmt.Errorf("compare with the stored archive: %w", err)
	}
	if sum != built.SHA256 || size != built.Size {
		return false, fmt.Errorf("%w %s: it holds %d bytes with sha256 %s, this push has %d bytes with sha256 %s; the bucket content is corrupt or was written by something else, inspect and remove it by hand",
			ErrConflict, ref.String(), size, sum, built.Size, built.SHA256)
	}
	return true, nil
}

func hashObject(ctx context.Context, st objectStore, key string) (string, int64, error) {
	rc, _, err := st.Get(ctx, key, 0)
	if err != nil {
		return "", 0, err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// putManifest stores mb. If a manifest is already there for the same archive and the same
// files (an earlier push of the same tree, perhaps from another commit), that one is kept:
// the artifact is what its content is, and its first manifest stays its description.
func putManifest(ctx context.Context, st objectStore, ref store.Ref, mb []byte, m *manifest.Manifest) ([]byte, *manifest.Manifest, bool, error) {
	key := ref.ManifestKey()
	err := st.PutIfAbsent(ctx, key, bytes.NewReader(mb), int64(len(mb)), store.PutOptions{ContentType: "application/json"})
	if !errors.Is(err, store.ErrExists) {
		return mb, m, false, err
	}
	old, err := st.ReadAll(ctx, key, maxManifestBytes)
	if err != nil {
		return nil, nil, false, fmt.Errorf("compare with the stored manifest: %w", err)
	}
	if bytes.Equal(old, mb) {
		return mb, m, true, nil
	}
	om, err := manifest.Parse(old)
	if err != nil {
		return nil, nil, false, fmt.Errorf("%w s3://%s/%s: the stored manifest is unreadable (%v); inspect and remove it by hand", ErrConflict, ref.Bucket, key, err)
	}
	if om.Archive != m.Archive || om.Pipeline != m.Pipeline || !slices.Equal(om.Files, m.Files) {
		return nil, nil, false, fmt.Errorf("%w s3://%s/%s: the stored manifest describes other content", ErrConflict, ref.Bucket, key)
	}
	return old, om, true, nil
}

func putSignature(ctx context.Context, st objectStore, ref store.Ref, mb []byte, key ed25519.PrivateKey) (bool, error) {
	sig := manifest.Sign(key, mb)
	k := ref.SignatureKey()
	err := st.PutIfAbsent(ctx, k, bytes.NewReader(sig), int64(len(sig)), store.PutOptions{ContentType: "text/plain"})
	if !errors.Is(err, store.ErrExists) {
		return false, err
	}
	old, err := st.ReadAll(ctx, k, 4096)
	if err != nil {
		return false, fmt.Errorf("compare with the stored signature: %w", err)
	}
	// ed25519 is deterministic: the same key over the same bytes gives the same signature.
	if bytes.Equal(old, sig) {
		return true, nil
	}
	trusted := manifest.TrustedKeys{key.Public().(ed25519.PublicKey)}
	if trusted.Verify(mb, old) == nil {
		return true, nil
	}
	return false, fmt.Errorf("%w s3://%s/%s: the stored signature was made with another key or is corrupt; remove it by hand if that key is not trusted", ErrConflict, ref.Bucket, k)
}
