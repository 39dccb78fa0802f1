package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/store"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// ArtifactStore tells the coordinator where to read artifact manifests. It reads manifests
// and signatures only, never archives.
type ArtifactStore struct {
	// Endpoint and Region locate the S3-compatible store (see store.Config).
	Endpoint, Region string
	// TrustedKeys, when non-empty, must have signed a manifest before it is used; empty means
	// manifests are read as stored.
	TrustedKeys manifest.TrustedKeys
	// Credentials default to minio-go's standard chain.
	Credentials *credentials.Credentials
}

// objectReader is what reading manifests needs from a bucket.
type objectReader interface {
	ReadAll(ctx context.Context, key string, limit int64) ([]byte, error)
}

const (
	// maxManifestBytes bounds a manifest download; a manifest of 100k files is ~20 MB.
	maxManifestBytes  = 64 << 20
	maxSignatureBytes = 4 << 10
	// manifestCacheSize bounds the cache; rollbacks and diffs touch a few recent releases.
	manifestCacheSize = 32
	// manifestTimeout keeps a preview answering when the store hangs: it then says file
	// changes are unavailable instead of waiting.
	manifestTimeout = 5 * time.Second
)

// manifestReader reads release manifests from the artifact store and keeps a few in memory:
// an artifact's manifest never changes, so the archive sha256 is a complete cache key.
type manifestReader struct {
	cfg ArtifactStore
	// open returns a reader for a bucket; tests and New use store.New.
	open func(bucket string) (objectReader, error)

	mu      sync.Mutex
	buckets map[string]objectReader
	cache   map[string]*manifest.Manifest
	order   []string // cache keys, oldest first, for eviction
}

func newManifestReader(cfg *ArtifactStore) *manifestReader {
	if cfg == nil {
		return nil
	}
	m := &manifestReader{cfg: *cfg, buckets: map[string]objectReader{}, cache: map[string]*manifest.Manifest{}}
	m.open = func(bucket string) (objectReader, error) {
		return store.New(store.Config{Endpoint: m.cfg.Endpoint, Region: m.cfg.Region, Bucket: bucket, Credentials: m.cfg.Credentials})
	}
	return m
}

// errNoArtifactStore explains why file changes are missing on a coordinator without a store.
var errNoArtifactStore = errors.New("the coordinator has no artifact store configured: start captaind with --s3-endpoint or --s3-region to see file changes")

// Manifest returns the manifest of a release's artifact.
func (m *manifestReader) Manifest(ctx context.Context, a *captainv1.ArtifactRef) (*manifest.Manifest, error) {
	if m == nil {
		return nil, errNoArtifactStore
	}
	m.mu.Lock()
	if mf, ok := m.cache[a.GetSha256()]; ok {
		m.mu.Unlock()
		return mf, nil
	}
	b, ok := m.buckets[a.GetBucket()]
	if !ok {
		var err error
		if b, err = m.open(a.GetBucket()); err != nil {
			m.mu.Unlock()
			return nil, fmt.Errorf("artifact store: %w", err)
		}
		m.buckets[a.GetBucket()] = b
	}
	m.mu.Unlock()

	mkey, skey := a.GetManifestKey(), a.GetSignatureKey()
	if mkey == "" || skey == "" {
		// Releases created from a bare archive key still follow the layout beside it.
		base := strings.TrimSuffix(a.GetKey(), ".tar.zst")
		mkey, skey = base+".manifest.json", base+".sig"
	}
	data, err := b.ReadAll(ctx, mkey, maxManifestBytes)
	if err != nil {
		return nil, fmt.Errorf("read manifest of artifact %.12s: %w", a.GetSha256(), err)
	}
	var mf *manifest.Manifest
	if len(m.cfg.TrustedKeys) > 0 {
		sig, err := b.ReadAll(ctx, skey, maxSignatureBytes)
		if err != nil {
			return nil, fmt.Errorf("read signature of artifact %.12s: %w", a.GetSha256(), err)
		}
		if mf, err = m.cfg.TrustedKeys.VerifyAndParse(data, sig); err != nil {
			return nil, fmt.Errorf("manifest of artifact %.12s: %w", a.GetSha256(), err)
		}
	} else if mf, err = manifest.Parse(data); err != nil {
		return nil, fmt.Errorf("manifest of artifact %.12s: %w", a.GetSha256(), err)
	}
	if mf.Archive.SHA256 != a.GetSha256() {
		return nil, fmt.Errorf("manifest s3://%s/%s describes archive %.12s, not the release's %.12s", a.GetBucket(), mkey, mf.Archive.SHA256, a.GetSha256())
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.cache[a.GetSha256()]; !ok {
		m.cache[a.GetSha256()] = mf
		m.order = append(m.order, a.GetSha256())
		if len(m.order) > manifestCacheSize {
			delete(m.cache, m.order[0])
			m.order = m.order[1:]
		}
	}
	return mf, nil
}

// FileChanges lists what changes in the files when going from artifact a to artifact b.
func (m *manifestReader) FileChanges(ctx context.Context, a, b *captainv1.ArtifactRef) ([]*captainv1.FileChange, error) {
	if a.GetSha256() == b.GetSha256() {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, manifestTimeout)
	defer cancel()
	ma, err := m.Manifest(ctx, a)
	if err != nil {
		return nil, err
	}
	mb, err := m.Manifest(ctx, b)
	if err != nil {
		return nil, err
	}
	var out []*captainv1.FileChange
	for _, c := range manifest.Diff(ma, mb) {
		fc := &captainv1.FileChange{Path: c.Path}
		switch c.What {
		case "added":
			fc.Kind = captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED
		case "removed":
			fc.Kind = captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED
		default:
			fc.Kind, fc.Detail = captainv1.FileChangeKind_FILE_CHANGE_KIND_CHANGED, c.What
		}
		var types []manifest.Type
		if c.Old != nil {
			fc.FromSize, types = c.Old.Size, append(types, c.Old.Type)
		}
		if c.New != nil {
			fc.ToSize, types = c.New.Size, append(types, c.New.Type)
		}
		// A directory or link added or removed would read as an empty file otherwise.
		if fc.Detail == "" {
			switch types[0] {
			case manifest.TypeDir:
				fc.Detail = "directory"
			case manifest.TypeSymlink:
				fc.Detail = "symlink"
			}
		}
		out = append(out, fc)
	}
	return out, nil
}
