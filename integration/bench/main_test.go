// Package bench is `make bench`: it runs real 3-node captaind clusters against simulated agents
// and measures what DESIGN §10 sets targets for. It only runs with CAPTAIN_BENCH=1, so
// `go test ./...` compiles and vets it but skips it in a moment.
package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/captain-cd/captain/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Run(m)) }

// machine describes where the figures were measured; they mean little without it.
type machine struct {
	CPUs      int    `json:"cpus"`
	MemoryMiB int64  `json:"memory_mib"`
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	GoVersion string `json:"go_version"`
}

// result is one measured figure.
type result struct {
	Scenario string  `json:"scenario"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	// Target is DESIGN §10's bound for the figure, in words; empty when §10 sets none.
	Target string `json:"target,omitempty"`
	// Meets is nil when there is no target to compare with.
	Meets *bool  `json:"meets,omitempty"`
	Note  string `json:"note,omitempty"`
}

type report struct {
	Started  time.Time `json:"started"`
	Scale    float64   `json:"scale"`
	Machine  machine   `json:"machine"`
	Results  []result  `json:"results"`
	Duration string    `json:"duration"`
}

func TestBench(t *testing.T) {
	if os.Getenv("CAPTAIN_BENCH") != "1" {
		t.Skip("benchmark harness: runs only with CAPTAIN_BENCH=1 (make bench)")
	}
	scale := 1.0
	if s := os.Getenv("BENCH_SCALE"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v <= 0 {
			t.Fatalf("BENCH_SCALE=%q: want a positive number such as 0.1", s)
		}
		scale = v
	}
	mem, err := memTotalMiB()
	if err != nil {
		t.Logf("memory size unknown: %v", err)
	}
	rep := &report{Started: time.Now().UTC(), Scale: scale, Machine: machine{
		CPUs: runtime.NumCPU(), MemoryMiB: mem, GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, GoVersion: runtime.Version(),
	}}
	e := &env{bins: harness.Binaries(t), scale: scale, clusters: map[*harness.Cluster]bool{}}
	stop := e.killOnSignal()
	defer stop()
	// Each scenario is a subtest so that its cluster (started through t.Cleanup) is gone
	// before the next one starts and competes for the two cores.
	scenarios := []struct {
		name string
		run  func(t *testing.T, e *env) []result
	}{
		{"heartbeat", benchHeartbeats},
		{"capacity", benchCapacity},
		{"rollout", benchRollout},
		{"rollback", benchRollback},
		{"writes", benchWrites},
		{"failover", benchFailover},
		{"artifact", benchArtifact},
		{"agent", benchAgent},
	}
	only := map[string]bool{}
	for _, name := range strings.FieldsFunc(os.Getenv("BENCH_ONLY"), func(r rune) bool { return r == ',' || r == ' ' }) {
		only[name] = true
	}
	for _, sc := range scenarios {
		if len(only) > 0 && !only[sc.name] {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			rep.Results = append(rep.Results, sc.run(t, e)...)
		})
	}
	rep.Duration = time.Since(rep.Started).Round(time.Second).String()
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("results.json", append(b, '\n'), 0o644); err != nil {
		t.Fatalf("write results.json: %v", err)
	}
	fmt.Print(markdown(rep))
}

// memTotalMiB reads MemTotal from /proc/meminfo.
func memTotalMiB() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("open meminfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse MemTotal %q: %w", rest, err)
			}
			return kb / 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read meminfo: %w", err)
	}
	return 0, fmt.Errorf("no MemTotal in /proc/meminfo")
}

func markdown(rep *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d CPUs, %d MiB, %s/%s, %s, BENCH_SCALE=%g, %s, took %s\n\n",
		rep.Machine.CPUs, rep.Machine.MemoryMiB, rep.Machine.GOOS, rep.Machine.GOARCH, rep.Machine.GoVersion,
		rep.Scale, rep.Started.Format("2006-01-02 15:04 UTC"), rep.Duration)
	b.WriteString("| scenario | metric | value | target (DESIGN §10) | met |\n| --- | --- | --- | --- | --- |\n")
	for _, r := range rep.Results {
		met := ""
		if r.Meets != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*r.Meets]
		}
		cell := strings.NewReplacer("|", `\|`).Replace
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", cell(r.Scenario), cell(r.Metric), strings.TrimSpace(formatValue(r.Value)+" "+r.Unit), cell(r.Target), met)
	}
	for _, r := range rep.Results {
		if r.Note != "" {
			fmt.Fprintf(&b, "\n- %s, %s: %s", r.Scenario, r.Metric, r.Note)
		}
	}
	b.WriteString("\n")
	return b.String()
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)):
		return strconv.FormatInt(int64(v), 10)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func boolp(b bool) *bool { return &b }

// env is what every scenario gets: the binaries, the scale, and the clusters running now.
type env struct {
	bins  harness.Bins
	scale float64

	mu       sync.Mutex
	clusters map[*harness.Cluster]bool
}

func (e *env) track(c *harness.Cluster) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clusters[c] = true
}

func (e *env) untrack(c *harness.Cluster) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.clusters, c)
}

// killOnSignal kills the running clusters' nodes on Ctrl-C or SIGTERM and exits. captaind runs
// in its own process group (so the harness can kill it whole), which the terminal's SIGINT does
// not reach, and a test binary dying from the signal runs no t.Cleanup: without this an
// interrupted `make bench` would leave three captaind per scenario behind.
func (e *env) killOnSignal() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
			return
		case sig := <-ch:
			e.mu.Lock()
			for c := range e.clusters {
				for _, n := range c.Nodes {
					n.Kill()
				}
			}
			e.mu.Unlock()
			fmt.Fprintf(os.Stderr, "bench: %s: stopped every captaind\n", sig)
			os.Exit(130)
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// scaled shrinks n by the scale, never below lo.
func scaled(n int, scale float64, lo int) int {
	return max(lo, int(float64(n)*scale))
}

// scaledDur shrinks d by the scale, never below lo.
func scaledDur(d time.Duration, scale float64, lo time.Duration) time.Duration {
	return max(lo, time.Duration(float64(d)*scale))
}
