package ui

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/agent/agentclient"
	"github.com/captain-cd/captain/integration/harness"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// world is a three-node captaind cluster with a pipeline and simulated hosts, driven through
// the API as CI and operators would.
type world struct {
	t        *testing.T
	cluster  *harness.Cluster
	http     *http.Client
	admin    *apiClients
	ctx      context.Context
	mu       sync.Mutex
	hosts    map[string]*simHost
	commitNo int
	// runHosts starts a host's heartbeat and watch loops; they end with the test.
	runHosts func(*simHost)
}

type apiClients struct {
	pipeline captainv1connect.PipelineServiceClient
	release  captainv1connect.ReleaseServiceClient
	deploy   captainv1connect.DeploymentServiceClient
	operator captainv1connect.OperatorServiceClient
	token    captainv1connect.TokenServiceClient
	alarm    captainv1connect.AlarmServiceClient
}

func newWorld(t *testing.T) *world {
	t.Helper()
	bins := harness.Binaries(t)
	c := harness.StartClusterArgs(t, bins, 3, "--heartbeat-interval", "200ms", "--heartbeat-ttl", "5s", "--log-level", "info")
	hc, err := (&clientcfg.Config{Addr: c.Nodes[0].URL()}).HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &world{t: t, cluster: c, http: hc, ctx: ctx, hosts: map[string]*simHost{}}
	w.admin = w.clients(c.AdminToken)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	w.runHosts = func(h *simHost) {
		wg.Add(2)
		go func() { defer wg.Done(); h.heartbeat(ctx) }()
		go func() { defer wg.Done(); h.watch(ctx) }()
	}
	return w
}

func (w *world) clients(token string) *apiClients {
	opt := connect.WithInterceptors(clientcfg.BearerInterceptor(token))
	base := w.cluster.Nodes[0].URL()
	return &apiClients{
		pipeline: captainv1connect.NewPipelineServiceClient(w.http, base, opt),
		release:  captainv1connect.NewReleaseServiceClient(w.http, base, opt),
		deploy:   captainv1connect.NewDeploymentServiceClient(w.http, base, opt),
		operator: captainv1connect.NewOperatorServiceClient(w.http, base, opt),
		token:    captainv1connect.NewTokenServiceClient(w.http, base, opt),
		alarm:    captainv1connect.NewAlarmServiceClient(w.http, base, opt),
	}
}

func (w *world) rpcCtx() context.Context {
	ctx, cancel := context.WithTimeout(w.ctx, 15*time.Second)
	w.t.Cleanup(cancel)
	return ctx
}

// applyPipeline writes the spec to a file and applies it with the CLI.
func (w *world) applyPipeline(yaml string) {
	w.t.Helper()
	path := filepath.Join(w.t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		w.t.Fatal(err)
	}
	if out, err := w.cluster.Captain(w.rpcCtx(), "pipeline", "apply", "-f", path); err != nil {
		w.t.Fatalf("pipeline apply: %v\n%s", err, out)
	}
}

// token creates a token with the role and returns its secret.
func (w *world) token(name string, role captainv1.Role) string {
	w.t.Helper()
	res, err := w.admin.token.CreateToken(w.rpcCtx(), connect.NewRequest(&captainv1.CreateTokenRequest{Name: name, Role: role}))
	if err != nil {
		w.t.Fatalf("create token %s: %v", name, err)
	}
	return res.Msg.GetSecret()
}

// release creates the pipeline's next release with one new commit and returns its number and
// the commit's SHA. The simulated hosts never fetch the artifact, so the reference only has
// to be well formed.
func (w *world) release(pipeline, message string) (uint64, string) {
	w.t.Helper()
	w.mu.Lock()
	w.commitNo++
	n := w.commitNo
	w.mu.Unlock()
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s artifact %d", pipeline, n)))
	digest := hex.EncodeToString(sum[:])
	commitSum := sha256.Sum256([]byte(fmt.Sprintf("commit %d %s", n, message)))
	commit := hex.EncodeToString(commitSum[:20])
	res, err := w.admin.release.CreateRelease(w.rpcCtx(), connect.NewRequest(&captainv1.CreateReleaseRequest{
		Pipeline: pipeline, HeadCommit: commit, RequestId: fmt.Sprintf("ui-test-%d", n),
		Commits: []*captainv1.Commit{{Sha: commit, Message: message, Author: "Dev Eloper <dev@example.com>"}},
		Artifact: &captainv1.ArtifactRef{
			Bucket: "captain-artifacts", Key: "artifacts/" + pipeline + "/" + digest + ".tar.zst", Sha256: digest, Size: 4 << 20,
			ManifestKey: "artifacts/" + pipeline + "/" + digest + ".manifest.json", SignatureKey: "artifacts/" + pipeline + "/" + digest + ".manifest.sig",
		},
	}))
	if err != nil {
		w.t.Fatalf("create release: %v", err)
	}
	return res.Msg.GetRelease().GetNumber(), commit
}

func (w *world) status(pipeline string) (*captainv1.GetStatusResponse, error) {
	res, err := w.admin.deploy.GetStatus(w.rpcCtx(), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: pipeline, Read: &captainv1.ReadOptions{Consistent: true}}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func (w *world) stage(pipeline, name string) *captainv1.StageState {
	st, err := w.status(pipeline)
	if err != nil {
		return nil
	}
	for _, s := range st.GetStages() {
		if s.GetStage() == name {
			return s
		}
	}
	return nil
}

// waitStage waits until the stage satisfies cond.
func (w *world) waitStage(pipeline, name, what string, cond func(*captainv1.StageState) bool) {
	w.t.Helper()
	var last *captainv1.StageState
	deadline := time.Now().Add(30 * time.Second)
	for {
		last = w.stage(pipeline, name)
		if last != nil && cond(last) {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("stage %s: %s: not within 30s; last state: phase %s release %d", name, what, last.GetPhase(), last.GetRelease())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *world) deployments(pipeline, env string) []*captainv1.Deployment {
	w.t.Helper()
	res, err := w.admin.deploy.ListDeployments(w.rpcCtx(), connect.NewRequest(&captainv1.ListDeploymentsRequest{Pipeline: pipeline, Environment: env, Read: &captainv1.ReadOptions{Consistent: true}}))
	if err != nil {
		w.t.Fatalf("list deployments: %v", err)
	}
	return res.Msg.GetDeployments()
}

// simHost is one host: the agent's real client registering, heartbeating and watching, with
// the deploy steps replaced by an immediate report. While held it reports nothing, so its
// deployment stays in progress.
type simHost struct {
	name   string
	id     string
	client *agentclient.Client
	mu     sync.Mutex
	hold   bool
	seq    uint64
	want   map[string]*captainv1.DesiredApp // pipeline -> desired
	done   map[string]string                // pipeline -> deployment reported
	kick   chan struct{}
	// failAbove makes releases above it fail their health check (0: none fail); the host
	// holds after reporting a failure, so the rollback that follows stays in progress.
	failAbove uint64
}

// FailAbove makes the host fail every release above r, and hold after each failure.
func (h *simHost) FailAbove(r uint64) {
	h.mu.Lock()
	h.failAbove = r
	h.mu.Unlock()
}

// addHost registers a simulated host with labels and starts it.
func (w *world) addHost(name string, hold bool, labels map[string]string) *simHost {
	w.t.Helper()
	cl, err := agentclient.New(w.cluster.Addrs(), agentclient.Credentials{JoinToken: w.cluster.AdminToken}, agentclient.Options{HTTPClient: w.http})
	if err != nil {
		w.t.Fatal(err)
	}
	res, err := cl.Register(w.rpcCtx(), &captainv1.RegisterRequest{Hostname: name, Labels: labels, AgentVersion: "ui-test", RequestId: "ui-test-" + name})
	if err != nil {
		w.t.Fatalf("register %s: %v", name, err)
	}
	cl.SetCredentials(agentclient.Credentials{HostID: res.GetHostId(), HostSecret: res.GetHostSecret()})
	h := &simHost{name: name, id: res.GetHostId(), client: cl, hold: hold, want: map[string]*captainv1.DesiredApp{}, done: map[string]string{}, kick: make(chan struct{}, 1)}
	w.mu.Lock()
	w.hosts[name] = h
	w.mu.Unlock()
	w.runHosts(h)
	return h
}

// Hold stops or resumes the host's reports.
func (h *simHost) Hold(hold bool) {
	h.mu.Lock()
	h.hold = hold
	h.mu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *simHost) heartbeat(ctx context.Context) {
	for {
		_, _ = h.client.Heartbeat(ctx, &captainv1.HeartbeatRequest{HostId: h.id})
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (h *simHost) watch(ctx context.Context) {
	watching := make(chan struct{})
	defer func() { <-watching }()
	go func() {
		defer close(watching)
		_ = h.client.Watch(ctx, h.id, 0, func(msg *captainv1.WatchResponse) error {
			h.mu.Lock()
			for _, app := range msg.GetApps() {
				h.want[app.GetPipeline()] = app
			}
			h.mu.Unlock()
			select {
			case h.kick <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.kick:
		case <-time.After(250 * time.Millisecond):
		}
		h.reportHealthy(ctx)
	}
}

// reportHealthy reports every desired deployment not yet reported as healthy, unless held.
func (h *simHost) reportHealthy(ctx context.Context) {
	h.mu.Lock()
	if h.hold {
		h.mu.Unlock()
		return
	}
	var events []*captainv1.HostEvent
	failed := false
	for p, app := range h.want {
		id := app.GetDeploymentId()
		if id == "" || h.done[p] == id {
			continue
		}
		h.seq++
		now := timestamppb.Now()
		target := fmt.Sprintf("releases/%d-%s", app.GetRelease(), id)
		ev := &captainv1.HostEvent{
			Seq: h.seq, Pipeline: p, DeploymentId: id, Release: app.GetRelease(), At: now,
			State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, Message: "healthy",
			Outputs: []*captainv1.StepOutput{{Name: "healthz", ExitCode: 0, Output: "GET /healthz: 200 ok", At: now, Passed: true}},
			App: &captainv1.HostApp{
				Pipeline: p, Environment: app.GetEnvironment(), CurrentRelease: app.GetRelease(), CurrentTarget: target,
				CurrentDeploymentId: id, Health: captainv1.HealthState_HEALTH_STATE_HEALTHY, LastResult: "healthy", ReportedAt: now,
			},
		}
		if h.failAbove > 0 && app.GetRelease() > h.failAbove {
			failed = true
			ev.State, ev.Message = captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, "health check healthz failed: GET /healthz: 503"
			ev.Outputs[0].ExitCode, ev.Outputs[0].Output, ev.Outputs[0].Passed = 1, "GET /healthz: 503 config.json missing", false
			ev.App.Health, ev.App.LastResult = captainv1.HealthState_HEALTH_STATE_UNHEALTHY, ev.Message
		}
		events = append(events, ev)
	}
	if failed {
		h.hold = true
	}
	h.mu.Unlock()
	if len(events) == 0 {
		return
	}
	if _, err := h.client.Report(ctx, &captainv1.ReportRequest{HostId: h.id, Events: events}); err != nil {
		return // the next tick reports again; the coordinator ignores sequence numbers it has seen
	}
	h.mu.Lock()
	for _, e := range events {
		h.done[e.GetPipeline()] = e.GetDeploymentId()
	}
	h.mu.Unlock()
}

func short(sha string) string { return strings.ToLower(sha[:7]) }
