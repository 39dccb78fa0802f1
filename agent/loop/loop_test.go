package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/agent/deploy"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func states(evs []*captainv1.HostEvent) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, fmt.Sprintf("%d:%s#%d", ev.GetSeq(), strings.TrimPrefix(ev.GetState().String(), "HOST_DEPLOY_STATE_"), ev.GetRelease()))
	}
	return out
}

// seqsContiguous fails unless evs carry seq 1..n in order, each once.
func seqsContiguous(t *testing.T, evs []*captainv1.HostEvent) {
	t.Helper()
	for i, ev := range evs {
		if ev.GetSeq() != uint64(i+1) {
			t.Fatalf("events reported %v: want seq 1..%d each exactly once", states(evs), len(evs))
		}
	}
}

func healthyReported(c *coordinator, deployment string) func() bool {
	return func() bool {
		_, evs, _ := c.snapshot()
		return slices.ContainsFunc(evs, func(ev *captainv1.HostEvent) bool {
			return ev.GetDeploymentId() == deployment && ev.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY
		})
	}
}

func TestRegistersHeartbeatsDeploysAndReportsUntilAcked(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	r := h.start()

	eventually(t, 10*time.Second, func() bool { return h.notes.has("READY=1") }, func() string { return fmt.Sprintf("no READY=1; notes %v", h.notes.list()) })
	regs, _, _ := c.snapshot()
	if len(regs) != 1 || regs[0].GetHostname() != "web-1" || regs[0].GetLabels()["az"] != "use1-az1" || regs[0].GetHostId() != "" {
		t.Fatalf("registrations = %v, want one new host web-1 with its labels", regs)
	}
	id, ok, err := LoadIdentity(h.stateDir)
	if err != nil || !ok || id.HostID != r.agent.HostID() {
		t.Fatalf("identity on disk = %+v %v %v, agent says %s", id, ok, err, r.agent.HostID())
	}
	if fi, _ := os.Stat(filepath.Join(h.stateDir, IdentityFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity.json mode %v, want 0600", fi.Mode().Perm())
	}
	bearer := "Bearer host:" + id.HostID + ":" + id.HostSecret
	eventually(t, 10*time.Second, func() bool { _, _, hb := c.snapshot(); return hb[bearer] >= 2 }, func() string {
		_, _, hb := c.snapshot()
		return fmt.Sprintf("heartbeats by credential: %v", hb)
	})

	c.want(h.desired(1, "d1", ""))
	eventually(t, 20*time.Second, healthyReported(c, "d1"), func() string {
		_, evs, _ := c.snapshot()
		return fmt.Sprintf("reported %v, want d1 healthy", states(evs))
	})
	if got := h.activations(); !slices.Equal(got, []string{"1/d1"}) {
		t.Fatalf("activations = %v, want [1/d1]", got)
	}
	if cur := h.current(); cur != "releases/1-d1" {
		t.Fatalf("current -> %q", cur)
	}
	_, evs, _ := c.snapshot()
	seqsContiguous(t, evs)
	want := []string{"FETCHING", "EXTRACTING", "ACTIVATING", "CHECKING_HEALTH", "HEALTHY"}
	var got []string
	for _, ev := range evs {
		got = append(got, strings.TrimPrefix(ev.GetState().String(), "HOST_DEPLOY_STATE_"))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("reported states %v, want %v", got, want)
	}
	eventually(t, 5*time.Second, func() bool { return len(r.store.Pending()) == 0 }, func() string {
		return fmt.Sprintf("%d events still queued after the coordinator acked them", len(r.store.Pending()))
	})
	eventually(t, 5*time.Second, func() bool { return h.notes.has("STATUS=idle: web #1") }, func() string { return fmt.Sprintf("notes %v", h.notes.list()) })
	if !h.notes.has("STATUS=deploying web #1: health checks") || !h.notes.has("WATCHDOG=1") {
		t.Fatalf("notes %v: want the deployment's steps in STATUS= and WATCHDOG=1", h.notes.list())
	}

	r.stop()
	if n := h.notes.list(); n[len(n)-1] != "STOPPING=1" {
		t.Fatalf("last notification %q, want STOPPING=1", n[len(n)-1])
	}
}

func TestEventsQueuedBeforeAckSurviveRestartAndDoneDeploymentIsNotRedone(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	c.setReportErr(connect.NewError(connect.CodeUnavailable, errors.New("no quorum")))
	c.want(h.desired(1, "d1", ""))
	r := h.start()

	// The deployment happens with no report getting through; its events wait on disk.
	eventually(t, 20*time.Second, func() bool { return h.notes.has("STATUS=idle: web #1") }, func() string { return fmt.Sprintf("notes %v", h.notes.list()) })
	r.stop()
	queued := len(r.store.Pending())
	if queued != 5 {
		t.Fatalf("%d events queued after the deployment, want 5 (fetching..healthy)", queued)
	}

	c.setReportErr(nil)
	h.start()
	eventually(t, 10*time.Second, func() bool { _, evs, _ := c.snapshot(); return len(evs) >= 5 }, func() string {
		_, evs, _ := c.snapshot()
		return fmt.Sprintf("reported %v after restart, want the 5 queued events", states(evs))
	})
	// The restarted agent is sent d1 again (its watch starts from 0): a no-op.
	eventually(t, 5*time.Second, func() bool { return h.notes.has("READY=1") }, func() string { return "not ready" })
	_, evs, _ := c.snapshot()
	seqsContiguous(t, evs)
	if len(evs) != 5 || !slices.Equal(h.activations(), []string{"1/d1"}) {
		t.Fatalf("after restart: reported %v, activations %v; want the 5 events once and one activation", states(evs), h.activations())
	}
	regs, _, _ := c.snapshot()
	if len(regs) != 1 {
		t.Fatalf("%d registrations, want 1: the restarted agent keeps its identity", len(regs))
	}
}

func TestNewestDesiredWinsWithoutInterruptingTheRunningDeployment(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	h.start()
	gate := filepath.Join(t.TempDir(), "gate")
	started := filepath.Join(t.TempDir(), "started")
	// Release 1's activate hook waits for the gate, so releases 2 and 3 arrive mid-deployment.
	c.want(h.desired(1, "d1", fmt.Sprintf(`touch %s; while [ ! -e %s ]; do sleep 0.02; done`, started, gate)))
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, func() string { return "release 1 never reached its activate hook" })
	c.want(h.desired(2, "d2", ""))
	c.want(h.desired(3, "d3", ""))
	// Give the watch time to hand both over while release 1 still runs.
	eventually(t, 5*time.Second, func() bool {
		_, evs, _ := c.snapshot()
		return len(evs) > 0 && h.notes.has("STATUS=deploying web #1: activating")
	}, func() string { return "no report during release 1" })
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, healthyReported(c, "d3"), func() string {
		_, evs, _ := c.snapshot()
		return fmt.Sprintf("reported %v, want d3 healthy", states(evs))
	})
	if got := h.activations(); !slices.Equal(got, []string{"1/d1", "3/d3"}) {
		t.Fatalf("activations = %v, want release 1 finished then 3; 2 was superseded while waiting", got)
	}
	_, evs, _ := c.snapshot()
	for _, ev := range evs {
		if ev.GetDeploymentId() == "d2" {
			t.Fatalf("d2 started (%v) though d3 replaced it before it could", states(evs))
		}
	}
	if !healthyReported(c, "d1")() {
		t.Fatalf("d1 did not finish healthy: %v", states(evs))
	}
}

func TestReregistersWithTheSameHostIDWhenTheCoordinatorForgetsTheHost(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	r := h.start()
	eventually(t, 10*time.Second, func() bool { return r.agent.HostID() != "" }, func() string { return "never registered" })
	first, _, _ := LoadIdentity(h.stateDir)

	c.forget()
	eventually(t, 10*time.Second, func() bool {
		id, _, _ := LoadIdentity(h.stateDir)
		return id.HostSecret != first.HostSecret
	}, func() string { return "no new credential on disk after the coordinator forgot the host" })
	regs, _, _ := c.snapshot()
	if regs[1].GetHostId() != first.HostID {
		t.Fatalf("re-registered with host_id %q, want the old %q", regs[1].GetHostId(), first.HostID)
	}
	second, _, _ := LoadIdentity(h.stateDir)
	if second.HostID != first.HostID || second.HostSecret == first.HostSecret {
		t.Fatalf("identity after re-registration %+v, before %+v: want same ID, new secret", second, first)
	}
	bearer := "Bearer host:" + second.HostID + ":" + second.HostSecret
	eventually(t, 10*time.Second, func() bool { _, _, hb := c.snapshot(); return hb[bearer] >= 2 }, func() string { return "no heartbeats with the new credential" })
	// Every loop that saw the rejection shares one registration.
	if regs, _, _ := c.snapshot(); len(regs) != 2 {
		t.Fatalf("%d registrations, want 2 (first, then one re-registration)", len(regs))
	}
	// Deploying still works on the new credential.
	c.want(h.desired(1, "d1", ""))
	eventually(t, 20*time.Second, healthyReported(c, "d1"), func() string { return "d1 not reported healthy after re-registration" })
}

func TestUnreachableCoordinatorsLeaveTheReleaseAloneAndShowInStatus(t *testing.T) {
	c := newCoordinator()
	addr := serve(t, c)
	h := newHost(t, addr)
	c.want(h.desired(1, "d1", ""))
	r := h.start()
	eventually(t, 20*time.Second, healthyReported(c, "d1"), func() string { return "d1 not healthy" })
	r.stop()

	// Restart against a coordinator address nothing answers on: the identity on disk makes
	// the agent ready at once, and it keeps retrying without touching the release.
	dead := newHost(t, "http://127.0.0.1:1")
	dead.stateDir, dead.appRoot, dead.notes = h.stateDir, h.appRoot, &notes{}
	dead.start()
	eventually(t, 10*time.Second, func() bool { return dead.notes.has("STATUS=coordinators unreachable, retrying; idle: web #1") }, func() string {
		return fmt.Sprintf("notes %v", dead.notes.list())
	})
	if !dead.notes.has("READY=1") || h.current() != "releases/1-d1" || !slices.Equal(h.activations(), []string{"1/d1"}) {
		t.Fatalf("ready=%v current=%q activations=%v: want ready, release 1 untouched", dead.notes.has("READY=1"), h.current(), h.activations())
	}
}

func TestReportsAreRetriedUntilTheCoordinatorAcks(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	c.setReportErr(connect.NewError(connect.CodeUnavailable, errors.New("no quorum")))
	c.want(h.desired(1, "d1", ""))
	r := h.start()
	eventually(t, 20*time.Second, func() bool { return h.notes.has("STATUS=idle: web #1") }, func() string { return fmt.Sprintf("notes %v", h.notes.list()) })
	if n := len(r.store.Pending()); n != 5 {
		t.Fatalf("%d events queued while reports fail, want 5", n)
	}
	c.setReportErr(nil)
	eventually(t, 10*time.Second, func() bool { return len(r.store.Pending()) == 0 }, func() string {
		return fmt.Sprintf("%d events still queued after the coordinator came back", len(r.store.Pending()))
	})
	_, evs, _ := c.snapshot()
	seqsContiguous(t, evs)
	if len(evs) != 5 {
		t.Fatalf("reported %v, want 5 events", states(evs))
	}
}

func TestJitterStaysWithinTenPercent(t *testing.T) {
	seen := map[bool]bool{}
	for range 1000 {
		d := jitter(time.Second)
		if d < 900*time.Millisecond || d > 1100*time.Millisecond {
			t.Fatalf("jitter(1s) = %s, want within ±10%%", d)
		}
		seen[d > time.Second] = true
	}
	if len(seen) != 2 {
		t.Fatal("jitter only ever moved one way")
	}
}

func TestUnfinishedDeploymentResumesAfterRestartBeforeANewerOne(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	gate := filepath.Join(t.TempDir(), "gate")
	started := filepath.Join(t.TempDir(), "started")
	c.want(h.desired(1, "d1", fmt.Sprintf(`touch %s; while [ ! -e %s ]; do sleep 0.02; done`, started, gate)))
	r := h.start()
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, func() string { return "release 1 never reached its activate hook" })
	r.stop() // SIGTERM mid-activation: the step is recorded, the hook is stopped

	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.want(h.desired(2, "d2", ""))
	h.start()
	eventually(t, 20*time.Second, healthyReported(c, "d2"), func() string {
		_, evs, _ := c.snapshot()
		return fmt.Sprintf("reported %v, want d1 then d2 healthy", states(evs))
	})
	if got := h.activations(); !slices.Equal(got, []string{"1/d1", "2/d2"}) {
		t.Fatalf("activations = %v, want the interrupted release 1 finished first, then 2", got)
	}
	if !healthyReported(c, "d1")() {
		_, evs, _ := c.snapshot()
		t.Fatalf("d1 was not finished after the restart: %v", states(evs))
	}
}

func TestRootDirPrefixesAppRootOnceAcrossAResumedDeployment(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	h.rootDir = t.TempDir()
	// An app_root this test cannot write: every file must land under root_dir.
	h.appRoot = "/srv/captain-loop-test"
	local := filepath.Join(h.rootDir, "srv", "captain-loop-test")

	gate := filepath.Join(t.TempDir(), "gate")
	started := filepath.Join(t.TempDir(), "started")
	c.want(h.desired(1, "d1", fmt.Sprintf(`touch %s; while [ ! -e %s ]; do sleep 0.02; done`, started, gate)))
	r := h.start()
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, func() string { return "release 1 never reached its activate hook" })
	r.stop()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.want(h.desired(2, "d2", ""))
	h.start()
	eventually(t, 20*time.Second, healthyReported(c, "d2"), func() string {
		_, evs, _ := c.snapshot()
		return fmt.Sprintf("reported %v, want d1 then d2 healthy", states(evs))
	})

	if cur, err := deploy.ReadCurrent(local); err != nil || cur != "releases/2-d2" {
		t.Fatalf("current under root_dir -> %q (%v), want releases/2-d2", cur, err)
	}
	// The hooks saw the prefixed root: that is where they wrote.
	b, err := os.ReadFile(filepath.Join(local, "activations"))
	if got := strings.Fields(string(b)); err != nil || !slices.Equal(got, []string{"1", "d1", "2", "d2"}) {
		t.Fatalf("activations under root_dir = %q (%v), want release 1 then 2", b, err)
	}
	if _, err := os.Stat(filepath.Join(h.rootDir, h.rootDir)); !os.IsNotExist(err) {
		t.Fatalf("root_dir applied twice on resume: %v", err)
	}
	_, evs, _ := c.snapshot()
	last := evs[len(evs)-1].GetApp()
	for _, rel := range last.GetReleasesOnDisk() {
		if !strings.HasPrefix(rel.GetDir(), local+"/releases/") {
			t.Errorf("reported release dir %q, want it under %s: the report names where the files are", rel.GetDir(), local)
		}
	}
	if len(last.GetReleasesOnDisk()) != 2 || last.GetCurrentRelease() != 2 {
		t.Errorf("last report: current %d, %d releases on disk; want current 2 and both releases", last.GetCurrentRelease(), len(last.GetReleasesOnDisk()))
	}
}

func TestUnderRootLeavesRefusedAppRootsAlone(t *testing.T) {
	tests := []struct {
		name, root, appRoot, want string
	}{
		{name: "prefixes an absolute app root", root: "/tmp/a1", appRoot: "/srv/web", want: "/tmp/a1/srv/web"},
		{name: "no root dir on a real host", root: "", appRoot: "/srv/web", want: "/srv/web"},
		{name: "relative app root stays refusable", root: "/tmp/a1", appRoot: "srv/web", want: "srv/web"},
		{name: "slash stays refusable", root: "/tmp/a1", appRoot: "/", want: "/"},
		{name: "unclean app root stays refusable", root: "/tmp/a1", appRoot: "/srv/../etc", want: "/srv/../etc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &captainv1.DesiredApp{Pipeline: "web", Deploy: &captainv1.DeploySettings{AppRoot: tt.appRoot}}
			got := underRoot(tt.root, in)
			if got.GetDeploy().GetAppRoot() != tt.want {
				t.Errorf("app_root = %q, want %q", got.GetDeploy().GetAppRoot(), tt.want)
			}
			if in.GetDeploy().GetAppRoot() != tt.appRoot {
				t.Errorf("the coordinator's message was changed to %q", in.GetDeploy().GetAppRoot())
			}
		})
	}
}

func TestCommandTestsSeeTheAppRootUnderRootDir(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	h.rootDir = t.TempDir()
	h.appRoot = "/srv/captain-loop-test"
	local := filepath.Join(h.rootDir, "srv", "captain-loop-test")
	r := h.start()
	defer r.stop()
	app := h.desired(1, "d1", "")
	c.want(app)
	eventually(t, 20*time.Second, healthyReported(c, "d1"), func() string { return "d1 not healthy" })
	app.Tests = []*captainv1.CommandTestRun{{Id: "web/az1/1/where", Name: "where", Command: []string{"/bin/sh", "-c", `echo "$CAPTAIN_APP_ROOT $(cat VERSION)"`}}}
	c.want(app)
	var got *captainv1.StepOutput
	eventually(t, 20*time.Second, func() bool {
		_, evs, _ := c.snapshot()
		for _, ev := range evs {
			if tr := ev.GetTestResult(); tr != nil {
				got = tr.GetOutput()
			}
		}
		return got != nil
	}, func() string { return "no command test result" })
	if want := local + " release 1\n"; !got.GetPassed() || got.GetOutput() != want {
		t.Fatalf("command test = %v, want it passed in current under root_dir printing %q", got, want)
	}
}
