package faults

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/captain-cd/captain/integration/harness"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// The leader is SIGKILLed while a deployment waits on its second batch, and the next leader is
// SIGKILLed during the bake: the same deployment finishes, every host activates it exactly
// once, and the bake ends when it was set to end before the kills.
func TestLeaderKilledDuringAWaveAndTheBakeTheSameDeploymentFinishesAndTheBakeEndKeeps(t *testing.T) {
	const bake = 8 * time.Second
	f := newFleet(t, "1", bake.String(), "2m")
	agents := f.startAgents("a", "b", "c")
	f.deployFirst()

	// Release 2: every host stops in before_activate until let through; the first batch's
	// host is let through, so the deployment stops in its second batch.
	for _, a := range agents {
		a.openGate("activate", 2)
	}
	f.release(2, appFiles(2))
	d := f.onlyDeployment(captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, 2, 20*time.Second)
	var first *agent
	f.waitFor(30*time.Second, "the first batch's host at its hook", func() string {
		for _, a := range agents {
			if a.reachedHook("before_activate", 2) {
				first = a
				return ""
			}
		}
		return "no host there yet"
	})
	first.openGate("before_activate", 2)
	names := f.hostNames()
	var waiting *agent
	f.waitFor(30*time.Second, first.name+" healthy on release 2 and the next host held at its hook", func() string {
		ds, err := f.deploymentsOf(captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, 2)
		if err != nil {
			return err.Error()
		}
		d = ds[0]
		healthy := map[string]bool{}
		for _, h := range d.GetHosts() {
			healthy[names[h.GetHostId()]] = h.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY
		}
		if !healthy[first.name] {
			return first.name + " not healthy yet"
		}
		for _, a := range agents {
			if a != first && a.reachedHook("before_activate", 2) {
				waiting = a
				return ""
			}
		}
		return "no host of the second batch at its hook yet"
	})
	if got := d.GetState(); got != captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS {
		t.Fatalf("deployment %s is %s before the kill, want in progress", d.GetId(), got)
	}

	leader := f.cluster.WaitLeader(5*time.Second, f.live())
	killedAt := time.Now()
	leader.Kill()
	t.Logf("SIGKILLed leader %s while %s waits in deployment %s", leader.ID, waiting.name, d.GetId())
	for _, a := range agents {
		a.openGate("before_activate", 2)
	}
	next := f.cluster.WaitLeader(10*time.Second, f.live())
	t.Logf("%s leads %s after the kill", next.ID, time.Since(killedAt).Round(time.Millisecond))

	done := f.waitDeployment(d.GetId(), captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED, 40*time.Second)
	assertDeployedOnce(t, f, done, 2)

	// The bake started when the last host got healthy; kill the new leader well inside it,
	// with the first killed node back so a majority remains.
	var bakeEnds time.Time
	f.waitFor(10*time.Second, "the stage verifying with a bake end", func() string {
		st, err := f.stage()
		switch {
		case err != nil:
			return err.Error()
		case st.GetPhase() != captainv1.StagePhase_STAGE_PHASE_VERIFYING || st.GetBakeEndsAt() == nil:
			return fmt.Sprintf("phase %s, bake ends %v", st.GetPhase(), st.GetBakeEndsAt())
		}
		bakeEnds = st.GetBakeEndsAt().AsTime()
		return ""
	})
	f.cluster.Restart(leader)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := harness.WaitReady(ctx, leader.URL()); err != nil {
		t.Fatalf("restarted %s: %v", leader.ID, err)
	}
	// Half-way through, so a bake the new leader restarted would end a visible 4s late.
	f.waitFor(bake, "half of the bake over", func() string {
		if left := time.Until(bakeEnds); left > bake/2 {
			return fmt.Sprintf("%s left", left.Round(time.Millisecond))
		}
		return ""
	})
	if left := time.Until(bakeEnds); left < time.Second {
		t.Fatalf("only %s of the bake left after restarting %s; the kill would not land inside the bake", left, leader.ID)
	}
	next.Kill()
	t.Logf("SIGKILLed leader %s with %s of the bake left", next.ID, time.Until(bakeEnds).Round(time.Millisecond))
	third := f.cluster.WaitLeader(10*time.Second, f.live())
	t.Logf("%s leads after the second kill", third.ID)

	st, err := f.stage()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.GetBakeEndsAt().AsTime(); !got.Equal(bakeEnds) {
		t.Errorf("bake ends at %s after the failover, want %s as set before it", got, bakeEnds)
	}
	// A bake restarted by the new leader would end a full bake after the kill, half a bake
	// past the recorded end.
	var leftVerifying time.Time
	f.waitFor(bake+10*time.Second, "the stage approving release 2", func() string {
		st, err := f.stage()
		switch {
		case err != nil:
			return err.Error()
		case st.GetPhase() == captainv1.StagePhase_STAGE_PHASE_VERIFYING:
			return "still verifying"
		case st.GetPhase() == captainv1.StagePhase_STAGE_PHASE_FAILED || st.GetPhase() == captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
			t.Fatalf("stage %s: %s\n%s", st.GetPhase(), st.GetFailure(), f.describe())
		}
		leftVerifying = st.GetPhaseSince().AsTime()
		return ""
	})
	if leftVerifying.Before(bakeEnds) || leftVerifying.After(bakeEnds.Add(2*time.Second)) {
		t.Errorf("the stage left verifying at %s, want at the recorded bake end %s (within 2s)", leftVerifying, bakeEnds)
	}
	ds, err := f.deploymentsOf(captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].GetId() != d.GetId() {
		t.Errorf("deployments of release 2 after both kills: %v, want only %s", ds, d.GetId())
	}
	for _, a := range agents {
		if err := a.checkCurrentIs(2, d.GetId(), appFiles(2)); err != nil {
			t.Error(err)
		}
	}
}

// assertDeployedOnce checks that the deployment's per-host results are all healthy and that
// every host activated it exactly once and extracted exactly one directory for the release.
func assertDeployedOnce(t *testing.T, f *fleet, d *captainv1.Deployment, release uint64) {
	t.Helper()
	names := f.hostNames()
	var hosts []string
	for _, h := range d.GetHosts() {
		hosts = append(hosts, names[h.GetHostId()])
		if h.GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
			t.Errorf("deployment %s: host %s %s %q, want healthy", d.GetId(), names[h.GetHostId()], h.GetState(), h.GetMessage())
		}
	}
	slices.Sort(hosts)
	var want []string
	for _, a := range f.agents {
		want = append(want, a.name)
	}
	if !slices.Equal(hosts, want) {
		t.Errorf("deployment %s has results for %v, want each of %v once", d.GetId(), hosts, want)
	}
	line := fmt.Sprintf("%s %d", d.GetId(), release)
	for _, a := range f.agents {
		acts := a.activations()
		if n := count(acts, line); n != 1 {
			t.Errorf("%s activated %q %d times, want once; activations %q", a.name, line, n, acts)
		}
		var dirs []string
		for _, dir := range a.releaseDirs() {
			if strings.HasPrefix(dir, fmt.Sprintf("%d-", release)) {
				dirs = append(dirs, dir)
			}
		}
		if want := []string{fmt.Sprintf("%d-%s", release, d.GetId())}; !slices.Equal(dirs, want) {
			t.Errorf("%s has release directories %v for release %d, want %v", a.name, dirs, release, want)
		}
	}
}

func count(lines []string, line string) int {
	n := 0
	for _, l := range lines {
		if l == line {
			n++
		}
	}
	return n
}
