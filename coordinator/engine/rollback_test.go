package engine

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// ran derives RanTo from the sim's deployments, as the API does from history.
func (s *sim) ran() RanTo {
	out := RanTo{}
	for _, d := range s.view.Deployments {
		if d.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED && !slices.Contains(out[d.GetEnvironment()], d.GetRelease()) {
			out[d.GetEnvironment()] = append(out[d.GetEnvironment()], d.GetRelease())
		}
	}
	for env := range out {
		slices.Sort(out[env])
	}
	return out
}

// rollback plans and applies an operator rollback, then settles.
func (s *sim) rollback(t *captainv1.RollbackTarget, preview bool) ([]*captainv1.EnvironmentRollback, error) {
	s.t.Helper()
	plan, u, err := s.planner.PlanRollback(s.view, s.ran(), t, s.now, "alice", "5xx after deploy", preview)
	if err != nil || preview {
		return plan, err
	}
	for _, st := range u.Stages {
		s.view.Stages[st.GetStage()] = proto.CloneOf(st)
	}
	for _, d := range u.Deployments {
		s.view.Deployments[d.GetId()] = proto.CloneOf(d)
	}
	s.applied = append(s.applied, u)
	s.settle()
	return plan, nil
}

func TestOperatorRollbackToLastGood(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	r2 := s.shipAll()
	// zone1's last good is r2; make it r1 so "last good" differs from the running release.
	s.env("zone1", "zone1").LastGoodRelease = r1
	plan, err := s.rollback(&captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != 1 || plan[0].GetFromRelease() != r2 || plan[0].GetToRelease() != r1 || len(plan[0].GetHosts()) != 2 {
		t.Fatalf("plan = %v", plan)
	}
	if s.runs("h-z1a") != r1 || s.runs("h-z1b") != r1 {
		t.Fatal("zone1 hosts not rolled back")
	}
	z := s.stage("zone1")
	if !z.GetBlock().GetIn() || !z.GetBlock().GetOut() || z.GetBlock().GetActor() != "alice" || !strings.Contains(z.GetBlock().GetReason(), "5xx after deploy") {
		t.Fatalf("block = %v", z.GetBlock())
	}
	d := s.view.Deployments[s.env("zone1", "zone1").GetDeploymentId()]
	if d.GetKind() != captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK || d.GetTrigger().GetKind() != captainv1.TriggerKind_TRIGGER_KIND_OPERATOR ||
		d.GetTrigger().GetActor() != "alice" || d.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED {
		t.Fatalf("rollback deployment = %v", d)
	}
	if s.runs("h-onebox") != r2 || s.runs("h-z2a") != r2 {
		t.Fatal("other stages changed")
	}
	if lg := s.env("zone1", "zone1").GetLastGoodRelease(); lg != r1 {
		t.Fatalf("zone1 last good = %d after rolling back to %d; the next default target must not be the release rolled back from", lg, r1)
	}
}

func TestOperatorRollbackToAnOlderReleaseTheEnvironmentRan(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	s.shipAll()
	s.shipAll()
	if _, err := s.rollback(&captainv1.RollbackTarget{Pipeline: "web", Environments: []string{"zone2"}, ToRelease: r1}, false); err != nil {
		t.Fatal(err)
	}
	if s.runs("h-z2a") != r1 {
		t.Fatalf("zone2 runs %d, want %d", s.runs("h-z2a"), r1)
	}
	if lg := s.env("zone2", "zone2").GetLastGoodRelease(); lg != r1 {
		t.Fatalf("zone2 last good = %d after rolling back to %d; the next default target must not be a release rolled back from", lg, r1)
	}
}

func TestOperatorRollbackRefusals(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	s.shipAll()
	r2 := s.createRelease()
	s.bad[r2] = true
	s.settle() // r2 failed in onebox and never ran anywhere
	cases := []struct {
		name   string
		target *captainv1.RollbackTarget
		want   error
		says   string
	}{
		{"never ran", &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1"}, ToRelease: r2}, ErrBadTarget, "release 2 never ran to approval in environment zone1 (it ran releases 1); use --force"},
		{"unknown stage", &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone9"}}, ErrUnknownTarget, `stage "zone9"`},
		{"unknown environment", &captainv1.RollbackTarget{Pipeline: "web", Environments: []string{"mars"}}, ErrUnknownTarget, `environment "mars"`},
		{"two selectors", &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1"}, AllStages: true}, ErrBadTarget, "exactly one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := proto.CloneOf(s.stage("zone1"))
			_, err := s.rollback(tc.target, false)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want %v saying %q", err, tc.want, tc.says)
			}
			if !proto.Equal(before, s.stage("zone1")) {
				t.Fatal("a refused rollback changed state")
			}
		})
	}
	// --force lets it through.
	if _, err := s.rollback(&captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone2"}, ToRelease: r2, Force: true}, true); err != nil {
		t.Fatalf("forced preview: %v", err)
	}
}

func TestOperatorRollbackCancelsADeploymentInProgress(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	r2 := s.createRelease()
	s.silent["h-onebox"] = true // r2 hangs in onebox
	s.settle()
	s.wantPhase("onebox", deploying)
	inflight := s.env("onebox", "onebox").GetDeploymentId()
	s.silent["h-onebox"] = false
	plan, err := s.rollback(&captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"onebox"}, ToRelease: r1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if plan[0].GetCancelsDeploymentId() != inflight || plan[0].GetFromRelease() != r2 {
		t.Fatalf("plan = %v", plan)
	}
	if d := s.view.Deployments[inflight]; d.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_CANCELLED || !strings.Contains(d.GetReason(), "rollback by alice") {
		t.Fatalf("in-flight deployment = %s %q", d.GetState(), d.GetReason())
	}
	if s.runs("h-onebox") != r1 {
		t.Fatalf("onebox runs %d", s.runs("h-onebox"))
	}
	s.advance(time.Hour)
	if got := s.releasesSeen("zone1"); !slices.Equal(got, []uint64{r1}) {
		t.Fatalf("zone1 deployed %v after the rollback blocked onebox", got)
	}
}

func TestOperatorRollbackOfTwoStagesAtOnce(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	s.shipAll()
	plan, err := s.rollback(&captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1", "zone2"}, ToRelease: r1}, false)
	if err != nil || len(plan) != 2 {
		t.Fatalf("plan = %v, %v", plan, err)
	}
	for _, h := range []string{"h-z1a", "h-z1b", "h-z2a", "h-z2b"} {
		if s.runs(h) != r1 {
			t.Errorf("%s runs %d", h, s.runs(h))
		}
	}
	if !s.stage("zone1").GetBlock().GetIn() || !s.stage("zone2").GetBlock().GetIn() || s.stage("onebox").GetBlock().GetIn() {
		t.Fatal("blocks not exactly on the two stages")
	}
}

func TestRollbackPreviewChangesNothing(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	r2 := s.shipAll()
	before := len(s.view.Deployments)
	plan, err := s.rollback(&captainv1.RollbackTarget{Pipeline: "web", AllStages: true, ToRelease: r1}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != 3 || len(s.view.Deployments) != before || s.runs("h-onebox") != r2 {
		t.Fatalf("preview changed state or plan wrong: %v", plan)
	}
	for _, er := range plan {
		if er.GetFromRelease() != r2 || er.GetToRelease() != r1 || er.GetAlreadyThere() || !slices.Contains(er.GetSkippedSteps(), "bake") {
			t.Errorf("preview entry = %v", er)
		}
	}
	// Rolling back to the release an environment already runs does nothing there.
	plan, _ = s.rollback(&captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"onebox"}, ToRelease: r2}, true)
	if !plan[0].GetAlreadyThere() || len(plan[0].GetHosts()) != 0 {
		t.Fatalf("already-there entry = %v", plan[0])
	}
}
