package faults

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// The S3 gateway stops while release 2 is deploying, after the first host extracted it: the
// next host cannot fetch and reports failure, the deployment fails, and the automatic rollback
// puts every host back on a complete release 1 from the hosts' own caches, the gateway still
// down. No host that never got release 2 holds any piece of it.
func TestS3StoppedDuringADeploymentFailsItAndTheRollbackNeedsNoS3(t *testing.T) {
	f := newFleet(t, "1", "0s", "90s")
	agents := f.startAgents("a", "b", "c")
	f.deployFirst()

	// Batches hold one host; whichever comes first stops in before_activate with release 2
	// extracted, and the gateway stops before the next batch fetches.
	for _, a := range agents {
		a.openGate("activate", 2)
	}
	f.release(2, appFiles(2))
	var first *agent
	f.waitFor(30*time.Second, "the first host extracted release 2 and waits before its flip", func() string {
		for _, a := range agents {
			if a.reachedHook("before_activate", 2) {
				first = a
				return ""
			}
		}
		return "no host there yet"
	})
	f.gw.Stop()
	t.Logf("S3 gateway stopped with %s holding release 2 before its flip", first.name)
	var others []*agent
	for _, a := range agents {
		a.openGate("before_activate", 2)
		if a != first {
			others = append(others, a)
		}
	}

	d := f.onlyDeployment(captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, 2, 5*time.Second)
	d = f.waitDeployment(d.GetId(), captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED, 60*time.Second)
	names := f.hostNames()
	fetchFailed := 0
	for _, h := range d.GetHosts() {
		if h.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED && strings.Contains(h.GetMessage(), "fetch") {
			fetchFailed++
			t.Logf("%s reported: %s", names[h.GetHostId()], h.GetMessage())
		}
	}
	if fetchFailed == 0 {
		t.Errorf("no host of deployment %s reported a failed fetch\n%s", d.GetId(), f.describe())
	}

	rb := f.onlyDeployment(captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK, 1, 20*time.Second)
	rb = f.waitDeployment(rb.GetId(), captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED, 30*time.Second)
	if rb.GetFromRelease() != 2 || rb.GetTrigger().GetKind() != captainv1.TriggerKind_TRIGGER_KIND_AUTOMATIC {
		t.Errorf("rollback %s: from %d trigger %s, want an automatic rollback from 2", rb.GetId(), rb.GetFromRelease(), rb.GetTrigger().GetKind())
	}
	f.everyHostOn(1, 20*time.Second)
	f.waitFor(10*time.Second, "the stage blocked with release 2 marked bad", func() string {
		st, err := f.stage()
		switch {
		case err != nil:
			return err.Error()
		case st.GetPhase() == captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
			return "still rolling back"
		case !st.GetBlock().GetIn() || !slices.Contains(st.GetBadReleases(), 2):
			return fmt.Sprintf("block %+v, bad releases %v", st.GetBlock(), st.GetBadReleases())
		}
		return ""
	})

	if resp, err := http.Get(f.gw.Endpoint + "/"); err == nil {
		_ = resp.Body.Close()
		t.Fatalf("the S3 gateway answered after the rollback; it must have stayed down")
	}
	for _, a := range agents {
		if err := a.checkCurrentIs(1, "", appFiles(1)); err != nil {
			t.Error(err)
		}
		if p := a.partials(); len(p) > 0 {
			t.Errorf("%s has partial directories %v", a.name, p)
		}
		if rel, err := a.localCurrent(); err != nil || rel != 1 {
			t.Errorf("%s local state: current %d (%v), want 1", a.name, rel, err)
		}
	}
	// The host that ran release 2 came back through a new directory of release 1, made from
	// its cache; the others never held release 2 at all.
	if target, err := first.current(); err != nil || target != "releases/"+fmt.Sprintf("1-%s", rb.GetId()) {
		t.Errorf("%s: current -> %s (%v), want releases/1-%s, extracted for the rollback", first.name, target, err, rb.GetId())
	}
	for _, a := range others {
		if slices.ContainsFunc(a.releaseDirs(), func(d string) bool { return strings.HasPrefix(d, "2-") }) {
			t.Errorf("%s holds a release 2 directory although it never fetched it: %v", a.name, a.releaseDirs())
		}
	}
}
