package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/integration/nspawn"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// samplePipeline restarts sample.service after each flip and counts the host healthy while
// the unit runs and `current` holds the release's VERSION.
const samplePipeline = `name: sample
deploy:
  app_root: /srv/sample
  systemd_unit: sample.service
  keep_releases: 3
  min_healthy_time: 500ms
  health_deadline: 20s
  artifact_store: {bucket: %s, region: us-east-1}
  health_checks:
    - name: unit-active
      command: {command: ["systemctl", "is-active", "--quiet", "sample.service"]}
      interval: 200ms
    - name: version-file
      command: {command: ["test", "-f", "/srv/sample/current/VERSION"]}
      interval: 200ms
stages:
  - name: box
    wave: 1
    environments: [{name: box, selector: {role: box}}]
    approval: {bake: {duration: 0s}}
`

// sampleUnit is the app's unit as an operator installs it before the first deployment.
const sampleUnit = `[Unit]
Description=Captain sample app

[Service]
ExecStart=/srv/sample/current/run.sh
`

func sampleRelease(n int) map[string]string {
	return map[string]string{"run.sh": "#!/bin/sh\nexec sleep infinity\n", "VERSION": fmt.Sprintf("%d\n", n)}
}

// TestInstalledAgentDeploysAndRestartsAUnitAndCarriesOnAfterSIGKILL runs captain-agent as
// `captain-agent install` sets it up in a real systemd, against real coordinators and a real
// S3 gateway on the host's loopback (the container shares the host's network).
func TestInstalledAgentDeploysAndRestartsAUnitAndCarriesOnAfterSIGKILL(t *testing.T) {
	rootfs := nspawn.Rootfs(t)
	started := time.Now()
	f := newFleet(t)
	pipelineFile := filepath.Join(f.dir, "sample.yaml")
	if err := os.WriteFile(pipelineFile, []byte(fmt.Sprintf(samplePipeline, f.gw.Bucket)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.captain(nil, "pipeline", "apply", "-f", pipelineFile)

	// What the container sees under /mnt/captain: join token, trusted key, the app's unit and
	// a drop-in giving the agent its S3 credentials (the operator's job on a real host).
	shared := t.TempDir()
	token := f.agentToken()
	dropIn := "[Service]\n"
	for _, kv := range f.s3Env {
		dropIn += "Environment=" + kv + "\n"
	}
	for name, src := range map[string]string{"join-token": token, "release.pub": f.signKey + ".pub"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(shared, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{"sample.service": sampleUnit, "s3.conf": dropIn} {
		if err := os.WriteFile(filepath.Join(shared, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	c := nspawn.Boot(t, rootfs,
		nspawn.Bind{Host: filepath.Dir(f.bins.Agent), Container: "/mnt/captain-bin", ReadOnly: true},
		nspawn.Bind{Host: shared, Container: "/mnt/captain", ReadOnly: true})
	t.Logf("container booted %s after start", time.Since(started).Round(10*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run := func(args ...string) string {
		t.Helper()
		out, err := c.Exec(ctx, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	show := func(unit, prop string) string {
		t.Helper()
		return run("systemctl", "show", "-p", prop, "--value", unit)
	}
	journal := func() string {
		out, _ := c.Exec(ctx, "journalctl", "-u", "captain-agent", "-u", "sample", "-n", "60", "--no-pager")
		return string(out)
	}
	run("install", "-D", "-m", "0644", "/mnt/captain/sample.service", "/etc/systemd/system/sample.service")
	run("install", "-D", "-m", "0644", "/mnt/captain/s3.conf", "/etc/systemd/system/captain-agent.service.d/s3.conf")

	install := []string{"/mnt/captain-bin/captain-agent", "install", "--join-token-file", "/mnt/captain/join-token",
		"--labels", "role=box", "--hostname", "nspawn-box", "--trusted-key", "/mnt/captain/release.pub",
		"--s3-endpoint", f.gw.Endpoint, "--s3-region", "us-east-1"}
	for _, u := range f.cluster.Addrs() {
		install = append(install, "--coordinator", u)
	}
	t.Logf("captain-agent install:\n%s", run(install...))
	if got := show("captain-agent.service", "ActiveState"); got != "active" {
		t.Fatalf("after install captain-agent is %q, want active\n%s", got, journal())
	}

	// host returns the one host the coordinators know, with its sample app.
	host := func() (*captainv1.Host, *captainv1.HostApp, error) {
		ctx, cancel := f.ctx()
		defer cancel()
		res, err := f.hosts.ListHosts(ctx, connect.NewRequest(&captainv1.ListHostsRequest{}))
		if err != nil {
			return nil, nil, fmt.Errorf("list hosts: %w", err)
		}
		if n := len(res.Msg.GetHosts()); n != 1 {
			return nil, nil, fmt.Errorf("%d hosts registered, want 1: %v", n, res.Msg.GetHosts())
		}
		h := res.Msg.GetHosts()[0]
		for _, app := range h.GetApps() {
			if app.GetPipeline() == "sample" {
				return h, app, nil
			}
		}
		return h, nil, nil
	}
	h, _, err := host()
	if err != nil {
		t.Fatal(err)
	}
	if h.GetHostname() != "nspawn-box" || h.GetLabels()["role"] != "box" {
		t.Fatalf("registered host %v, want nspawn-box with role=box", h)
	}
	hostID := h.GetId()

	// deployed waits until the host reports release n healthy and the container runs it.
	deployed := func(n uint64) {
		t.Helper()
		start := time.Now()
		deadline := start.Add(60 * time.Second)
		for {
			h, app, err := host()
			missing := ""
			switch {
			case err != nil:
				missing = err.Error()
			case h.GetId() != hostID:
				t.Fatalf("host ID changed from %s to %s", hostID, h.GetId())
			case app.GetCurrentRelease() != n || app.GetHealth() != captainv1.HealthState_HEALTH_STATE_HEALTHY:
				missing = fmt.Sprintf("host reports release %d, health %s, last result %q", app.GetCurrentRelease(), app.GetHealth(), app.GetLastResult())
			}
			if missing == "" {
				t.Logf("release %d deployed and healthy after %s", n, time.Since(start).Round(10*time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("release %d not deployed within 60s: %s\n%s\njournal:\n%s", n, missing, f.describe(), journal())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if v := run("cat", "/srv/sample/current/VERSION"); v != fmt.Sprint(n) {
			t.Fatalf("current/VERSION = %q, want %d", v, n)
		}
		if st := show("sample.service", "ActiveState"); st != "active" {
			t.Fatalf("sample.service is %q after release %d\n%s", st, n, journal())
		}
	}

	f.release("sample", 1, sampleRelease(1))
	deployed(1)
	samplePID := show("sample.service", "MainPID")

	restarts, agentPID := show("captain-agent.service", "NRestarts"), show("captain-agent.service", "MainPID")
	run("systemctl", "kill", "--kill-whom=main", "-s", "SIGKILL", "captain-agent.service")
	killed := time.Now()
	deadline := killed.Add(30 * time.Second)
	for show("captain-agent.service", "NRestarts") == restarts || show("captain-agent.service", "ActiveState") != "active" ||
		show("captain-agent.service", "MainPID") == agentPID {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGKILL: NRestarts %s (was %s), state %s\n%s", show("captain-agent.service", "NRestarts"), restarts,
				show("captain-agent.service", "ActiveState"), journal())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("systemd restarted the agent %s after SIGKILL (NRestarts %s -> %s)", time.Since(killed).Round(10*time.Millisecond),
		restarts, show("captain-agent.service", "NRestarts"))
	if pid := show("sample.service", "MainPID"); pid != samplePID {
		t.Fatalf("sample.service MainPID %s -> %s: killing the agent must leave the app alone", samplePID, pid)
	}

	f.release("sample", 2, sampleRelease(2))
	deployed(2)
	if pid := show("sample.service", "MainPID"); pid == samplePID || pid == "0" {
		t.Fatalf("sample.service MainPID %s (was %s): release 2 should have restarted it", pid, samplePID)
	}
	if target := run("readlink", "/srv/sample/current"); !strings.HasPrefix(target, "releases/2-") {
		t.Fatalf("current -> %q, want releases/2-*", target)
	}
	t.Logf("install, two releases and an agent restart under systemd in %s", time.Since(started).Round(10*time.Millisecond))
}
