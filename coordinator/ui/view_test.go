package ui

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestStagePhaseInWords(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	env := func(release, lastGood uint64, healthy, total uint32) *captainv1.EnvironmentState {
		return &captainv1.EnvironmentState{Environment: "e", CurrentRelease: release, LastGoodRelease: lastGood, HostsHealthy: healthy, HostsTotal: total}
	}
	pending := captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING
	passed := captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED
	tests := []struct {
		name      string
		stage     *captainv1.StageState
		wantClass string
		wantText  string
		wantBake  string
		waiting   bool
	}{
		{"deploying counts healthy hosts of every environment",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_DEPLOYING, Release: 3, Environments: []*captainv1.EnvironmentState{env(3, 2, 1, 2), env(3, 2, 2, 3)}},
			"deploying", "deploying 3/5 hosts", "", false},
		{"baking says the time left",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_VERIFYING, Release: 3, BakeEndsAt: timestamppb.New(now.Add(90 * time.Second)),
				Approvals: []*captainv1.ApprovalStatus{{Step: "bake", State: pending}, {Step: "manual", State: pending}}},
			"verifying", "baking", "2m", true},
		{"after the bake a person must approve",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_VERIFYING, Release: 3, BakeEndsAt: timestamppb.New(now.Add(-time.Second)),
				Approvals: []*captainv1.ApprovalStatus{{Step: "bake", State: passed}, {Step: "manual", State: pending}}},
			"verifying", "waiting for approval", "", true},
		{"other pending steps are named",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_VERIFYING, Release: 3,
				Approvals: []*captainv1.ApprovalStatus{{Step: "alarms", State: pending}, {Step: "test:smoke", State: pending}}},
			"verifying", "verifying: alarms, test:smoke", "", false},
		{"idle with the release approved everywhere",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_IDLE, Release: 3, Environments: []*captainv1.EnvironmentState{env(3, 3, 2, 2)}},
			"approved", "approved", "", false},
		{"idle after a rollback",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_IDLE, Release: 3, Environments: []*captainv1.EnvironmentState{env(2, 2, 2, 2)}},
			"idle", "idle", "", false},
		{"idle with nothing deployed",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_IDLE},
			"idle", "idle", "", false},
		{"failed",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_FAILED, Release: 3, Failure: "host h1 failed"},
			"failed", "failed", "", false},
		{"rolling back counts hosts back on the last good release",
			&captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK, Release: 3, Environments: []*captainv1.EnvironmentState{env(2, 2, 0, 1)}},
			"rolling-back", "rolling back 0/1 hosts", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newStage("web", tc.stage, now)
			if v.Phase != tc.wantClass || v.PhaseText != tc.wantText || v.BakeLeft != tc.wantBake || v.WaitingApproval != tc.waiting {
				t.Errorf("got class %q text %q bake %q waiting %v; want %q %q %q %v", v.Phase, v.PhaseText, v.BakeLeft, v.WaitingApproval,
					tc.wantClass, tc.wantText, tc.wantBake, tc.waiting)
			}
		})
	}
}

func TestBoardGroupsStagesIntoWaves(t *testing.T) {
	st := &captainv1.GetStatusResponse{
		Pipeline: &captainv1.Pipeline{Spec: &captainv1.PipelineSpec{Name: "web"}, Version: 2},
		Stages: []*captainv1.StageState{
			{Stage: "beta", Wave: 0}, {Stage: "onebox", Wave: 1}, {Stage: "az1", Wave: 1}, {Stage: "global", Wave: 2},
		},
	}
	b := newBoard(st, time.Now(), true, "tok")
	var got []string
	for _, w := range b.Waves {
		names := w.Label + ":"
		for _, s := range w.Stages {
			names += " " + s.Name
			if !s.CanAct || s.CSRF != "tok" {
				t.Errorf("stage %s lost the action settings", s.Name)
			}
		}
		got = append(got, names)
	}
	want := []string{"pre-production: beta", "wave 1: onebox az1", "wave 2: global"}
	if len(got) != len(want) {
		t.Fatalf("waves %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("wave %d: %q, want %q", i, got[i], want[i])
		}
	}
}
