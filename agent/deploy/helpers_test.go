package deploy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/artifacts/archive"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/store"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

const testPipeline = "web"

// dirBucket is a bucket kept in a local directory: objects are files under root named by
// their keys. It counts reads per key so tests can tell whether an archive was downloaded.
type dirBucket struct {
	root string
	mu   sync.Mutex
	gets map[string]int
}

func (b *dirBucket) Get(ctx context.Context, key string, offset int64) (io.ReadCloser, int64, error) {
	b.mu.Lock()
	if b.gets == nil {
		b.gets = map[string]int{}
	}
	b.gets[key]++
	b.mu.Unlock()
	f, err := os.Open(filepath.Join(b.root, filepath.FromSlash(key)))
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, store.ErrNotFound)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size() - offset, nil
}

// testBucket is the bucket name every test artifact lives in.
const testBucket = "artifacts"

func (b *dirBucket) Bucket() string { return testBucket }

func (b *dirBucket) count(key string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gets[key]
}

// testArtifact is a signed artifact in a dirBucket.
type testArtifact struct {
	ref      *captainv1.ArtifactRef
	manifest *manifest.Manifest
	// ArchiveKey is the object key of the archive, to count downloads.
	archiveKey string
}

// buildArtifact archives files (path -> content; a value starting with "->" is a symlink)
// with artifacts/archive, signs its manifest with key, and stores all three in the bucket.
func buildArtifact(t testing.TB, bucket *dirBucket, key ed25519.PrivateKey, files map[string]string) testArtifact {
	t.Helper()
	src := t.TempDir()
	for p, content := range files {
		full := filepath.Join(src, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		mode := fs.FileMode(0o644)
		if strings.HasPrefix(content, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	built, err := archive.WriteFile(context.Background(), src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{
		FormatVersion: manifest.FormatVersion,
		Pipeline:      testPipeline,
		Commit:        "0123456789abcdef0123456789abcdef01234567",
		Created:       time.Now().UTC().Truncate(time.Second),
		Builder:       "agent/deploy tests",
		Archive:       manifest.Archive{SHA256: built.SHA256, Size: built.Size},
		Files:         built.Entries,
	}
	mb, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ref := store.Ref{Bucket: testBucket, Pipeline: testPipeline, SHA256: built.SHA256}
	put := func(k string, b []byte) {
		p := filepath.Join(bucket.root, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	archiveBytes, err := os.ReadFile(built.Path)
	if err != nil {
		t.Fatal(err)
	}
	put(ref.ArchiveKey(), archiveBytes)
	put(ref.ManifestKey(), mb)
	put(ref.SignatureKey(), manifest.Sign(key, mb))
	return testArtifact{
		ref: &captainv1.ArtifactRef{
			Bucket: ref.Bucket, Key: ref.ArchiveKey(), Sha256: ref.SHA256, Size: built.Size,
			ManifestKey: ref.ManifestKey(), SignatureKey: ref.SignatureKey(),
		},
		manifest:   m,
		archiveKey: ref.ArchiveKey(),
	}
}

// host is one simulated host: a state dir, an app root and a bucket, all real directories.
type host struct {
	t        testing.TB
	stateDir string
	appRoot  string
	bucket   *dirBucket
	key      ed25519.PrivateKey
	pub      ed25519.PublicKey
	store    *localstate.Store
	d        *Deployer

	mu     sync.Mutex
	events []*captainv1.HostEvent
}

func newHost(t testing.TB) *host {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := &host{
		t:        t,
		stateDir: t.TempDir(),
		appRoot:  filepath.Join(t.TempDir(), "app"),
		bucket:   &dirBucket{root: t.TempDir()},
		key:      priv,
		pub:      pub,
	}
	h.open()
	return h
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// open (re)opens local state and builds a Deployer on it, as an agent does at start.
func (h *host) open() {
	h.t.Helper()
	st, err := localstate.Open(h.stateDir)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { st.Close() })
	h.store = st
	h.d = newDeployer(st, h.bucket, h.pub, testLogger(h.t))
	h.d.OnEvent = func(ev *captainv1.HostEvent) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.events = append(h.events, ev)
	}
}

func newDeployer(st *localstate.Store, bucket *dirBucket, pub ed25519.PublicKey, log *slog.Logger) *Deployer {
	cache := filepath.Join(st.Dir(), "cache")
	return &Deployer{
		State: st,
		Fetcher: &fetch.Fetcher{
			Store:    bucket,
			CacheDir: cache,
			Trusted:  manifest.TrustedKeys{pub},
			Logger:   log,
		},
		CacheDir: cache,
		Logger:   log,
	}
}

func (h *host) states() []captainv1.HostDeployState {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []captainv1.HostDeployState
	for _, ev := range h.events {
		out = append(out, ev.GetState())
	}
	return out
}

func (h *host) app() *localstate.App {
	var a *localstate.App
	h.store.View(func(st *localstate.State) { a = st.Apps[testPipeline] })
	if a == nil {
		h.t.Fatalf("no local state for pipeline %s", testPipeline)
	}
	return a
}

func (h *host) current() string {
	h.t.Helper()
	cur, err := ReadCurrent(h.appRoot)
	if err != nil {
		h.t.Fatal(err)
	}
	return cur
}

// releaseDirs lists the entries of releases/.
func (h *host) releaseDirs() []string {
	h.t.Helper()
	ents, err := os.ReadDir(filepath.Join(h.appRoot, ReleasesDir))
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func (h *host) deploy(want *captainv1.DesiredApp) *Result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := h.d.Deploy(ctx, want)
	if err != nil {
		h.t.Fatalf("deploy %s: %v", want.GetDeploymentId(), err)
	}
	return res
}

// settings are deploy settings with an activate hook that records activations, and no
// health checks; tests add what they exercise.
func (h *host) settings() *captainv1.DeploySettings {
	return &captainv1.DeploySettings{
		AppRoot: h.appRoot,
		Hooks: &captainv1.Hooks{
			Activate: &captainv1.Hook{Command: []string{"sh", "-c", `echo "$CAPTAIN_RELEASE $CAPTAIN_DEPLOYMENT_ID" >> "$CAPTAIN_APP_ROOT/activations"`}},
		},
		HealthDeadline: durationpb.New(10 * time.Second),
		KeepReleases:   5,
	}
}

func desired(release uint64, id string, art testArtifact, s *captainv1.DeploySettings) *captainv1.DesiredApp {
	return &captainv1.DesiredApp{
		Pipeline:     testPipeline,
		Environment:  "use1-az1",
		Release:      release,
		DeploymentId: id,
		Artifact:     art.ref,
		Deploy:       s,
	}
}

// appFiles is a small release tree: a script, a config naming the release, a nested dir
// and a symlink inside the tree.
func appFiles(release int) map[string]string {
	return map[string]string{
		"bin/app":         "#!/bin/sh\necho release " + fmt.Sprint(release) + "\n",
		"config/app.conf": fmt.Sprintf("release = %d\n", release),
		"static/a/b.txt":  strings.Repeat("b", 1000+release),
		"app":             "->bin/app",
	}
}

// assertCurrentComplete fails unless current points at a directory that verifies against m.
func assertCurrentComplete(t testing.TB, appRoot string, m ...*manifest.Manifest) string {
	t.Helper()
	cur, err := ReadCurrent(appRoot)
	if err != nil || cur == "" {
		t.Fatalf("current missing: %q %v", cur, err)
	}
	var errs []string
	for _, mm := range m {
		err := verifyTree(filepath.Join(appRoot, cur), mm)
		if err == nil {
			return cur
		}
		errs = append(errs, err.Error())
	}
	t.Fatalf("current -> %s is not a complete release: %v", cur, errs)
	return ""
}

// cachedSHAs lists the artifacts in the cache that have all three files, sorted.
func (h *host) cachedSHAs() []string {
	h.t.Helper()
	ents, err := os.ReadDir(filepath.Join(h.stateDir, "cache"))
	if err != nil {
		h.t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range ents {
		if sha, _, ok := strings.Cut(e.Name(), "."); ok && sha != "" {
			count[sha]++
		}
	}
	var out []string
	for sha, n := range count {
		if n != 3 {
			h.t.Errorf("cache entry %s has %d files, want archive, manifest and signature", sha, n)
		}
		out = append(out, sha)
	}
	slices.Sort(out)
	return out
}

func atoi(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
