package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// rolloutWaves are DESIGN §10's 1,000 hosts in 5 waves, one-box first.
var rolloutWaves = []int{1, 10, 100, 300, 589}

// benchRollout creates one release for a pipeline of five single-environment stages with no
// approval steps and measures until every host reports it healthy. The simulated agents report
// healthy as soon as their desired state names the deployment, so what is left is Captain's
// own overhead: engine, Raft, watch streams, reports.
func benchRollout(t *testing.T, e *env) []result {
	scale := e.scale
	c := startCluster(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	waves := make([]int, len(rolloutWaves))
	total := 0
	for i, n := range rolloutWaves {
		waves[i] = scaled(n, scale, 1)
		total += waves[i]
	}
	waveOf := make([]int, 0, total)
	for w, n := range waves {
		for range n {
			waveOf = append(waveOf, w+1)
		}
	}

	if err := applyRolloutPipeline(ctx, c, t.TempDir(), len(waves)); err != nil {
		t.Fatal(err)
	}
	var (
		wg       sync.WaitGroup
		agentErr = make(chan error, 1)
	)
	agents, err := registerFleet(ctx, c, total, func(i int) map[string]string {
		return map[string]string{"wave": fmt.Sprintf("w%d", waveOf[i])}
	}, func(_ int, a *simAgent) {
		wg.Add(2)
		go func() { defer wg.Done(); heartbeatLoop(ctx, a) }()
		go func() {
			defer wg.Done()
			if err := a.deployInstantly(ctx); err != nil && ctx.Err() == nil {
				select {
				case agentErr <- err:
				default:
				}
			}
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); wg.Wait() }()
	t.Logf("%d agents registered in waves %v", len(agents), waves)

	before, err := c.commitIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader, err := c.leaderNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bytesBefore, err := metric(ctx, leader, "captain_raft_applied_bytes_total")
	if err != nil {
		t.Fatal(err)
	}
	rel := captainv1connect.NewReleaseServiceClient(c.http, c.Nodes[0].URL(), c.opts())
	sum := sha256.Sum256([]byte("captain bench artifact"))
	sha := hex.EncodeToString(sum[:])
	start := time.Now()
	created, err := rel.CreateRelease(ctx, connect.NewRequest(&captainv1.CreateReleaseRequest{
		Pipeline: "bench", HeadCommit: strings.Repeat("ab", 20), RequestId: "bench-rollout-1",
		Artifact: &captainv1.ArtifactRef{
			Bucket: "bench", Key: "artifacts/bench/" + sha + ".tar.zst", Sha256: sha, Size: 1,
			ManifestKey: "artifacts/bench/" + sha + ".manifest.json", SignatureKey: "artifacts/bench/" + sha + ".manifest.sig",
		},
	}))
	if err != nil {
		t.Fatalf("create release: %v", err)
	}
	number := created.Msg.GetRelease().GetNumber()
	deadline := scaledDur(2*time.Minute, scale, 30*time.Second)
	if err := waitAllHealthy(ctx, c, number, deadline, agentErr); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	after, err := c.commitIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bytesAfter, err := metric(ctx, leader, "captain_raft_applied_bytes_total")
	if err != nil {
		t.Fatal(err)
	}
	perHost := float64(after-before) / float64(total)
	sc := fmt.Sprintf("rollout, %d hosts in %d waves", total, len(waves))
	return []result{
		{Scenario: sc, Metric: "release created → all healthy (zero bake, zero agent work)", Value: float64(took.Milliseconds()), Unit: "ms",
			Target: "< 5 s (1,000 hosts)", Meets: boolp(took < 5*time.Second)},
		{Scenario: sc, Metric: "Raft entries per host", Value: perHost, Unit: "",
			Note: fmt.Sprintf("%d entries for %d hosts; host reports are batched (50 ms) into shared entries, the rest are the engine's", after-before, total)},
		{Scenario: sc, Metric: "Raft command bytes per host", Value: (bytesAfter - bytesBefore) / float64(total), Unit: "B"},
	}
}

func applyRolloutPipeline(ctx context.Context, c *benchCluster, dir string, waves int) error {
	var b strings.Builder
	// max_unavailable 100%: each environment in one batch, so the figure is Captain's overhead
	// per wave, not the default of one host at a time.
	b.WriteString("name: bench\ndeploy:\n  app_root: /srv/bench\n  artifact_store: {bucket: bench, region: us-east-1}\nstages:\n")
	for w := 1; w <= waves; w++ {
		fmt.Fprintf(&b, "  - name: wave%d\n    wave: %d\n    batch: {max_unavailable: \"100%%\"}\n    environments:\n      - name: wave%d\n        selector: {wave: w%d}\n", w, w, w, w)
	}
	path := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write pipeline: %w", err)
	}
	if out, err := c.Captain(ctx, "pipeline", "apply", "-f", path); err != nil {
		return fmt.Errorf("pipeline apply: %w\n%s", err, out)
	}
	return nil
}

// waitAllHealthy follows the pipeline's status with blocking queries until every stage runs
// release number on all its hosts, healthy.
func waitAllHealthy(ctx context.Context, c *benchCluster, number uint64, within time.Duration, agentErr <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	cl := captainv1connect.NewDeploymentServiceClient(c.http, c.Nodes[0].URL(), c.opts())
	var index uint64
	last := "no status yet"
	for {
		select {
		case err := <-agentErr:
			return fmt.Errorf("a simulated agent failed: %w", err)
		default:
		}
		res, err := cl.GetStatus(ctx, connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "bench",
			Read: &captainv1.ReadOptions{MinIndex: index, MaxWait: durationpb.New(time.Second)}}))
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("release %d not healthy everywhere within %s; last status: %s: %w", number, within, last, ctx.Err())
			}
			return fmt.Errorf("get status: %w", err)
		}
		index = res.Msg.GetIndex()
		missing := []string{}
		for _, s := range res.Msg.GetStages() {
			for _, e := range s.GetEnvironments() {
				if e.GetCurrentRelease() != number || e.GetHostsHealthy() != e.GetHostsTotal() || e.GetHostsTotal() == 0 {
					missing = append(missing, fmt.Sprintf("%s: %s release %d, %d/%d healthy", s.GetStage(), s.GetPhase(), e.GetCurrentRelease(), e.GetHostsHealthy(), e.GetHostsTotal()))
				}
			}
		}
		if len(missing) == 0 {
			return nil
		}
		last = strings.Join(missing, "; ")
	}
}

// heartbeatLoop heartbeats at the interval the coordinator names, as the agent does.
func heartbeatLoop(ctx context.Context, a *simAgent) {
	interval := 5 * time.Second
	for {
		res, err := a.client.Heartbeat(ctx, &captainv1.HeartbeatRequest{HostId: a.id})
		if err == nil && res.GetHeartbeatInterval().AsDuration() > 0 {
			interval = res.GetHeartbeatInterval().AsDuration()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// deployInstantly is the agent's watch loop with the deploy steps replaced by an immediate
// healthy report: every new deployment in the desired state is reported done at once.
func (a *simAgent) deployInstantly(ctx context.Context) error {
	done := map[string]string{} // pipeline -> deployment reported
	var seq uint64
	return a.client.Watch(ctx, a.id, 0, func(msg *captainv1.WatchResponse) error {
		for _, app := range msg.GetApps() {
			id := app.GetDeploymentId()
			if id == "" || done[app.GetPipeline()] == id {
				continue
			}
			seq++
			now := timestamppb.Now()
			target := fmt.Sprintf("releases/%d-%s", app.GetRelease(), id)
			_, err := a.client.Report(ctx, &captainv1.ReportRequest{HostId: a.id, Events: []*captainv1.HostEvent{{
				Seq: seq, Pipeline: app.GetPipeline(), DeploymentId: id, Release: app.GetRelease(),
				State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, Message: "simulated: deployed at once", At: now,
				App: &captainv1.HostApp{
					Pipeline: app.GetPipeline(), Environment: app.GetEnvironment(), CurrentRelease: app.GetRelease(),
					CurrentTarget: target, CurrentDeploymentId: id, Health: captainv1.HealthState_HEALTH_STATE_HEALTHY,
					LastResult: "healthy", ReportedAt: now,
				},
			}}})
			if err != nil {
				return fmt.Errorf("host %s: report deployment %s: %w", a.id, id, err)
			}
			done[app.GetPipeline()] = id
		}
		return nil
	})
}
