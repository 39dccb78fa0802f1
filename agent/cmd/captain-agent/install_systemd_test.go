package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/captain-cd/captain/integration/nspawn"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// fleet is an AgentService on 127.0.0.1 that an agent inside a container reaches (containers
// share the host's network namespace). It hands out host IDs like captaind does.
type fleet struct {
	captainv1connect.UnimplementedAgentServiceHandler
	mu         sync.Mutex
	registers  []*captainv1.RegisterRequest
	secrets    map[string]string
	heartbeats map[string]int // host ID -> heartbeats
}

func (f *fleet) authed(h http.Header) (string, error) {
	rest, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer host:")
	id, secret, _ := strings.Cut(rest, ":")
	f.mu.Lock()
	defer f.mu.Unlock()
	if !ok || f.secrets[id] == "" || f.secrets[id] != secret {
		return "", connect.NewError(connect.CodeUnauthenticated, errors.New("unknown host"))
	}
	return id, nil
}

func (f *fleet) Register(_ context.Context, req *connect.Request[captainv1.RegisterRequest]) (*connect.Response[captainv1.RegisterResponse], error) {
	if req.Header().Get("Authorization") != "Bearer fleet-join-token" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("unknown join token"))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registers = append(f.registers, req.Msg)
	id := req.Msg.GetHostId()
	if id == "" {
		id = fmt.Sprintf("h-%012x", len(f.registers))
	}
	secret := fmt.Sprintf("secret-%d", len(f.registers))
	f.secrets[id] = secret
	return connect.NewResponse(&captainv1.RegisterResponse{HostId: id, HostSecret: secret, HeartbeatInterval: durationpb.New(500 * time.Millisecond)}), nil
}

func (f *fleet) Heartbeat(_ context.Context, req *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
	id, err := f.authed(req.Header())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heartbeats[id]++
	return connect.NewResponse(&captainv1.HeartbeatResponse{HeartbeatInterval: durationpb.New(500 * time.Millisecond)}), nil
}

func (f *fleet) Watch(ctx context.Context, req *connect.Request[captainv1.WatchRequest], s *connect.ServerStream[captainv1.WatchResponse]) error {
	if _, err := f.authed(req.Header()); err != nil {
		return err
	}
	if req.Msg.GetAfterIndex() < 1 {
		if err := s.Send(&captainv1.WatchResponse{Index: 1}); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

func (f *fleet) Report(_ context.Context, req *connect.Request[captainv1.ReportRequest]) (*connect.Response[captainv1.ReportResponse], error) {
	if _, err := f.authed(req.Header()); err != nil {
		return nil, err
	}
	var acked uint64
	for _, ev := range req.Msg.GetEvents() {
		acked = max(acked, ev.GetSeq())
	}
	return connect.NewResponse(&captainv1.ReportResponse{AckedSeq: acked}), nil
}

func (f *fleet) counts(id string) (registers, heartbeats int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.registers), f.heartbeats[id]
}

// TestInstallRunsUnderSystemdSurvivesSIGKILLAndUninstalls drives the real binary in a real
// systemd: install over D-Bus, the unit becomes active once the agent registered, systemd
// restarts it after SIGKILL with the same host identity, uninstall removes it all.
func TestInstallRunsUnderSystemdSurvivesSIGKILLAndUninstalls(t *testing.T) {
	rootfs := nspawn.Rootfs(t)
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "captain-agent"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f := &fleet{secrets: map[string]string{}, heartbeats: map[string]int{}}
	mux := http.NewServeMux()
	mux.Handle(captainv1connect.NewAgentServiceHandler(f))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	defer srv.CloseClientConnections()

	shared := t.TempDir()
	if err := os.WriteFile(filepath.Join(shared, "join-token"), []byte("fleet-join-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := nspawn.Boot(t, rootfs,
		nspawn.Bind{Host: bin, Container: "/mnt/captain-bin", ReadOnly: true},
		nspawn.Bind{Host: shared, Container: "/mnt/captain", ReadOnly: true})
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
	show := func(prop string) string {
		t.Helper()
		return run("systemctl", "show", "-p", prop, "--value", "captain-agent.service")
	}

	// No coordinator answers: the agent never registers, so never sends READY=1, and install
	// says so with the unit's state and its journal instead of hanging.
	out, err := c.Exec(ctx, "/mnt/captain-bin/captain-agent", "install", "--timeout", "7s",
		"--coordinator", "http://127.0.0.1:1", "--join-token-file", "/mnt/captain/join-token")
	if err == nil || !strings.Contains(string(out), "did not become active") || !strings.Contains(string(out), "registration failed") {
		t.Fatalf("install against a dead coordinator: err=%v, output:\n%s\nwant a failure with the unit's state and journal", err, out)
	}
	t.Logf("install against a dead coordinator fails as it should:\n%s", out)

	// Installing again with a live coordinator replaces config and restarts the unit.
	out = []byte(run("/mnt/captain-bin/captain-agent", "install",
		"--coordinator", srv.URL, "--join-token-file", "/mnt/captain/join-token",
		"--labels", "region=test,az=test-a", "--hostname", "nspawn-1"))
	t.Logf("install:\n%s", out)
	if got := show("ActiveState"); got != "active" {
		t.Fatalf("after install the unit is %q, want active", got)
	}
	if got := run("stat", "-c", "%a", "/etc/captain/agent.yaml", "/var/lib/captain/identity.json"); got != "600\n600" {
		t.Fatalf("modes of agent.yaml and identity.json: %q, want 600 both", got)
	}
	regs, _ := f.counts("")
	if regs != 1 {
		t.Fatalf("%d registrations after install, want 1", regs)
	}
	f.mu.Lock()
	reg := f.registers[0]
	f.mu.Unlock()
	if reg.GetHostname() != "nspawn-1" || reg.GetLabels()["az"] != "test-a" {
		t.Fatalf("registered as %v", reg)
	}
	hostID := fmt.Sprintf("h-%012x", 1)
	if !strings.Contains(run("cat", "/var/lib/captain/identity.json"), hostID) {
		t.Fatalf("identity.json does not hold %s", hostID)
	}
	if out := run("/usr/local/bin/captain-agent", "status"); !strings.Contains(out, "host "+hostID) {
		t.Fatalf("captain-agent status does not name the host:\n%s", out)
	}
	if st := show("StatusText"); !strings.HasPrefix(st, "idle") {
		t.Fatalf("STATUS= is %q, want idle", st)
	}

	restarts := show("NRestarts")
	pid := show("MainPID")
	run("systemctl", "kill", "--kill-whom=main", "-s", "SIGKILL", "captain-agent.service")
	deadline := time.Now().Add(30 * time.Second)
	for show("NRestarts") == restarts || show("ActiveState") != "active" || show("MainPID") == pid {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGKILL: NRestarts %s (was %s), state %s, MainPID %s (was %s); journal:\n%s",
				show("NRestarts"), restarts, show("ActiveState"), show("MainPID"), pid, run("journalctl", "-u", "captain-agent", "-n", "30", "--no-pager"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("systemd restarted the agent: NRestarts %s -> %s, MainPID %s -> %s", restarts, show("NRestarts"), pid, show("MainPID"))
	// The restarted agent heartbeats with the identity on disk: same host, no new registration.
	_, before := f.counts(hostID)
	deadline = time.Now().Add(20 * time.Second)
	for {
		regs, hb := f.counts(hostID)
		if regs != 1 {
			t.Fatalf("%d registrations after the restart, want still 1 (same host ID)", regs)
		}
		// Ten heartbeats at 500 ms: the agent has idled about five seconds.
		if hb >= before+10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted agent sent %d heartbeats as %s, want 10", hb-before, hostID)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, line := range strings.Split(run("cat", "/proc/"+show("MainPID")+"/status"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && (f[0] == "VmRSS:" || f[0] == "VmHWM:" || f[0] == "RssAnon:" || f[0] == "RssFile:" || f[0] == "RssShmem:") {
			t.Logf("idle agent %s", strings.Join(strings.Fields(line), " "))
		}
	}

	out = []byte(run("/mnt/captain-bin/captain-agent", "uninstall"))
	t.Logf("uninstall:\n%s", out)
	if got := show("LoadState"); got != "not-found" {
		t.Fatalf("after uninstall LoadState=%q, want not-found", got)
	}
	for _, p := range []string{"/usr/local/bin/captain-agent", "/etc/captain/agent.yaml", "/etc/systemd/system/captain-agent.service", "/etc/systemd/system/multi-user.target.wants/captain-agent.service"} {
		if _, err := c.Exec(ctx, "test", "!", "-e", p); err != nil {
			t.Errorf("%s still exists after uninstall", p)
		}
	}
	run("test", "-e", "/var/lib/captain/identity.json") // kept without --purge

	out = []byte(run("/mnt/captain-bin/captain-agent", "uninstall", "--purge"))
	t.Logf("uninstall --purge:\n%s", out)
	if _, err := c.Exec(ctx, "test", "!", "-e", "/var/lib/captain"); err != nil {
		t.Errorf("/var/lib/captain still exists after uninstall --purge")
	}
	if out := run("/mnt/captain-bin/captain-agent", "uninstall"); !strings.Contains(out, "nothing to do") {
		t.Errorf("third uninstall said %q, want it to say there is nothing to do", out)
	}
}
