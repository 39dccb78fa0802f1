package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/integration/harness"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// reporter sends one host-status transition per Report, back to back: the agent's report path
// with the deploy steps turned into a stream of health flips.
type reporter struct {
	*simAgent
	seq uint64
}

func (r *reporter) report(ctx context.Context) error {
	r.seq++
	health := captainv1.HealthState_HEALTH_STATE_HEALTHY
	if r.seq%2 == 0 {
		health = captainv1.HealthState_HEALTH_STATE_UNHEALTHY
	}
	now := timestamppb.Now()
	_, err := r.client.Report(ctx, &captainv1.ReportRequest{HostId: r.id, Events: []*captainv1.HostEvent{{
		Seq: r.seq, Pipeline: "bench", State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, At: now,
		Message: "simulated health change", App: &captainv1.HostApp{Pipeline: "bench", Health: health, ReportedAt: now},
	}}})
	if err != nil {
		return fmt.Errorf("host %s: report: %w", r.id, err)
	}
	return nil
}

func registerReporters(t *testing.T, ctx context.Context, c *benchCluster, n int) []*reporter {
	t.Helper()
	agents, err := registerFleet(ctx, c, n, func(i int) map[string]string {
		return map[string]string{"az": fmt.Sprintf("az%d", i%3)}
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]*reporter, n)
	for i, a := range agents {
		out[i] = &reporter{simAgent: a}
	}
	return out
}

// benchWrites has many agents report status transitions concurrently through all three nodes
// for a fixed window and counts what the cluster committed.
func benchWrites(t *testing.T, e *env) []result {
	scale := e.scale
	c := startCluster(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := scaled(1000, scale, 100)
	reporters := registerReporters(t, ctx, c, n)
	window := scaledDur(15*time.Second, scale, 5*time.Second)

	var (
		recording atomic.Bool
		committed atomic.Int64
		failed    atomic.Int64
		wg        sync.WaitGroup
	)
	for _, r := range reporters {
		wg.Go(func() {
			for ctx.Err() == nil {
				rec := recording.Load()
				err := r.report(ctx)
				switch {
				case ctx.Err() != nil:
					return
				case !rec:
				case err != nil:
					failed.Add(1)
				default:
					committed.Add(1)
				}
			}
		})
	}
	// Let every reporter get going before the window opens.
	time.Sleep(scaledDur(3*time.Second, scale, time.Second))
	before, err := c.commitIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recording.Store(true)
	time.Sleep(window) // the measurement window
	recording.Store(false)
	after, err := c.commitIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()
	rate := float64(committed.Load()) / window.Seconds()
	entries := float64(after - before)
	note := fmt.Sprintf("%d agents, one event per report, closed loop; %d Raft entries in %s", n, after-before, window)
	if f := failed.Load(); f > 0 {
		note += fmt.Sprintf("; %d reports failed", f)
	}
	perEntry := 0.0
	if entries > 0 {
		perEntry = float64(committed.Load()) / entries
	}
	return []result{
		{Scenario: "write throughput", Metric: "host-status transitions committed", Value: rate, Unit: "/s",
			Target: "≥ 2,000/s (batched)", Meets: boolp(rate >= 2000), Note: note},
		{Scenario: "write throughput", Metric: "transitions per Raft entry", Value: perEntry, Unit: ""},
	}
}

// benchFailover keeps a steady write load on the cluster, SIGKILLs the leader and measures how
// long until a write sent after the kill is accepted.
func benchFailover(t *testing.T, e *env) []result {
	scale := e.scale
	c := startCluster(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reporters := registerReporters(t, ctx, c, 50)

	var (
		mu       sync.Mutex
		killedAt time.Time
		firstOK  time.Time
		wg       sync.WaitGroup
	)
	for _, r := range reporters {
		wg.Go(func() {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				start := time.Now()
				rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
				err := r.report(rctx)
				rcancel()
				end := time.Now()
				mu.Lock()
				if err == nil && !killedAt.IsZero() && start.After(killedAt) && (firstOK.IsZero() || end.Before(firstOK)) {
					firstOK = end
				}
				mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	defer func() { cancel(); wg.Wait() }()
	time.Sleep(scaledDur(3*time.Second, scale, time.Second)) // steady load before the kill

	leader, err := c.leaderURL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victim *harness.Node
	for _, n := range c.Nodes {
		if n.URL() == leader {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("leader %s is none of the nodes", leader)
	}
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	victim.Kill()

	deadline := time.Now().Add(30 * time.Second)
	var gap time.Duration
	for {
		mu.Lock()
		ok, at := !firstOK.IsZero(), firstOK
		mu.Unlock()
		if ok {
			gap = at.Sub(killedAt)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write accepted within 30s of killing leader %s", victim.ID)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return []result{{Scenario: "failover", Metric: "SIGKILL of the leader → first write accepted", Value: float64(gap.Milliseconds()), Unit: "ms",
		Target: "< 3 s", Meets: boolp(gap < 3*time.Second),
		Note: fmt.Sprintf("50 agents each reporting every 50 ms through all nodes; only writes sent after the kill count; killed %s", victim.ID)}}
}
