package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/s3test"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// With the artifact store down, the agent retries, then reports the deployment failed with the
// store's error; the running release stays current and no half-made directory is left.
func TestS3UnreachableRetriesThenFailsAndKeepsTheOldRelease(t *testing.T) {
	gw := s3test.Start(t)
	h := newHost(t)
	first := buildArtifact(t, h.bucket, h.key, appFiles(1))
	if res := h.deploy(desired(1, "d-1", first, h.settings())); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("release 1: %v %s", res.State, res.Message)
	}

	// Release 2 lives in the real gateway.
	src := t.TempDir()
	for p, content := range appFiles(2) {
		if strings.HasPrefix(content, "->") {
			if err := os.Symlink(strings.TrimPrefix(content, "->"), filepath.Join(src, p)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, p), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pushed, err := push.Push(context.Background(), gw.Store(), push.Options{Dir: src, Pipeline: testPipeline, Commit: strings.Repeat("2", 40), Key: h.key, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	h.d.Fetcher = &fetch.Fetcher{
		Store: gw.Store(), CacheDir: filepath.Join(h.stateDir, "cache"), Trusted: h.d.Fetcher.(*fetch.Fetcher).Trusted,
		Retry: fetch.Retry{Attempts: 3, Initial: 50 * time.Millisecond, Max: 100 * time.Millisecond}, Logger: testLogger(t),
	}
	gw.Stop()

	art := testArtifact{ref: &captainv1.ArtifactRef{
		Bucket: pushed.Ref.Bucket, Key: pushed.ArchiveKey, Sha256: pushed.Ref.SHA256, Size: pushed.Size,
		ManifestKey: pushed.ManifestKey, SignatureKey: pushed.SignatureKey,
	}}
	start := time.Now()
	res := h.deploy(desired(2, "d-2", art, h.settings()))
	if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
		t.Fatalf("state %v, want FAILED", res.State)
	}
	if !strings.Contains(res.Message, "3 attempts") {
		t.Errorf("message %q should say it retried", res.Message)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("gave up after %s; the retry policy should bound it", time.Since(start))
	}
	if cur := h.current(); cur != "releases/1-d-1" {
		t.Fatalf("current -> %s, want release 1 untouched", cur)
	}
	for _, d := range h.releaseDirs() {
		if strings.HasPrefix(d, "2-") {
			t.Fatalf("a directory for release 2 was left: %v", h.releaseDirs())
		}
	}
	if got := h.states(); got[len(got)-1] != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
		t.Fatalf("last event %v, want FAILED reported", got[len(got)-1])
	}
}
