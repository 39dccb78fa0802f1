package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
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
	"github.com/captain-cd/captain/integration/netns"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

const (
	pipelineName = "web"
	envName      = "prod"
	// Short heartbeats keep the agents' watch and reports, and the coordinators' view of
	// them, at test speed; election-wait bounds how long a write to a node without a leader
	// waits before it fails with Unavailable.
	heartbeatInterval = "200ms"
	heartbeatTTL      = "5s"
	electionWait      = "2s"
)

// gateScript is a hook that marks that it started (at-STEP-RELEASE in the app root), then waits
// until the test opens its gate (gate-STEP-RELEASE) or every gate (gates-open), so a test can
// hold a host at a known point of a deployment and see that it got there. It gives up after a
// minute on its own, so a hook orphaned by a killed agent never outlives a failed test for long.
func gateScript(step, extra string) string {
	return fmt.Sprintf(`touch "$CAPTAIN_APP_ROOT/at-%[1]s-$CAPTAIN_RELEASE"
          i=0
          while [ ! -e "$CAPTAIN_APP_ROOT/gate-%[1]s-$CAPTAIN_RELEASE" ] && [ ! -e "$CAPTAIN_APP_ROOT/gates-open" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
          %[2]s`, step, extra)
}

// pipelineSpec is one stage of hosts labelled stage=prod. Both hooks are gates; activate
// also appends "DEPLOYMENT RELEASE" to the app root's activations file, the host's own record
// of what it activated. A host counts healthy while its release directory holds a file named
// healthy.
func pipelineSpec(bucket, maxUnavailable, bake, progressDeadline string) string {
	return fmt.Sprintf(`name: %s
deploy:
  app_root: /srv/web
  keep_releases: 5
  min_healthy_time: 0s
  health_deadline: 5s
  artifact_store: {bucket: %s, region: us-east-1}
  hooks:
    before_activate:
      timeout: 90s
      command:
        - /bin/sh
        - -c
        - |
          %s
    activate:
      timeout: 90s
      command:
        - /bin/sh
        - -c
        - |
          %s
  health_checks:
    - name: healthy-file
      command: {command: ["/bin/sh", "-c", "test -f \"$CAPTAIN_RELEASE_DIR/healthy\""]}
      interval: 100ms
      timeout: 2s
stages:
  - name: %s
    wave: 1
    batch: {max_unavailable: %q}
    progress_deadline: %s
    environments: [{name: %s, selector: {stage: %s}}]
    approval: {bake: {duration: %s}}
`, pipelineName, bucket, gateScript("before_activate", ""),
		gateScript("activate", `echo "$CAPTAIN_DEPLOYMENT_ID $CAPTAIN_RELEASE" >> "$CAPTAIN_APP_ROOT/activations"`),
		envName, maxUnavailable, progressDeadline, envName, envName, bake)
}

// fleet is a coordinator cluster, an S3 gateway and agents on this machine, driven through the
// CLI as an operator and CI would, and read through the Connect API of whichever coordinator
// still runs.
type fleet struct {
	t       *testing.T
	bins    harness.Bins
	cluster *harness.Cluster
	// net is nil when the coordinators run on loopback; noNet says why.
	net     *netns.Net
	noNet   error
	gw      *s3test.Gateway
	dir     string
	signKey string
	s3Env   []string
	token   string
	agents  []*agent
}

// newFleet starts the gateway and a three-node cluster (each node in its own namespace when
// possible) with the pipeline applied.
func newFleet(t *testing.T, maxUnavailable, bake, progressDeadline string) *fleet {
	t.Helper()
	gw := s3test.Start(t)
	bins := harness.Binaries(t)
	c, nw, noNet := harness.StartClusterAuto(t, bins, 3,
		"--heartbeat-interval", heartbeatInterval, "--heartbeat-ttl", heartbeatTTL, "--election-wait", electionWait)
	f := &fleet{
		t: t, bins: bins, cluster: c, net: nw, noNet: noNet, gw: gw, dir: t.TempDir(),
		s3Env: []string{"AWS_ACCESS_KEY_ID=" + gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + gw.SecretKey, "AWS_REGION=us-east-1"},
	}
	if noNet != nil {
		t.Logf("coordinators on loopback: %v", noNet)
	}
	f.signKey = filepath.Join(f.dir, "release.key")
	f.captain(nil, "keygen", "--out", f.signKey)
	spec := filepath.Join(f.dir, "pipeline.yaml")
	if err := os.WriteFile(spec, []byte(pipelineSpec(gw.Bucket, maxUnavailable, bake, progressDeadline)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.captain(nil, "pipeline", "apply", "-f", spec)
	f.token = f.agentToken()
	return f
}

// live lists the coordinators whose process runs.
func (f *fleet) live() []*harness.Node {
	var out []*harness.Node
	for _, n := range f.cluster.Nodes {
		if ok, _ := n.Exited(); !ok {
			out = append(out, n)
		}
	}
	return out
}

// captain runs the CLI as admin against a running coordinator and returns its stdout.
func (f *fleet) captain(env []string, args ...string) string {
	f.t.Helper()
	live := f.live()
	if len(live) == 0 {
		f.t.Fatal("no coordinator runs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bins.Captain, args...)
	cmd.Env = append(append(os.Environ(), "CAPTAIN_ADDR="+live[0].APIAddr, "CAPTAIN_TOKEN="+f.cluster.AdminToken), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		f.t.Fatalf("captain %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

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

// agent is one `captain-agent run` process with its own state dir and root_dir; it can be
// killed and started again from the same config.
type agent struct {
	name     string
	stateDir string
	rootDir  string
	config   string
	f        *fleet
	*harness.Process
}

// appRoot is where the pipeline's app_root /srv/web lands on this host.
func (a *agent) appRoot() string { return filepath.Join(a.rootDir, "srv", "web") }

func (f *fleet) startAgents(names ...string) []*agent {
	f.t.Helper()
	var out []*agent
	for _, name := range names {
		a := &agent{name: name, f: f, stateDir: filepath.Join(f.dir, name, "state"), rootDir: filepath.Join(f.dir, name, "root"), config: filepath.Join(f.dir, name, "agent.yaml")}
		cfg := fmt.Sprintf(`coordinators: [%s]
join_token_file: %s
labels: {stage: %s}
state_dir: %s
root_dir: %s
trusted_keys: [%s]
s3: {endpoint: %q, region: us-east-1}
hostname: %s
log_level: debug
`, strings.Join(f.cluster.Addrs(), ", "), f.token, envName, a.stateDir, a.rootDir, f.signKey+".pub", f.gw.Endpoint, name)
		if err := os.MkdirAll(a.appRoot(), 0o755); err != nil {
			f.t.Fatal(err)
		}
		if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
			f.t.Fatal(err)
		}
		// Release every gate when the test ends so no hook left behind by a killed agent
		// keeps waiting. Registered before the process, so it runs after the agent is killed.
		f.t.Cleanup(func() { _ = os.WriteFile(filepath.Join(a.appRoot(), "gates-open"), nil, 0o644) })
		a.start()
		out = append(out, a)
	}
	f.agents = append(f.agents, out...)
	f.waitFor(20*time.Second, "every agent registered and up", func() string {
		hosts, err := f.hostsByName()
		if err != nil {
			return err.Error()
		}
		var missing []string
		for _, a := range out {
			if h := hosts[a.name]; h == nil || h.GetLiveness() != captainv1.Liveness_LIVENESS_UP {
				missing = append(missing, a.name)
			}
		}
		return strings.Join(missing, ", ")
	})
	return out
}

func (a *agent) start() {
	a.Process = harness.Start(a.f.t, "agent "+a.name, a.f.bins.Agent, a.f.s3Env, "run", "--config", a.config)
}

// openGate lets the host's hook of step pass for release.
func (a *agent) openGate(step string, release uint64) {
	a.f.t.Helper()
	if err := os.WriteFile(filepath.Join(a.appRoot(), fmt.Sprintf("gate-%s-%d", step, release)), nil, 0o644); err != nil {
		a.f.t.Fatal(err)
	}
}

func (a *agent) openGates(release uint64) {
	a.openGate("before_activate", release)
	a.openGate("activate", release)
}

// reachedHook reports whether the host's hook of step started for release.
func (a *agent) reachedHook(step string, release uint64) bool {
	_, err := os.Stat(filepath.Join(a.appRoot(), fmt.Sprintf("at-%s-%d", step, release)))
	return err == nil
}

// activations are the "DEPLOYMENT RELEASE" lines the activate hook wrote on the host.
func (a *agent) activations() []string {
	b, err := os.ReadFile(filepath.Join(a.appRoot(), "activations"))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// current is the target of the app root's current symlink, relative to the app root.
func (a *agent) current() (string, error) {
	return os.Readlink(filepath.Join(a.appRoot(), "current"))
}

// releaseDirs lists the directory names under releases/.
func (a *agent) releaseDirs() []string {
	entries, _ := os.ReadDir(filepath.Join(a.appRoot(), "releases"))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// checkCurrentIs says what is wrong with the host's current release: it must point at
// releases/<release>-<deployment> (any deployment when deployment is empty), a directory
// holding exactly files, byte for byte.
func (a *agent) checkCurrentIs(release uint64, deployment string, files map[string]string) error {
	target, err := a.current()
	if err != nil {
		return fmt.Errorf("%s: read current: %w", a.name, err)
	}
	dir := filepath.Base(target)
	switch {
	case filepath.Dir(target) != "releases":
		return fmt.Errorf("%s: current -> %s, not a directory under releases/", a.name, target)
	case strings.HasSuffix(dir, ".partial"):
		return fmt.Errorf("%s: current -> %s, a partial extraction", a.name, target)
	case deployment != "" && dir != fmt.Sprintf("%d-%s", release, deployment):
		return fmt.Errorf("%s: current -> %s, want releases/%d-%s", a.name, target, release, deployment)
	case deployment == "" && !strings.HasPrefix(dir, fmt.Sprintf("%d-", release)):
		return fmt.Errorf("%s: current -> %s, want a directory of release %d", a.name, target, release)
	}
	return sameTree(filepath.Join(a.appRoot(), target), files)
}

// sameTree compares the regular files under dir with want (path -> content).
func sameTree(dir string, want map[string]string) error {
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		got[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk %s: %w", dir, err)
	}
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, "missing "+p)
		case g != w:
			diffs = append(diffs, "different "+p)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "extra "+p)
		}
	}
	if len(diffs) > 0 {
		slices.Sort(diffs)
		return fmt.Errorf("%s differs from the artifact (%d of %d files): %s", dir, len(diffs), len(want), strings.Join(diffs[:min(len(diffs), 5)], ", "))
	}
	return nil
}

// release pushes an artifact built from files (path -> content) and creates release n.
func (f *fleet) release(n uint64, files map[string]string) {
	f.t.Helper()
	f.push(n, files)
	f.createRelease(n)
}

func (f *fleet) pushFile(n uint64) string {
	return filepath.Join(f.dir, fmt.Sprintf("push-%d.json", n))
}

func (f *fleet) commit(n uint64) string { return strings.Repeat(fmt.Sprintf("%02x", n), 20) }

// push uploads release n's artifact to the gateway.
func (f *fleet) push(n uint64, files map[string]string) {
	f.t.Helper()
	src := filepath.Join(f.dir, fmt.Sprintf("build-%d", n))
	for name, body := range files {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			f.t.Fatal(err)
		}
	}
	pushed := f.captain(f.s3Env, "artifact", "push", src, "--pipeline", pipelineName, "--commit", f.commit(n), "--sign-key", f.signKey,
		"--bucket", f.gw.Bucket, "--s3-endpoint", f.gw.Endpoint, "-o", "json")
	if err := os.WriteFile(f.pushFile(n), []byte(pushed), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// createRelease creates release n from its pushed artifact; the coordinator needs no S3 for it.
func (f *fleet) createRelease(n uint64) {
	f.t.Helper()
	f.captain(nil, "release", "create", "--pipeline", pipelineName, "--artifact-file", f.pushFile(n), "--commit", f.commit(n))
}

// appFiles is a small artifact of release n that passes the health check.
func appFiles(n uint64) map[string]string {
	return map[string]string{"VERSION": fmt.Sprintf("%d\n", n), "healthy": "", "bin/app": fmt.Sprintf("app of release %d\n", n)}
}

// read calls fn against each running coordinator in turn until one answers.
func read[T any](f *fleet, fn func(ctx context.Context, base string) (T, error)) (T, error) {
	var errs []error
	for _, n := range f.live() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		v, err := fn(ctx, n.URL())
		cancel()
		if err == nil {
			return v, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", n.ID, err))
	}
	var zero T
	return zero, fmt.Errorf("no coordinator answered: %w", errors.Join(errs...))
}

func (f *fleet) hostsByName() (map[string]*captainv1.Host, error) {
	return f.listHosts(false)
}

// hostsFromLeader is hostsByName read consistently, which the leader answers: only it knows
// the hosts' last heartbeats.
func (f *fleet) hostsFromLeader() (map[string]*captainv1.Host, error) {
	return f.listHosts(true)
}

func (f *fleet) listHosts(consistent bool) (map[string]*captainv1.Host, error) {
	return read(f, func(ctx context.Context, base string) (map[string]*captainv1.Host, error) {
		req := &captainv1.ListHostsRequest{Read: &captainv1.ReadOptions{Consistent: consistent}}
		res, err := captainv1connect.NewHostServiceClient(http.DefaultClient, base, f.cluster.Auth()).ListHosts(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		out := map[string]*captainv1.Host{}
		for _, h := range res.Msg.GetHosts() {
			out[h.GetHostname()] = h
		}
		return out, nil
	})
}

func (f *fleet) stage() (*captainv1.StageState, error) {
	return read(f, func(ctx context.Context, base string) (*captainv1.StageState, error) {
		res, err := captainv1connect.NewDeploymentServiceClient(http.DefaultClient, base, f.cluster.Auth()).GetStatus(ctx, connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: pipelineName}))
		if err != nil {
			return nil, err
		}
		for _, s := range res.Msg.GetStages() {
			if s.GetStage() == envName {
				return s, nil
			}
		}
		return nil, fmt.Errorf("no stage %s in the status", envName)
	})
}

func (f *fleet) deployments() ([]*captainv1.Deployment, error) {
	return read(f, func(ctx context.Context, base string) ([]*captainv1.Deployment, error) {
		res, err := captainv1connect.NewDeploymentServiceClient(http.DefaultClient, base, f.cluster.Auth()).ListDeployments(ctx,
			connect.NewRequest(&captainv1.ListDeploymentsRequest{Pipeline: pipelineName, Environment: envName, Limit: 100}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetDeployments(), nil
	})
}

// deploymentsOf lists the environment's deployments of a kind and release.
func (f *fleet) deploymentsOf(kind captainv1.DeploymentKind, release uint64) ([]*captainv1.Deployment, error) {
	ds, err := f.deployments()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(ds, func(d *captainv1.Deployment) bool { return d.GetKind() != kind || d.GetRelease() != release }), nil
}

// onlyDeployment waits for the one deployment of kind and release and returns it.
func (f *fleet) onlyDeployment(kind captainv1.DeploymentKind, release uint64, within time.Duration) *captainv1.Deployment {
	f.t.Helper()
	var d *captainv1.Deployment
	f.waitFor(within, fmt.Sprintf("a %s deployment of release %d", kind, release), func() string {
		ds, err := f.deploymentsOf(kind, release)
		switch {
		case err != nil:
			return err.Error()
		case len(ds) == 0:
			return "none yet"
		case len(ds) > 1:
			f.t.Fatalf("%d %s deployments of release %d, want one:\n%s", len(ds), kind, release, f.describe())
		}
		d = ds[0]
		return ""
	})
	return d
}

// waitDeployment waits until the deployment reaches want and returns its last read.
func (f *fleet) waitDeployment(id string, want captainv1.DeploymentState, within time.Duration) *captainv1.Deployment {
	f.t.Helper()
	var d *captainv1.Deployment
	f.waitFor(within, fmt.Sprintf("deployment %s %s", id, want), func() string {
		ds, err := f.deployments()
		if err != nil {
			return err.Error()
		}
		i := slices.IndexFunc(ds, func(d *captainv1.Deployment) bool { return d.GetId() == id })
		if i < 0 {
			return "not listed"
		}
		d = ds[i]
		if d.GetState() != want {
			return d.GetState().String()
		}
		return ""
	})
	return d
}

// everyHostOn waits until every agent reports release as current.
func (f *fleet) everyHostOn(release uint64, within time.Duration) {
	f.t.Helper()
	f.waitFor(within, fmt.Sprintf("release %d on every host", release), func() string {
		hosts, err := f.hostsByName()
		if err != nil {
			return err.Error()
		}
		var off []string
		for _, a := range f.agents {
			var cur uint64
			for _, app := range hosts[a.name].GetApps() {
				if app.GetPipeline() == pipelineName {
					cur = app.GetCurrentRelease()
				}
			}
			if cur != release {
				off = append(off, fmt.Sprintf("%s on %d", a.name, cur))
			}
		}
		return strings.Join(off, ", ")
	})
}

// deployFirst brings release 1 onto every agent with its gates open.
func (f *fleet) deployFirst() {
	f.t.Helper()
	for _, a := range f.agents {
		a.openGates(1)
	}
	f.release(1, appFiles(1))
	f.everyHostOn(1, 30*time.Second)
	d := f.onlyDeployment(captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, 1, 5*time.Second)
	f.waitDeployment(d.GetId(), captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED, 20*time.Second)
}

// hostNames maps host IDs to hostnames.
func (f *fleet) hostNames() map[string]string {
	f.t.Helper()
	hosts, err := f.hostsByName()
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]string{}
	for name, h := range hosts {
		out[h.GetId()] = name
	}
	return out
}

// describe is the picture printed when a wait times out.
func (f *fleet) describe() string {
	var b strings.Builder
	var live []string
	for _, n := range f.live() {
		live = append(live, n.ID)
	}
	fmt.Fprintf(&b, "running coordinators: %v\n", live)
	if st, err := f.stage(); err != nil {
		fmt.Fprintf(&b, "stage: %v\n", err)
	} else {
		fmt.Fprintf(&b, "stage %s: %s release %d inbox %d block %+v bad %v failure %q bake ends %v\n", st.GetStage(), st.GetPhase(), st.GetRelease(),
			st.GetInbox().GetRelease(), st.GetBlock(), st.GetBadReleases(), st.GetFailure(), st.GetBakeEndsAt().AsTime())
	}
	ds, err := f.deployments()
	fmt.Fprintf(&b, "deployments (err %v):\n", err)
	for _, d := range ds {
		fmt.Fprintf(&b, "  %s %s release %d from %d %s reason %q\n", d.GetId(), d.GetKind(), d.GetRelease(), d.GetFromRelease(), d.GetState(), d.GetReason())
		for _, h := range d.GetHosts() {
			fmt.Fprintf(&b, "    host %s batch %d %s %q\n", h.GetHostId(), h.GetBatch(), h.GetState(), h.GetMessage())
		}
	}
	for _, a := range f.agents {
		cur, err := a.current()
		fmt.Fprintf(&b, "agent %s: current -> %s (err %v), releases %v, activations %q\n", a.name, cur, err, a.releaseDirs(), a.activations())
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
		time.Sleep(25 * time.Millisecond)
	}
}
