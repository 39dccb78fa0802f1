package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// benchHeartbeats runs fleets of 1k, 5k and 10k simulated agents (scaled) heartbeating once a
// second, each against a fresh cluster, and measures over a fixed window after a warm-up.
func benchHeartbeats(t *testing.T, e *env) []result {
	var out []result
	for _, n := range []int{1000, 5000, 10000} {
		n := scaled(n, e.scale, 10)
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			out = append(out, heartbeatFleet(t, e, n)...)
		})
	}
	return out
}

func heartbeatFleet(t *testing.T, e *env, n int) []result {
	scale := e.scale
	const interval = time.Second
	// TTL of five intervals: one slow answer must not mark a host down, five in a row should.
	c := startCluster(t, e, append([]string{"--heartbeat-interval", interval.String(), "--heartbeat-ttl", (5 * interval).String()}, profileArgs()...)...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Registration first, heartbeats after: registering is one Raft write per host and would
	// otherwise compete with the heartbeats of the hosts registered before it. Hosts registered
	// early may go down before their first heartbeat; the warm-up brings them back, and only
	// changes after the window opens count.
	regStart := time.Now()
	agents, err := registerFleet(ctx, c, n, func(i int) map[string]string {
		return map[string]string{"region": "bench", "az": fmt.Sprintf("az%d", i%3)}
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	regTook := time.Since(regStart)
	t.Logf("%d agents registered in %s", len(agents), regTook.Round(time.Millisecond))
	b := startBeats(agents, interval)
	defer b.stop(1)

	// 60 s of heartbeats at scale 1 (DESIGN §10): 10 s to reach steady state, 50 s measured.
	warmup := scaledDur(10*time.Second, scale, 2*time.Second)
	window := scaledDur(50*time.Second, scale, 5*time.Second)
	time.Sleep(warmup) // a warm-up of fixed length, not a wait for a condition
	before, err := c.commitIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader, err := c.leaderNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cpu, err := startCPU(leader.PID())
	if err != nil {
		t.Fatal(err)
	}
	windowStart := time.Now()
	b.record(1)
	if profileDir() != "" {
		path, err := c.profileLeader(ctx, leader, fmt.Sprintf("heartbeat-%d-leader", n), window)
		if err != nil {
			t.Error(err)
		}
		t.Logf("CPU profile of leader %s: %s", leader.ID, path)
	} else {
		time.Sleep(window) // the measurement window
	}
	b.record(0)
	leaderCores, err := cpu.cores()
	if err != nil {
		t.Fatal(err)
	}
	after, err := c.commitIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := c.hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	windows, errCount := b.stop(1)
	latencies := windows[0]

	// A host that went down in the window and came back has a liveness_since inside it.
	down := 0
	for _, h := range hosts {
		if h.GetLiveness() != captainv1.Liveness_LIVENESS_UP || h.GetLivenessSince().AsTime().After(windowStart) {
			down++
		}
	}
	notes := []string{}
	if extra := len(hosts) - n; extra != 0 {
		// Registrations carry request IDs, so a retried one cannot add a host; a surplus
		// here means hosts left over from something else, and is worth a look.
		notes = append(notes, fmt.Sprintf("the cluster lists %d hosts for %d registrations", len(hosts), n))
	}
	pct := func(p float64) float64 { return percentile(latencies, p) }
	rate := float64(len(latencies)) / window.Seconds()
	p99 := pct(0.99)
	sc := fmt.Sprintf("heartbeat, %d agents", n)
	if e := errCount; e > 0 {
		notes = append(notes, fmt.Sprintf("%d heartbeats failed in the window", e))
	}
	note := strings.Join(notes, "; ")
	return []result{
		{Scenario: sc, Metric: "heartbeats/s answered (offered 1/s per agent)", Value: rate, Unit: "/s", Note: note},
		{Scenario: sc, Metric: "p50 latency", Value: pct(0.50), Unit: "ms"},
		{Scenario: sc, Metric: "p99 latency", Value: p99, Unit: "ms", Target: "< 20 ms (10k agents)", Meets: boolp(p99 < 20 && errCount == 0)},
		{Scenario: sc, Metric: fmt.Sprintf("Raft entries in %s steady window", window), Value: float64(after - before), Unit: "", Target: "0", Meets: boolp(after == before)},
		{Scenario: sc, Metric: "hosts that went down", Value: float64(down), Unit: "", Target: "0", Meets: boolp(down == 0)},
		{Scenario: sc, Metric: "leader CPU", Value: leaderCores, Unit: "cores"},
		{Scenario: sc, Metric: "registration (one Raft write each)", Value: float64(n) / regTook.Seconds(), Unit: "hosts/s"},
	}
}
