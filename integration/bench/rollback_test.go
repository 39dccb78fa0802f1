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

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// rollbackPipeline is one stage of every host that watches an alarm while it bakes.
const rollbackPipeline = `name: bench
deploy:
  app_root: /srv/bench
  artifact_store: {bucket: bench, region: us-east-1}
alarms:
  - name: bench-errors
stages:
  - name: prod
    batch: {max_unavailable: "100%"}
    environments:
      - name: prod
        selector: {fleet: bench}
    approval:
      bake: {duration: 3s}
      alarms: {names: [bench-errors]}
`

// benchRollback puts 1,000 simulated hosts on release 2, deploys release 3, fires the stage's
// alarm while release 3 bakes and measures until every host reports release 2 healthy again.
// The simulated agents deploy at once, so the figure is Captain's part of a rollback: the
// engine noticing the alarm, the rollback deployment, watch streams and reports.
func benchRollback(t *testing.T, e *env) []result {
	total := scaled(1000, e.scale, 10)
	c := startCluster(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	path := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(path, []byte(rollbackPipeline), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Captain(ctx, "pipeline", "apply", "-f", path); err != nil {
		t.Fatalf("pipeline apply: %v\n%s", err, out)
	}
	alarms := captainv1connect.NewAlarmServiceClient(c.http, c.Nodes[0].URL(), c.opts())
	setAlarm := func(state captainv1.AlarmState) error {
		_, err := alarms.SetAlarmState(ctx, connect.NewRequest(&captainv1.SetAlarmStateRequest{Name: "bench-errors", State: state, Reason: "make bench"}))
		return err
	}
	// An alarm nobody reported on is insufficient_data, which holds approvals by default.
	if err := setAlarm(captainv1.AlarmState_ALARM_STATE_OK); err != nil {
		t.Fatalf("set alarm ok: %v", err)
	}

	var wg sync.WaitGroup
	agentErr := make(chan error, 1)
	if _, err := registerFleet(ctx, c, total, func(int) map[string]string { return map[string]string{"fleet": "bench"} }, func(_ int, a *simAgent) {
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
	}); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); wg.Wait() }()

	rel := captainv1connect.NewReleaseServiceClient(c.http, c.Nodes[0].URL(), c.opts())
	create := func(n int) uint64 {
		sum := sha256.Sum256(fmt.Appendf(nil, "captain bench rollback artifact %d", n))
		sha := hex.EncodeToString(sum[:])
		res, err := rel.CreateRelease(ctx, connect.NewRequest(&captainv1.CreateReleaseRequest{
			Pipeline: "bench", HeadCommit: strings.Repeat(fmt.Sprintf("%02x", n), 20), RequestId: fmt.Sprintf("bench-rollback-%d", n),
			Artifact: &captainv1.ArtifactRef{Bucket: "bench", Key: "artifacts/bench/" + sha + ".tar.zst", Sha256: sha, Size: 1},
		}))
		if err != nil {
			t.Fatalf("create release %d: %v", n, err)
		}
		return res.Msg.GetRelease().GetNumber()
	}
	within := scaledDur(2*time.Minute, e.scale, 30*time.Second)
	for n := 1; n <= 2; n++ {
		number := create(n)
		if err := waitStage(ctx, c, within, agentErr, fmt.Sprintf("release %d last good", number), func(s *captainv1.StageState, env *captainv1.EnvironmentState) bool {
			return env.GetLastGoodRelease() == number && env.GetHostsHealthy() == uint32(total)
		}); err != nil {
			t.Fatal(err)
		}
	}
	bad := create(3)
	if err := waitStage(ctx, c, within, agentErr, fmt.Sprintf("release %d baking on every host", bad), func(s *captainv1.StageState, env *captainv1.EnvironmentState) bool {
		return s.GetPhase() == captainv1.StagePhase_STAGE_PHASE_VERIFYING && env.GetCurrentRelease() == bad && env.GetHostsHealthy() == uint32(total)
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := setAlarm(captainv1.AlarmState_ALARM_STATE_ALARM); err != nil {
		t.Fatalf("fire alarm: %v", err)
	}
	if err := waitStage(ctx, c, within, agentErr, fmt.Sprintf("release %d healthy on every host again", bad-1), func(s *captainv1.StageState, env *captainv1.EnvironmentState) bool {
		return env.GetCurrentRelease() == bad-1 && env.GetHostsHealthy() == uint32(total)
	}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	sc := fmt.Sprintf("rollback, %d hosts", total)
	return []result{{Scenario: sc, Metric: "alarm → every host back on the last good release, healthy (zero agent work)", Value: float64(took.Milliseconds()), Unit: "ms",
		Target: "< 2 s plus restart time (1,000 hosts)", Meets: boolp(took < 2*time.Second),
		Note: "simulated agents switch releases at once, so restart time is zero here; on a host the agent flips the symlink to the release still on disk and restarts the service"}}
}

// waitStage follows the pipeline's only stage with blocking queries until cond holds for it
// and its only environment.
func waitStage(ctx context.Context, c *benchCluster, within time.Duration, agentErr <-chan error, what string, cond func(*captainv1.StageState, *captainv1.EnvironmentState) bool) error {
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
				return fmt.Errorf("waited %s for %s; last status: %s: %w", within, what, last, ctx.Err())
			}
			return fmt.Errorf("get status: %w", err)
		}
		index = res.Msg.GetIndex()
		if st := res.Msg.GetStages(); len(st) == 1 && len(st[0].GetEnvironments()) == 1 {
			s, env := st[0], st[0].GetEnvironments()[0]
			if cond(s, env) {
				return nil
			}
			last = fmt.Sprintf("%s, release %d, last good %d, %d/%d healthy", s.GetPhase(), env.GetCurrentRelease(), env.GetLastGoodRelease(), env.GetHostsHealthy(), env.GetHostsTotal())
		}
	}
}
