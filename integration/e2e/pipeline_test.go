package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/integration/harness"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// e2ePipeline deploys with the activate hook (no systemd) and counts a host healthy while its
// release directory holds a file named healthy, so an artifact without it fails on the host.
const e2ePipeline = `name: web
deploy:
  app_root: /srv/web
  keep_releases: 3
  min_healthy_time: 0s
  health_deadline: 3s
  artifact_store: {bucket: %s, region: us-east-1}
  hooks:
    activate:
      command: ["/bin/sh", "-c", "echo \"$CAPTAIN_RELEASE\" >> \"$CAPTAIN_APP_ROOT/activations\""]
      timeout: 10s
  health_checks:
    - name: healthy-file
      command: {command: ["/bin/sh", "-c", "test -f \"$CAPTAIN_RELEASE_DIR/healthy\""]}
      interval: 100ms
      timeout: 2s
stages:
  - name: one-box
    wave: 1
    environments: [{name: one-box, selector: {stage: one-box}}]
    approval: {bake: {duration: 0s}}
  - name: zone-1
    wave: 1
    batch: {max_unavailable: "1"}
    environments: [{name: zone-1, selector: {stage: zone-1}}]
  - name: zone-2
    wave: 1
    batch: {max_unavailable: "1"}
    environments: [{name: zone-2, selector: {stage: zone-2}}]
`

var e2eStages = []string{"one-box", "zone-1", "zone-2"}

// fleet is a coordinator cluster, an S3 gateway and agents on this machine, driven through
// the CLI as an operator and CI would, and read through the Connect API.
type fleet struct {
	t       *testing.T
	bins    harness.Bins
	cluster *harness.Cluster
	gw      *s3test.Gateway
	dir     string
	signKey string
	s3Env   []string
	hosts   captainv1connect.HostServiceClient
	deploys captainv1connect.DeploymentServiceClient
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	gw := s3test.Start(t)
	bins := harness.Binaries(t)
	// Short heartbeats so the agents' watch and reports move at test speed.
	c := harness.StartClusterArgs(t, bins, 3, "--heartbeat-interval", "200ms", "--heartbeat-ttl", "5s")
	f := &fleet{
		t: t, bins: bins, cluster: c, gw: gw, dir: t.TempDir(),
		s3Env: []string{"AWS_ACCESS_KEY_ID=" + gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + gw.SecretKey, "AWS_REGION=us-east-1"},
	}
	auth := connect.WithInterceptors(bearer(c.AdminToken))
	f.hosts = captainv1connect.NewHostServiceClient(http.DefaultClient, c.Nodes[0].URL(), auth)
	f.deploys = captainv1connect.NewDeploymentServiceClient(http.DefaultClient, c.Nodes[0].URL(), auth)
	f.signKey = filepath.Join(f.dir, "release.key")
	f.captain(nil, "keygen", "--out", f.signKey)
	return f
}

// bearer adds the admin token to every unary call.
func bearer(token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	}
}

// captain runs the CLI as admin and returns its stdout; stderr goes into the failure message.
func (f *fleet) captain(env []string, args ...string) string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bins.Captain, args...)
	cmd.Env = append(append(os.Environ(), "CAPTAIN_ADDR="+f.cluster.Nodes[0].APIAddr, "CAPTAIN_TOKEN="+f.cluster.AdminToken), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		f.t.Fatalf("captain %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// agentToken creates a token with role agent and writes it to a file agents can read.
func (f *fleet) agentToken() string {
	f.t.Helper()
	var tok struct {
		Secret string `json:"secret"`
	}
	out := f.captain(nil, "token", "create", "--role", "agent", "--name", "fleet", "-o", "json")
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Secret == "" {
		f.t.Fatalf("token create -o json gave no secret (%v): %s", err, out)
	}
	p := filepath.Join(f.dir, "join-token")
	if err := os.WriteFile(p, []byte(tok.Secret+"\n"), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// agent is one `captain-agent run` process with its own state dir and root_dir.
type agent struct {
	name     string
	stage    string
	stateDir string
	rootDir  string
	*harness.Process
}

func (f *fleet) startAgent(name, stage, tokenFile string) *agent {
	f.t.Helper()
	a := &agent{name: name, stage: stage, stateDir: filepath.Join(f.dir, name, "state"), rootDir: filepath.Join(f.dir, name, "root")}
	cfg := fmt.Sprintf(`coordinators: [%s]
join_token_file: %s
labels: {stage: %s}
state_dir: %s
root_dir: %s
trusted_keys: [%s]
s3: {endpoint: %q, region: us-east-1}
hostname: %s
log_level: debug
`, strings.Join(f.cluster.Addrs(), ", "), tokenFile, stage, a.stateDir, a.rootDir, f.signKey+".pub", f.gw.Endpoint, name)
	path := filepath.Join(f.dir, name, "agent.yaml")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		f.t.Fatal(err)
	}
	a.Process = harness.Start(f.t, "agent "+name, f.bins.Agent, f.s3Env, "run", "--config", path)
	return a
}

// release pushes an artifact built from files and creates the pipeline's next release. A file
// starting with #! is made executable.
func (f *fleet) release(pipeline string, n int, files map[string]string) {
	f.t.Helper()
	src := filepath.Join(f.dir, fmt.Sprintf("build-%s-%d", pipeline, n))
	if err := os.MkdirAll(src, 0o755); err != nil {
		f.t.Fatal(err)
	}
	for name, body := range files {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(body, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), mode); err != nil {
			f.t.Fatal(err)
		}
	}
	commit := strings.Repeat(fmt.Sprintf("%02x", n), 20)
	pushed := f.captain(f.s3Env, "artifact", "push", src, "--pipeline", pipeline, "--commit", commit, "--sign-key", f.signKey,
		"--bucket", f.gw.Bucket, "--s3-endpoint", f.gw.Endpoint, "-o", "json")
	pushFile := filepath.Join(f.dir, fmt.Sprintf("push-%s-%d.json", pipeline, n))
	if err := os.WriteFile(pushFile, []byte(pushed), 0o644); err != nil {
		f.t.Fatal(err)
	}
	f.captain(nil, "release", "create", "--pipeline", pipeline, "--artifact-file", pushFile, "--commit", commit)
}

func (f *fleet) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// currentReleases maps hostname to the release of pipeline `current` points at, as the hosts
// reported.
func (f *fleet) currentReleases(pipeline string) (map[string]uint64, error) {
	ctx, cancel := f.ctx()
	defer cancel()
	res, err := f.hosts.ListHosts(ctx, connect.NewRequest(&captainv1.ListHostsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	out := map[string]uint64{}
	for _, h := range res.Msg.GetHosts() {
		out[h.GetHostname()] = 0
		for _, app := range h.GetApps() {
			if app.GetPipeline() == pipeline {
				out[h.GetHostname()] = app.GetCurrentRelease()
			}
		}
	}
	return out, nil
}

func (f *fleet) status() (*captainv1.GetStatusResponse, error) {
	ctx, cancel := f.ctx()
	defer cancel()
	res, err := f.deploys.GetStatus(ctx, connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
	if err != nil {
		return nil, fmt.Errorf("get status: %w", err)
	}
	return res.Msg, nil
}

func (f *fleet) deployments(env string) ([]*captainv1.Deployment, error) {
	ctx, cancel := f.ctx()
	defer cancel()
	res, err := f.deploys.ListDeployments(ctx, connect.NewRequest(&captainv1.ListDeploymentsRequest{Pipeline: "web", Environment: env, Limit: 100}))
	if err != nil {
		return nil, fmt.Errorf("list deployments of %s: %w", env, err)
	}
	return res.Msg.GetDeployments(), nil
}

// describe is the picture printed when a wait times out.
func (f *fleet) describe() string {
	var b strings.Builder
	cur, err := f.currentReleases("web")
	fmt.Fprintf(&b, "current releases by host: %v (err %v)\n", cur, err)
	if st, err := f.status(); err != nil {
		fmt.Fprintf(&b, "status: %v\n", err)
	} else {
		for _, s := range st.GetStages() {
			fmt.Fprintf(&b, "stage %s: %s release %d inbox %d block %+v bad %v failure %q\n", s.GetStage(), s.GetPhase(), s.GetRelease(),
				s.GetInbox().GetRelease(), s.GetBlock(), s.GetBadReleases(), s.GetFailure())
		}
	}
	for _, env := range e2eStages {
		ds, err := f.deployments(env)
		fmt.Fprintf(&b, "deployments of %s (err %v):\n", env, err)
		for _, d := range ds {
			fmt.Fprintf(&b, "  %s %s release %d from %d %s trigger %s %q reason %q\n", d.GetId(), d.GetKind(), d.GetRelease(), d.GetFromRelease(),
				d.GetState(), d.GetTrigger().GetKind(), d.GetTrigger().GetReason(), d.GetReason())
		}
	}
	return b.String()
}

// waitFor polls cond (which says what it still misses) until it returns "" or d passes.
func (f *fleet) waitFor(d time.Duration, what string, cond func() string) {
	f.t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for {
		missing := cond()
		if missing == "" {
			f.t.Logf("%s after %s", what, time.Since(start).Round(10*time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("after %s, not yet %s: %s\n%s", d, what, missing, f.describe())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *fleet) everyHostOn(agents []*agent, release uint64) func() string {
	return func() string {
		cur, err := f.currentReleases("web")
		if err != nil {
			return err.Error()
		}
		var off []string
		for _, a := range agents {
			if cur[a.name] != release {
				off = append(off, fmt.Sprintf("%s on %d", a.name, cur[a.name]))
			}
		}
		return strings.Join(off, ", ")
	}
}

// localCurrent is the release `captain-agent status` reads from an agent's own state dir.
func (f *fleet) localCurrent(a *agent) (uint64, string, error) {
	out, err := exec.Command(f.bins.Agent, "status", "--state-dir", a.stateDir, "-o", "json").Output()
	if err != nil {
		return 0, "", fmt.Errorf("captain-agent status of %s: %w", a.name, err)
	}
	var st struct {
		Apps []struct {
			Pipeline string `json:"pipeline"`
			AppRoot  string `json:"app_root"`
			Current  *struct {
				Release uint64 `json:"release"`
			} `json:"current"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, "", fmt.Errorf("captain-agent status of %s is not JSON: %w\n%s", a.name, err, out)
	}
	for _, app := range st.Apps {
		if app.Pipeline == "web" && app.Current != nil {
			return app.Current.Release, app.AppRoot, nil
		}
	}
	return 0, "", fmt.Errorf("captain-agent status of %s shows no current release of web: %s", a.name, out)
}

func TestReleasesRollOutStageByStageAndAFailingReleaseIsRolledBackOnTheOneBox(t *testing.T) {
	started := time.Now()
	f := newFleet(t)
	pipelineFile := filepath.Join(f.dir, "pipeline.yaml")
	if err := os.WriteFile(pipelineFile, []byte(fmt.Sprintf(e2ePipeline, f.gw.Bucket)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.captain(nil, "pipeline", "apply", "-f", pipelineFile)
	token := f.agentToken()
	var agents []*agent
	byStage := map[string][]*agent{}
	for _, stage := range e2eStages {
		for i := 1; i <= 2; i++ {
			a := f.startAgent(fmt.Sprintf("%s-%d", stage, i), stage, token)
			agents = append(agents, a)
			byStage[stage] = append(byStage[stage], a)
		}
	}
	f.waitFor(20*time.Second, "every agent registered", func() string {
		cur, err := f.currentReleases("web")
		if err != nil {
			return err.Error()
		}
		if len(cur) != len(agents) {
			return fmt.Sprintf("%d of %d hosts registered: %v", len(cur), len(agents), cur)
		}
		return ""
	})
	t.Logf("cluster, gateway and %d agents up after %s", len(agents), time.Since(started).Round(10*time.Millisecond))

	for n := uint64(1); n <= 2; n++ {
		f.release("web", int(n), map[string]string{"VERSION": fmt.Sprintf("%d\n", n), "healthy": ""})
		f.waitFor(30*time.Second, fmt.Sprintf("release %d on every host", n), f.everyHostOn(agents, n))
	}

	f.release("web", 3, map[string]string{"VERSION": "3\n"})
	f.waitFor(30*time.Second, "release 3 rolled back on the one-box and the stage blocked", func() string {
		st, err := f.status()
		if err != nil {
			return err.Error()
		}
		oneBox := st.GetStages()[0]
		switch {
		case oneBox.GetStage() != "one-box":
			return fmt.Sprintf("first stage is %q", oneBox.GetStage())
		case !oneBox.GetBlock().GetIn() || !oneBox.GetBlock().GetOut():
			return fmt.Sprintf("one-box block %+v, want in and out", oneBox.GetBlock())
		case !slices.Contains(oneBox.GetBadReleases(), 3):
			return fmt.Sprintf("one-box bad releases %v, want 3", oneBox.GetBadReleases())
		case oneBox.GetPhase() == captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
			return "one-box still rolling back"
		}
		return f.everyHostOn(byStage["one-box"], 2)()
	})

	st, err := f.status()
	if err != nil {
		t.Fatal(err)
	}
	block := st.GetStages()[0].GetBlock()
	if block.GetReason() == "" || block.GetActor() == "" {
		t.Errorf("one-box block %+v: want the reason and who set it", block)
	}
	t.Logf("one-box blocked by %s: %s", block.GetActor(), block.GetReason())

	ds, err := f.deployments("one-box")
	if err != nil {
		t.Fatal(err)
	}
	var failed3, rollback *captainv1.Deployment
	for _, d := range ds {
		switch {
		case d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY && d.GetRelease() == 3:
			failed3 = d
		case d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK:
			rollback = d
		}
	}
	if failed3 == nil || failed3.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED {
		t.Errorf("one-box deployment of release 3 = %v, want it failed\n%s", failed3, f.describe())
	}
	if rollback == nil || rollback.GetRelease() != 2 || rollback.GetFromRelease() != 3 ||
		rollback.GetTrigger().GetKind() != captainv1.TriggerKind_TRIGGER_KIND_AUTOMATIC ||
		rollback.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED {
		t.Errorf("one-box rollback = %v, want an automatic, succeeded rollback from 3 to 2\n%s", rollback, f.describe())
	}
	for _, env := range e2eStages[1:] {
		ds, err := f.deployments(env)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.GetRelease() == 3 {
				t.Errorf("release 3 reached %s (deployment %s %s) although the one-box failed it", env, d.GetId(), d.GetState())
			}
		}
	}
	if missing := f.everyHostOn(append(slices.Clone(byStage["zone-1"]), byStage["zone-2"]...), 2)(); missing != "" {
		t.Errorf("zone hosts moved off release 2: %s", missing)
	}
	// The hosts' own state agrees with what they reported, and files landed under root_dir.
	// The one-box deploys in batches, so the batch after the failing one never got release 3.
	triedThree := 0
	for _, a := range byStage["one-box"] {
		rel, appRoot, err := f.localCurrent(a)
		if err != nil {
			t.Error(err)
			continue
		}
		if rel != 2 || appRoot != filepath.Join(a.rootDir, "srv", "web") {
			t.Errorf("%s local state: current %d in %s, want 2 in %s", a.name, rel, appRoot, filepath.Join(a.rootDir, "srv", "web"))
		}
		b, err := os.ReadFile(filepath.Join(appRoot, "activations"))
		switch got := strings.Fields(string(b)); {
		case err != nil:
			t.Errorf("%s activations: %v", a.name, err)
		case slices.Equal(got, []string{"1", "2", "3", "2"}):
			triedThree++
		case !slices.Equal(got, []string{"1", "2"}):
			t.Errorf("%s activations %q, want 1 2 3 2 (release 3 activated, then 2 again) or 1 2 (batch never started)", a.name, b)
		}
	}
	if triedThree == 0 {
		t.Errorf("no one-box host activated release 3 and then 2 again")
	}
	t.Logf("%d of %d one-box hosts activated release 3 before the rollback", triedThree, len(byStage["one-box"]))
	t.Logf("end to end in %s", time.Since(started).Round(10*time.Millisecond))
}
