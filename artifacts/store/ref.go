package store

import (
	"fmt"
	"strings"

	"github.com/captain-cd/captain/artifacts/manifest"
)

// Ref names one artifact: s3://BUCKET/artifacts/<pipeline>/<sha256>.tar.zst.
type Ref struct {
	Bucket   string `json:"bucket"`
	Pipeline string `json:"pipeline"`
	SHA256   string `json:"sha256"`
}

const (
	keyPrefix     = "artifacts/"
	archiveSuffix = ".tar.zst"
)

// ArchiveKey is the object key of the archive.
func (r Ref) ArchiveKey() string { return keyPrefix + r.Pipeline + "/" + r.SHA256 + archiveSuffix }

// ManifestKey is the object key of the manifest, beside the archive.
func (r Ref) ManifestKey() string { return keyPrefix + r.Pipeline + "/" + r.SHA256 + ".manifest.json" }

// SignatureKey is the object key of the manifest signature.
func (r Ref) SignatureKey() string { return keyPrefix + r.Pipeline + "/" + r.SHA256 + ".sig" }

func (r Ref) String() string { return "s3://" + r.Bucket + "/" + r.ArchiveKey() }

// Validate checks that every part is usable in an object key.
func (r Ref) Validate() error {
	if r.Bucket == "" || strings.ContainsAny(r.Bucket, "/ ") {
		return fmt.Errorf("bucket %q is not a valid bucket name", r.Bucket)
	}
	if err := manifest.ValidPipeline(r.Pipeline); err != nil {
		return err
	}
	if !manifest.ValidSHA256(r.SHA256) {
		return fmt.Errorf("sha256 %q is not 64 lowercase hex digits", r.SHA256)
	}
	return nil
}

// ParseRef reads the string form written by Ref.String.
func ParseRef(s string) (Ref, error) {
	const want = "want s3://BUCKET/artifacts/PIPELINE/SHA256.tar.zst"
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return Ref{}, fmt.Errorf("artifact reference %q: %s", s, want)
	}
	bucket, key, ok := strings.Cut(rest, "/")
	if !ok {
		return Ref{}, fmt.Errorf("artifact reference %q: %s", s, want)
	}
	key, ok1 := strings.CutPrefix(key, keyPrefix)
	key, ok2 := strings.CutSuffix(key, archiveSuffix)
	pipeline, sha, ok3 := strings.Cut(key, "/")
	if !ok1 || !ok2 || !ok3 {
		return Ref{}, fmt.Errorf("artifact reference %q: %s", s, want)
	}
	r := Ref{Bucket: bucket, Pipeline: pipeline, SHA256: sha}
	if err := r.Validate(); err != nil {
		return Ref{}, fmt.Errorf("artifact reference %q: %w", s, err)
	}
	return r, nil
}
