package statuscmd

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestRenderDrawsWavesPhasesInboxesAndBlocks(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	st := &captainv1.GetStatusResponse{
		Pipeline:      &captainv1.Pipeline{Version: 3, Spec: &captainv1.PipelineSpec{Name: "web"}},
		LatestRelease: 15,
		Stages: []*captainv1.StageState{
			{
				Stage: "preprod", Wave: 0, Phase: captainv1.StagePhase_STAGE_PHASE_IDLE, Release: 15,
				Environments: []*captainv1.EnvironmentState{{Environment: "preprod", CurrentRelease: 15, LastGoodRelease: 15, HostsTotal: 2, HostsHealthy: 2}},
			},
			{
				Stage: "use1-onebox", Wave: 1, Phase: captainv1.StagePhase_STAGE_PHASE_VERIFYING, Release: 14, BakeEndsAt: ts(12 * time.Minute),
				Approvals: []*captainv1.ApprovalStatus{
					{Step: "bake", State: captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING},
					{Step: "alarms", State: captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED},
				},
				Inbox:        &captainv1.Inbox{Release: 15, Superseded: 13},
				Environments: []*captainv1.EnvironmentState{{Environment: "use1-onebox", CurrentRelease: 14, LastGoodRelease: 12, HostsTotal: 1, HostsHealthy: 1}},
			},
			{
				Stage: "use1-az1", Wave: 1, Phase: captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK, Release: 12,
				Block:        &captainv1.Block{In: true, Out: true, Actor: "captain", Reason: "release 12 failed: alarm errors", At: ts(-3 * time.Minute)},
				Environments: []*captainv1.EnvironmentState{{Environment: "use1-az1", CurrentRelease: 11, LastGoodRelease: 11, HostsTotal: 10, HostsHealthy: 4, HostsDown: 1}},
				Alarms:       []*captainv1.Alarm{{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_ALARM}},
			},
		},
	}
	var b strings.Builder
	if err := Render(&b, st, now, Style{}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"pipeline web, spec version 3, newest release #15",
		"pre-production\n  preprod",
		"wave 1\n  use1-onebox  #14    verifying  · bake 12m left · alarms ok · inbox #15 (superseded #13)",
		"└ use1-onebox: #14, 1/1 healthy, last good #12",
		"use1-az1     #12    rolling back 4/10 hosts",
		"blocked in+out by captain 3m ago: release 12 failed: alarm errors",
		"alarm errors: ALARM",
		"└ use1-az1: #11, 4/10 healthy, 1 down, last good #11",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Error("plain style printed colour codes")
	}
	b.Reset()
	_ = Render(&b, st, now, Style{Color: true})
	if !strings.Contains(b.String(), "\x1b[31m") {
		t.Error("colour style printed no red for the failed stage")
	}
}

func TestShortDurations(t *testing.T) {
	for d, want := range map[time.Duration]string{
		40 * time.Second: "40s", 12 * time.Minute: "12m", 2 * time.Hour: "2h", 125 * time.Minute: "2h5m",
	} {
		if got := short(d); got != want {
			t.Errorf("short(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestAgoSaysPastFutureAndNothing(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at   time.Time
		want string
	}{
		{now.Add(-3 * time.Minute), "3m ago"},
		{now.Add(-125 * time.Minute), "2h5m ago"},
		{now.Add(5 * time.Minute), "in 5m"},
		{now, "0s ago"},
		{time.Time{}, "-"},
	} {
		if got := Ago(tc.at, now); got != tc.want {
			t.Errorf("Ago(%s) = %q, want %q", tc.at, got, tc.want)
		}
	}
}

func TestStyleForAnythingButATerminalIsPlain(t *testing.T) {
	var b strings.Builder
	if StyleFor(&b).Color {
		t.Error("a buffer gets colour")
	}
	if got := (Style{}).Bad("x"); got != "x" {
		t.Errorf("plain Bad = %q", got)
	}
	if got := (Style{Color: true}).Good("x"); got != "\x1b[32mx\x1b[0m" {
		t.Errorf("coloured Good = %q", got)
	}
}
