package devcmd

import (
	"testing"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestDescribeStageNamesWhatAnOperatorWantsToKnow(t *testing.T) {
	env := func(name string, cur, good uint64, healthy, total uint32) *captainv1.EnvironmentState {
		return &captainv1.EnvironmentState{Environment: name, CurrentRelease: cur, LastGoodRelease: good, HostsHealthy: healthy, HostsTotal: total}
	}
	for _, tc := range []struct {
		name  string
		stage *captainv1.StageState
		want  string
	}{
		{"nothing deployed yet", &captainv1.StageState{Environments: []*captainv1.EnvironmentState{env("use1-az1", 0, 0, 0, 1)}},
			"idle: use1-az1 - 0/1"},
		{"deploying to two environments", &captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_DEPLOYING, Release: 2,
			Environments: []*captainv1.EnvironmentState{env("usw2-az1", 2, 1, 1, 2), env("usw2-az2", 2, 1, 0, 2)}},
			"#2 deploying, 1/4 hosts healthy (usw2-az1 #2 1/2, usw2-az2 #2 0/2)"},
		{"verifying", &captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_VERIFYING, Release: 2,
			Approvals: []*captainv1.ApprovalStatus{{Step: "bake"}, {Step: "alarms"}}},
			"#2 verifying: bake, alarms"},
		// The approved phase passes between two polls; idle with every environment's last good
		// on the release says the same.
		{"idle after approval", &captainv1.StageState{Release: 2, Environments: []*captainv1.EnvironmentState{env("use1-az1", 2, 2, 1, 1)}},
			"#2 approved: use1-az1 #2 1/1"},
		{"idle after rollback, blocked", &captainv1.StageState{Release: 3, BadReleases: []uint64{3},
			Environments: []*captainv1.EnvironmentState{env("use1-onebox", 2, 2, 1, 1)},
			Block:        &captainv1.Block{In: true, Out: true, Actor: "captain", Reason: "release 3 failed"}},
			"#3 failed, rolled back: use1-onebox #2 1/1; BLOCKED in+out by captain: release 3 failed"},
		{"rolling back", &captainv1.StageState{Phase: captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK, Release: 3, Failure: "host h-1 failed",
			Environments: []*captainv1.EnvironmentState{env("use1-onebox", 2, 2, 0, 1)}},
			"rolling back, 0/1 hosts healthy (use1-onebox #2 0/1) after: host h-1 failed"},
		{"waiting in the inbox", &captainv1.StageState{Release: 1, Inbox: &captainv1.Inbox{Release: 2},
			Environments: []*captainv1.EnvironmentState{env("use1-az1", 1, 0, 1, 1)}},
			"idle: use1-az1 #1 1/1; #2 waiting in the inbox"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, _ := describeStage(tc.stage); got != tc.want {
				t.Errorf("describeStage =\n  %q\nwant\n  %q", got, tc.want)
			}
		})
	}
}
