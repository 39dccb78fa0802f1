package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/captain-cd/captain/integration/harness"
)

// cpuTicks is the user+system CPU time a process used so far, in clock ticks (USER_HZ, 100/s
// on Linux).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; the fields after its ')' are fixed.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("stat of %d: %d fields after the name", pid, len(fields))
	}
	var total int64
	for _, f := range fields[11:13] { // utime, stime: fields 14 and 15 of stat(5)
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat of %d: %w", pid, err)
		}
		total += v
	}
	return total, nil
}

// cpuMeter measures the CPU a process uses between start and stop, in cores (1.0 = one core
// busy all the time).
type cpuMeter struct {
	pid   int
	ticks int64
	at    time.Time
}

func startCPU(pid int) (*cpuMeter, error) {
	t, err := cpuTicks(pid)
	if err != nil {
		return nil, err
	}
	return &cpuMeter{pid: pid, ticks: t, at: time.Now()}, nil
}

func (m *cpuMeter) cores() (float64, error) {
	t, err := cpuTicks(m.pid)
	if err != nil {
		return 0, err
	}
	return float64(t-m.ticks) / 100 / time.Since(m.at).Seconds(), nil
}

// leaderNode is the cluster node that leads now.
func (c *benchCluster) leaderNode(ctx context.Context) (*harness.Node, error) {
	url, err := c.leaderURL(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if n.URL() == url {
			return n, nil
		}
	}
	return nil, fmt.Errorf("leader %s is none of the cluster's nodes", url)
}

// profileDir is where scenarios save CPU profiles of the leader (BENCH_PROFILE=DIR), or "".
func profileDir() string { return os.Getenv("BENCH_PROFILE") }

// profileArgs are the captaind flags a profiled run needs.
func profileArgs() []string {
	if profileDir() == "" {
		return nil
	}
	return []string{"--enable-pprof"}
}

// profileLeader saves a CPU profile of the node over d as DIR/name.pprof. It blocks for d.
func (c *benchCluster) profileLeader(ctx context.Context, node *harness.Node, name string, d time.Duration) (string, error) {
	secs := max(1, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", node.URL(), secs), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.AdminToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("profile %s: %w", node.ID, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
		return "", fmt.Errorf("profile %s: %s: %s", node.ID, res.Status, b)
	}
	if err := os.MkdirAll(profileDir(), 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(profileDir(), name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return "", fmt.Errorf("save profile: %w", err)
	}
	return path, f.Close()
}

// metric reads one unlabelled sample from a node's /metrics.
func metric(ctx context.Context, node *harness.Node, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, node.URL()+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics of %s: %w", node.ID, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, fmt.Errorf("metrics of %s: %w", node.ID, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metrics of %s: no %s", node.ID, name)
}
