package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/captain-cd/captain/agent/agentclient"
	"github.com/captain-cd/captain/integration/harness"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// beats is a fleet of simulated agents heartbeating once per interval, each at a random
// phase, as agents started at different times (plus the agent's jitter) would.
type beats struct {
	recording atomic.Bool
	errs      atomic.Int64
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	mu        sync.Mutex
	lat       []time.Duration
}

func startBeats(agents []*simAgent, interval time.Duration) *beats {
	ctx, cancel := context.WithCancel(context.Background())
	b := &beats{cancel: cancel}
	for _, a := range agents {
		b.wg.Add(1)
		go b.beat(ctx, a, interval)
	}
	return b
}

func (b *beats) beat(ctx context.Context, a *simAgent, interval time.Duration) {
	defer b.wg.Done()
	select {
	case <-ctx.Done():
		return
	case <-time.After(rand.N(interval)):
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var mine []time.Duration
	defer func() {
		b.mu.Lock()
		b.lat = append(b.lat, mine...)
		b.mu.Unlock()
	}()
	for {
		rec := b.recording.Load()
		start := time.Now()
		_, err := a.client.Heartbeat(ctx, &captainv1.HeartbeatRequest{HostId: a.id})
		if ctx.Err() != nil {
			return
		}
		if rec {
			if err != nil {
				b.errs.Add(1)
			} else {
				mine = append(mine, time.Since(start))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// record turns recording on or off.
func (b *beats) record(on bool) { b.recording.Store(on) }

// stop ends the fleet and returns the recorded latencies, sorted, and the failed calls.
func (b *beats) stop() ([]time.Duration, int64) {
	b.cancel()
	b.wg.Wait()
	slices.Sort(b.lat)
	return b.lat, b.errs.Load()
}

// percentile of sorted latencies, in milliseconds.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[min(len(sorted)-1, int(p*float64(len(sorted))))].Microseconds()) / 1000
}

// step is one offered rate of a capacity search and what came of it.
type step struct {
	rate     int
	answered float64
	p99      float64
	errs     int64
}

func (s step) holds() bool {
	return s.p99 < 20 && s.errs == 0 && s.answered >= 0.95*float64(s.rate)
}

// searchCapacity finds the highest heartbeat rate the target answers at p99 < 20 ms: rates
// rise by stride until one fails, then the rate half a stride below that is tried. The
// agents beat once a second, so a rate is a number of agents.
func searchCapacity(t *testing.T, name string, agents []*simAgent, stride int, window time.Duration, servers []int) (best step, steps []step) {
	measure := func(rate int) step {
		b := startBeats(agents[:rate], time.Second)
		time.Sleep(2 * time.Second) // warm-up: every agent's first beat, connections opened
		meters := make([]*cpuMeter, 0, len(servers)+1)
		for _, pid := range append([]int{os.Getpid()}, servers...) {
			if m, err := startCPU(pid); err == nil {
				meters = append(meters, m)
			}
		}
		b.record(true)
		time.Sleep(window) // the measurement window
		b.record(false)
		var cpu []string
		for i, m := range meters {
			c, _ := m.cores()
			who := "load generator"
			if i > 0 {
				who = fmt.Sprintf("server %d", i)
			}
			cpu = append(cpu, fmt.Sprintf("%s %.2f", who, c))
		}
		lat, errs := b.stop()
		s := step{rate: rate, answered: float64(len(lat)) / window.Seconds(), p99: percentile(lat, 0.99), errs: errs}
		t.Logf("%s: %d/s offered, %.0f/s answered, p99 %.2f ms, %d errors; CPU cores: %s", name, rate, s.answered, s.p99, errs, strings.Join(cpu, ", "))
		return s
	}
	failed := 0
	for rate := stride; rate <= len(agents); rate += stride {
		s := measure(rate)
		steps = append(steps, s)
		if !s.holds() {
			failed = rate
			break
		}
		best = s
	}
	if failed > 0 && failed-stride/2 > best.rate {
		if s := measure(failed - stride/2); s.holds() {
			best = s
			steps = append(steps, s)
		}
	}
	return best, steps
}

// buildBare builds the bare Connect heartbeat handler (./barehb).
func buildBare(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "barehb")
	cmd := exec.Command("go", "build", "-o", out, "./barehb")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./barehb: %v\n%s", err, b)
	}
	return out
}

// benchCapacity measures the heartbeat rate a bare Connect handler holds at p99 < 20 ms and
// the rate a 3-node captaind cluster holds, with the same simulated agents on the same cores.
func benchCapacity(t *testing.T, e *env) []result {
	stride := scaled(2000, e.scale, 200)
	top := scaled(16000, e.scale, 1000)
	window := scaledDur(4*time.Second, e.scale, 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var bare step
	t.Run("bare", func(t *testing.T) {
		addr := harness.FreeAddr(t)
		p := harness.Start(t, "barehb", buildBare(t), nil, "--addr", addr)
		harness.Eventually(t, 10*time.Second, "barehb listening", func() bool { return strings.Contains(p.Log(), "listening on") })
		pool, err := httpPool(32)
		if err != nil {
			t.Fatal(err)
		}
		agents := make([]*simAgent, top)
		for i := range agents {
			cl, err := agentclient.New([]string{"http://" + addr}, agentclient.Credentials{HostID: fmt.Sprint(i), HostSecret: "x"}, agentclient.Options{HTTPClient: pool[i%len(pool)]})
			if err != nil {
				t.Fatal(err)
			}
			agents[i] = &simAgent{id: fmt.Sprintf("h-%05d", i), client: cl}
		}
		bare, _ = searchCapacity(t, "bare Connect handler", agents, stride, window, []int{p.PID()})
		p.Stop(5 * time.Second)
	})

	var captain step
	t.Run("captaind", func(t *testing.T) {
		// A TTL far beyond the run: hosts idle between steps must not go down, which would
		// put liveness writes into the measurement.
		c := startCluster(t, e, "--heartbeat-interval", "1s", "--heartbeat-ttl", "30m")
		agents, err := registerFleet(ctx, c, top, func(i int) map[string]string { return map[string]string{"az": fmt.Sprintf("az%d", i%3)} }, nil)
		if err != nil {
			t.Fatal(err)
		}
		var pids []int
		for _, n := range c.Nodes {
			pids = append(pids, n.PID())
		}
		captain, _ = searchCapacity(t, "captaind", agents, stride, window, pids)
	})

	ratio := 0.0
	if bare.rate > 0 {
		ratio = float64(captain.rate) / float64(bare.rate) * 100
	}
	note := fmt.Sprintf("rates tried in steps of %d up to %d agents at 1 heartbeat/s; %s windows after a 2 s warm-up; load generator on the same cores", stride, top, window)
	return []result{
		{Scenario: "heartbeat capacity", Metric: "bare Connect handler: rate held at p99 < 20 ms", Value: float64(bare.rate), Unit: "/s", Note: note},
		{Scenario: "heartbeat capacity", Metric: "captaind (3 nodes): rate held at p99 < 20 ms", Value: float64(captain.rate), Unit: "/s"},
		{Scenario: "heartbeat capacity", Metric: "captaind / bare", Value: ratio, Unit: "%", Target: ">= 90 %", Meets: boolp(ratio >= 90)},
	}
}
