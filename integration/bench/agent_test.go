package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/integration/harness"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

const footprintPipeline = `name: big
deploy:
  app_root: /srv/big
  keep_releases: 2
  min_healthy_time: 0s
  health_deadline: 30s
  artifact_store: {bucket: %s, region: us-east-1}
  health_checks:
    - name: present
      command: {command: ["/bin/sh", "-c", "test -f \"$CAPTAIN_RELEASE_DIR/big.bin\""]}
      interval: 100ms
      timeout: 2s
stages:
  - name: all
    environments: [{name: all, selector: {fleet: big}}]
`

// rssKiB reads a memory figure (VmRSS, VmHWM) of a process from /proc, in KiB.
func rssKiB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// writeBigTree writes size bytes of incompressible data: three quarters in one file (the
// binary of a service), the rest in 64 KiB files (its assets).
func writeBigTree(dir string, size int64) error {
	rng := rand.NewChaCha8([32]byte{1})
	write := func(name string, n int64) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		buf := make([]byte, 1<<20)
		for n > 0 {
			chunk := buf[:min(int64(len(buf)), n)]
			_, _ = rng.Read(chunk)
			if _, err := f.Write(chunk); err != nil {
				f.Close()
				return err
			}
			n -= int64(len(chunk))
		}
		return f.Close()
	}
	big := size * 3 / 4
	if err := write("big.bin", big); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "assets"), 0o755); err != nil {
		return err
	}
	for i := 0; int64(i)*(64<<10) < size-big; i++ {
		if err := write(filepath.Join("assets", fmt.Sprintf("a%05d", i)), 64<<10); err != nil {
			return err
		}
	}
	return nil
}

// benchAgent measures captain-agent's resident memory idle, at its peak while it deploys a
// 1 GiB artifact (download, verify, extract), and after.
func benchAgent(t *testing.T, e *env) []result {
	size := int64(scaled(1024, e.scale, 64)) << 20
	gw := s3test.Start(t)
	c := startCluster(t, e)
	dir := t.TempDir()
	s3Env := []string{"AWS_ACCESS_KEY_ID=" + gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + gw.SecretKey, "AWS_REGION=us-east-1"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	captain := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, e.bins.Captain, args...)
		cmd.Env = append(append(os.Environ(), "CAPTAIN_ADDR="+c.Nodes[0].APIAddr, "CAPTAIN_TOKEN="+c.AdminToken), s3Env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("captain %s: %v\n%s", strings.Join(args, " "), err, errb.String())
		}
		return out.String()
	}
	key := filepath.Join(dir, "release.key")
	captain("keygen", "--out", key)
	pipelineFile := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(pipelineFile, fmt.Appendf(nil, footprintPipeline, gw.Bucket), 0o644); err != nil {
		t.Fatal(err)
	}
	captain("pipeline", "apply", "-f", pipelineFile)
	var tok struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(captain("token", "create", "--role", "agent", "--name", "bench", "-o", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tokenFile, []byte(tok.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "coordinators: [%s]\njoin_token_file: %s\nlabels: {fleet: big}\nstate_dir: %s\nroot_dir: %s\ntrusted_keys: [%s]\ns3: {endpoint: %q, region: us-east-1}\nhostname: big-1\nlog_level: warn\n",
		strings.Join(c.Addrs(), ", "), tokenFile, filepath.Join(dir, "state"), filepath.Join(dir, "root"), key+".pub", gw.Endpoint), 0o600); err != nil {
		t.Fatal(err)
	}

	// The artifact first, so building it does not compete with the measurement.
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeBigTree(src, size); err != nil {
		t.Fatal(err)
	}
	commit := strings.Repeat("b1", 20)
	pushed := captain("artifact", "push", src, "--pipeline", "big", "--commit", commit, "--sign-key", key, "--bucket", gw.Bucket, "--s3-endpoint", gw.Endpoint, "-o", "json")
	pushFile := filepath.Join(dir, "push.json")
	if err := os.WriteFile(pushFile, []byte(pushed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(src); err != nil {
		t.Fatal(err)
	}

	agent := harness.Start(t, "captain-agent", e.bins.Agent, s3Env, "run", "--config", cfg)
	hosts := captainv1connect.NewHostServiceClient(c.http, c.Nodes[0].URL(), c.opts())
	onRelease := func(want uint64) (bool, error) {
		res, err := hosts.ListHosts(ctx, connect.NewRequest(&captainv1.ListHostsRequest{}))
		if err != nil {
			return false, err
		}
		// The bench registers one host: it is there (want 0) or runs release want, healthy.
		if len(res.Msg.GetHosts()) != 1 {
			return false, nil
		}
		for _, app := range res.Msg.GetHosts()[0].GetApps() {
			if app.GetCurrentRelease() == want && app.GetHealth() == captainv1.HealthState_HEALTH_STATE_HEALTHY {
				return true, nil
			}
		}
		return want == 0, nil
	}
	harness.Eventually(t, 30*time.Second, "agent registered", func() bool { ok, _ := onRelease(0); return ok })
	// Idle: registered, heartbeating and watching, nothing to deploy. A few seconds in, so
	// start-up allocations have settled.
	time.Sleep(3 * time.Second)
	idle, err := rssKiB(agent.PID(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	idleAnon, _ := rssKiB(agent.PID(), "RssAnon")
	idleFile, _ := rssKiB(agent.PID(), "RssFile")

	var (
		mu     sync.Mutex
		peak   int64
		stopCh = make(chan struct{})
		done   = make(chan struct{})
	)
	go func() { // VmHWM would do, but sampling also shows when the peak happens in the log
		defer close(done)
		for {
			if v, err := rssKiB(agent.PID(), "VmRSS"); err == nil {
				mu.Lock()
				peak = max(peak, v)
				mu.Unlock()
			}
			select {
			case <-stopCh:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	captain("release", "create", "--pipeline", "big", "--artifact-file", pushFile, "--commit", commit)
	harness.Eventually(t, 4*time.Minute, "release 1 healthy on the host", func() bool { ok, _ := onRelease(1); return ok })
	took := time.Since(start)
	close(stopCh)
	<-done
	hwm, err := rssKiB(agent.PID(), "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	peak = max(peak, hwm)
	// After: the deploy is over and the agent idles again.
	time.Sleep(5 * time.Second)
	after, err := rssKiB(agent.PID(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	afterAnon, _ := rssKiB(agent.PID(), "RssAnon")
	afterFile, _ := rssKiB(agent.PID(), "RssFile")
	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	sc := fmt.Sprintf("agent, %d MiB artifact", size>>20)
	return []result{
		{Scenario: sc, Metric: "RSS idle", Value: mib(idle), Unit: "MiB", Target: "< 20 MiB", Meets: boolp(mib(idle) < 20)},
		{Scenario: sc, Metric: "RSS peak during the deploy", Value: mib(peak), Unit: "MiB", Target: "< 40 MiB", Meets: boolp(mib(peak) < 40),
			Note: fmt.Sprintf("release created → healthy on the host took %s (download, verify, extract of %d MiB from versitygw on loopback)", took.Round(100*time.Millisecond), size>>20)},
		{Scenario: sc, Metric: "RSS 5 s after the deploy", Value: mib(after), Unit: "MiB", Target: "back to idle (< 20 MiB)", Meets: boolp(mib(after) < 20),
			Note: fmt.Sprintf("heap and stacks (RssAnon) %.1f MiB idle, %.1f MiB after (the deployed app's health checks now run); pages of the binary (RssFile) %.1f MiB idle, %.1f MiB after (code of the deploy path the kernel keeps mapped until memory is short)",
				mib(idleAnon), mib(afterAnon), mib(idleFile), mib(afterFile))},
	}
}
