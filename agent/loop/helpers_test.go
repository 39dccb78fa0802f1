package loop

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/captain-cd/captain/agent/agentclient"
	"github.com/captain-cd/captain/agent/deploy"
	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/artifacts/archive"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/store"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

const (
	testPipeline = "web"
	testBucket   = "artifacts"
	joinSecret   = "join-secret"
)

// coordinator is a real Connect AgentService over h2c that behaves like captaind's: join
// token for Register, host credentials for the rest, events deduplicated by seq.
type coordinator struct {
	captainv1connect.UnimplementedAgentServiceHandler

	mu         sync.Mutex
	hosts      map[string]string // host ID -> secret
	registers  []*captainv1.RegisterRequest
	heartbeats map[string]int // bearer -> count
	events     []*captainv1.HostEvent
	acked      uint64
	reportErr  error // when set, Report fails with it
	state      *captainv1.WatchResponse
	changed    chan struct{} // closed and replaced when state changes
	nextID     int
}

func newCoordinator() *coordinator {
	return &coordinator{hosts: map[string]string{}, heartbeats: map[string]int{}, changed: make(chan struct{})}
}

func (c *coordinator) host(h http.Header) (string, error) {
	bearer := strings.TrimPrefix(h.Get("Authorization"), "Bearer ")
	rest, ok := strings.CutPrefix(bearer, "host:")
	id, secret, _ := strings.Cut(rest, ":")
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ok || c.hosts[id] == "" || c.hosts[id] != secret {
		return "", connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("host %s is not registered: register again with a join token", id))
	}
	return id, nil
}

func (c *coordinator) Register(_ context.Context, req *connect.Request[captainv1.RegisterRequest]) (*connect.Response[captainv1.RegisterResponse], error) {
	if req.Header().Get("Authorization") != "Bearer "+joinSecret {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("unknown join token"))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.registers = append(c.registers, proto.CloneOf(req.Msg))
	id := req.Msg.GetHostId()
	if id == "" {
		c.nextID++
		id = fmt.Sprintf("h-%012x", c.nextID)
	}
	secret := fmt.Sprintf("s%d", len(c.registers))
	c.hosts[id] = secret
	return connect.NewResponse(&captainv1.RegisterResponse{HostId: id, HostSecret: secret, HeartbeatInterval: durationpb.New(50 * time.Millisecond)}), nil
}

func (c *coordinator) Heartbeat(_ context.Context, req *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
	if _, err := c.host(req.Header()); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.heartbeats[req.Header().Get("Authorization")]++
	return connect.NewResponse(&captainv1.HeartbeatResponse{HeartbeatInterval: durationpb.New(50 * time.Millisecond)}), nil
}

func (c *coordinator) Watch(ctx context.Context, req *connect.Request[captainv1.WatchRequest], s *connect.ServerStream[captainv1.WatchResponse]) error {
	if _, err := c.host(req.Header()); err != nil {
		return err
	}
	after := req.Msg.GetAfterIndex()
	for {
		c.mu.Lock()
		st, changed := c.state, c.changed
		c.mu.Unlock()
		if st != nil && st.GetIndex() > after {
			if err := s.Send(st); err != nil {
				return err
			}
			after = st.GetIndex()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

func (c *coordinator) Report(_ context.Context, req *connect.Request[captainv1.ReportRequest]) (*connect.Response[captainv1.ReportResponse], error) {
	id, err := c.host(req.Header())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id != req.Msg.GetHostId() {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("a host can only report for itself"))
	}
	if c.reportErr != nil {
		return nil, c.reportErr
	}
	for _, ev := range req.Msg.GetEvents() {
		if ev.GetSeq() > c.acked {
			c.events = append(c.events, ev)
			c.acked = ev.GetSeq()
		}
	}
	return connect.NewResponse(&captainv1.ReportResponse{AckedSeq: c.acked}), nil
}

// want publishes a new desired state with the given apps.
func (c *coordinator) want(apps ...*captainv1.DesiredApp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := c.state.GetIndex() + 1
	c.state = &captainv1.WatchResponse{Index: idx, Apps: apps}
	close(c.changed)
	c.changed = make(chan struct{})
}

// forget drops every host, as a coordinator restored from an old snapshot would.
func (c *coordinator) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hosts = map[string]string{}
}

func (c *coordinator) setReportErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reportErr = err
}

func (c *coordinator) snapshot() (registers []*captainv1.RegisterRequest, events []*captainv1.HostEvent, heartbeats map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hb := map[string]int{}
	for k, v := range c.heartbeats {
		hb[k] = v
	}
	return append([]*captainv1.RegisterRequest(nil), c.registers...), append([]*captainv1.HostEvent(nil), c.events...), hb
}

func serve(t *testing.T, c *coordinator) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(captainv1connect.NewAgentServiceHandler(c))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv.URL
}

func h2c() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// dirBucket is a bucket kept in a local directory, objects named by their keys.
type dirBucket struct{ root string }

func (b *dirBucket) Get(_ context.Context, key string, offset int64) (io.ReadCloser, int64, error) {
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

func (b *dirBucket) Bucket() string { return testBucket }

// host is one simulated host: state dir, app root, bucket and signing key, all real.
type host struct {
	t        *testing.T
	stateDir string
	appRoot  string
	rootDir  string // Config.RootDir; appRoot is then the pipeline's app_root, not a path here
	bucket   *dirBucket
	key      ed25519.PrivateKey
	pub      ed25519.PublicKey
	addr     string
	token    string // join token file
	notes    *notes
}

func newHost(t *testing.T, addr string) *host {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	tok := filepath.Join(t.TempDir(), "join-token")
	if err := os.WriteFile(tok, []byte(joinSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &host{t: t, stateDir: stateDir, appRoot: filepath.Join(t.TempDir(), "app"), bucket: &dirBucket{root: t.TempDir()}, key: priv, pub: pub, addr: addr, token: tok, notes: &notes{}}
}

// notes records sd_notify messages.
type notes struct {
	mu  sync.Mutex
	all []string
}

func (n *notes) add(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.all = append(n.all, s)
}

func (n *notes) has(prefix string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range n.all {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func (n *notes) list() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.all...)
}

// running is an agent process: its loops, local state and the way to stop it.
type running struct {
	agent  *Agent
	store  *localstate.Store
	cancel context.CancelFunc
	done   chan error
}

// start opens local state and runs an agent on it, as `captain-agent run` does.
func (h *host) start() *running {
	h.t.Helper()
	st, err := localstate.Open(h.stateDir)
	if err != nil {
		h.t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(tWriter{h.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cache := filepath.Join(h.stateDir, "cache")
	d := &deploy.Deployer{
		State:    st,
		Fetcher:  &fetch.Fetcher{Store: h.bucket, CacheDir: cache, Trusted: manifest.TrustedKeys{h.pub}, Logger: log},
		CacheDir: cache,
		Logger:   log,
	}
	cl, err := agentclient.New([]string{h.addr}, agentclient.Credentials{}, agentclient.Options{HTTPClient: h2c(), MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		h.t.Fatal(err)
	}
	a := New(Config{
		StateDir: h.stateDir, RootDir: h.rootDir, JoinTokenFile: h.token, Hostname: "web-1", Labels: map[string]string{"az": "use1-az1"},
		AgentVersion: "test", Heartbeat: 50 * time.Millisecond, ReportEvery: 20 * time.Millisecond,
		Watchdog: 100 * time.Millisecond, Notify: h.notes.add,
	}, cl, d, st, log)
	d.OnEvent = a.OnEvent
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{agent: a, store: st, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	h.t.Cleanup(r.stop)
	return r
}

// stop ends the agent and releases its state, like SIGTERM.
func (r *running) stop() {
	r.cancel()
	if r.done != nil {
		<-r.done
		r.done = nil
		r.store.Close()
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// artifact archives a small release tree naming release n, signs it and stores it.
func (h *host) artifact(n int) *captainv1.ArtifactRef {
	h.t.Helper()
	src := h.t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "VERSION"), []byte(fmt.Sprintf("release %d\n", n)), 0o644); err != nil {
		h.t.Fatal(err)
	}
	built, err := archive.WriteFile(context.Background(), src, h.t.TempDir())
	if err != nil {
		h.t.Fatal(err)
	}
	m := &manifest.Manifest{
		FormatVersion: manifest.FormatVersion, Pipeline: testPipeline, Commit: strings.Repeat("ab", 20),
		Created: time.Now().UTC().Truncate(time.Second), Builder: "agent/loop tests",
		Archive: manifest.Archive{SHA256: built.SHA256, Size: built.Size}, Files: built.Entries,
	}
	mb, err := m.Marshal()
	if err != nil {
		h.t.Fatal(err)
	}
	ref := store.Ref{Bucket: testBucket, Pipeline: testPipeline, SHA256: built.SHA256}
	ab, err := os.ReadFile(built.Path)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, b := range map[string][]byte{ref.ArchiveKey(): ab, ref.ManifestKey(): mb, ref.SignatureKey(): manifest.Sign(h.key, mb)} {
		p := filepath.Join(h.bucket.root, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			h.t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			h.t.Fatal(err)
		}
	}
	return &captainv1.ArtifactRef{Bucket: testBucket, Key: ref.ArchiveKey(), Sha256: built.SHA256, Size: built.Size, ManifestKey: ref.ManifestKey(), SignatureKey: ref.SignatureKey()}
}

// desired is release n of the test pipeline with an activate hook that appends
// "<release> <deployment>" to <app root>/activations; hook runs before that line.
func (h *host) desired(n int, id string, hook string) *captainv1.DesiredApp {
	cmd := `echo "$CAPTAIN_RELEASE $CAPTAIN_DEPLOYMENT_ID" >> "$CAPTAIN_APP_ROOT/activations"`
	if hook != "" {
		cmd = hook + "\n" + cmd
	}
	return &captainv1.DesiredApp{
		Pipeline: testPipeline, Environment: "use1-az1", Release: uint64(n), DeploymentId: id, Artifact: h.artifact(n),
		Deploy: &captainv1.DeploySettings{
			AppRoot:        h.appRoot,
			Hooks:          &captainv1.Hooks{Activate: &captainv1.Hook{Command: []string{"sh", "-c", cmd}, Timeout: durationpb.New(20 * time.Second)}},
			HealthDeadline: durationpb.New(10 * time.Second),
			KeepReleases:   5,
		},
	}
}

func (h *host) activations() []string {
	b, err := os.ReadFile(filepath.Join(h.appRoot, "activations"))
	if err != nil {
		return nil
	}
	return strings.Fields(strings.ReplaceAll(string(b), " ", "/"))
}

func (h *host) current() string {
	cur, _ := deploy.ReadCurrent(h.appRoot)
	return cur
}

// eventually waits until cond holds, failing with what() after the deadline.
func eventually(t *testing.T, d time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
