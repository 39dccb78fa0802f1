package engine

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

const threeStages = `
name: web
deploy: {app_root: /srv/web}
alarms: [{name: errors}]
stages:
  - name: onebox
    wave: 1
    environments: [{name: onebox, selector: {role: onebox}}]
    approval: {bake: {duration: 10m}, alarms: {names: [host-health]}}
  - name: zone1
    wave: 1
    environments: [{name: zone1, selector: {az: z1}}]
    approval: {bake: {duration: 10m}, alarms: {names: [host-health]}}
  - name: zone2
    wave: 2
    environments: [{name: zone2, selector: {az: z2}}]
    approval: {bake: {duration: 10m}, alarms: {names: [host-health]}}
`

var threeStageHosts = map[string]string{
	"h-onebox": "role=onebox",
	"h-z1a":    "az=z1", "h-z1b": "az=z1",
	"h-z2a": "az=z2", "h-z2b": "az=z2",
}

const (
	idle        = captainv1.StagePhase_STAGE_PHASE_IDLE
	deploying   = captainv1.StagePhase_STAGE_PHASE_DEPLOYING
	verifying   = captainv1.StagePhase_STAGE_PHASE_VERIFYING
	rollingBack = captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK
)

// shipAll takes one release through every stage.
func (s *sim) shipAll() uint64 {
	r := s.createRelease()
	s.settle()
	for range s.view.Pipeline.GetSpec().GetStages() {
		s.advance(10 * time.Minute)
	}
	return r
}

func TestGoodReleaseReachesEveryHost(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	for _, h := range []string{"h-onebox", "h-z1a", "h-z1b", "h-z2a", "h-z2b"} {
		if got := s.runs(h); got != r1 {
			t.Errorf("host %s runs %d, want %d", h, got, r1)
		}
	}
	for _, st := range []string{"onebox", "zone1", "zone2"} {
		s.wantPhase(st, idle)
		if lg := s.env(st, st).GetLastGoodRelease(); lg != r1 {
			t.Errorf("stage %s last good = %d, want %d", st, lg, r1)
		}
	}
	if !s.audited("release.complete", r1) {
		t.Error("no release.complete audit event")
	}
}

func TestOneboxFailureNeverReachesZone1(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	r2 := s.createRelease()
	s.bad[r2] = true
	s.settle()
	s.advance(time.Hour)

	if got := s.releasesSeen("zone1"); !slices.Equal(got, []uint64{r1}) {
		t.Fatalf("zone1 deployed releases %v, want only %d", got, r1)
	}
	if s.stage("zone1").GetInbox().GetRelease() != 0 {
		t.Fatalf("release waits in zone1's inbox: %v", s.stage("zone1").GetInbox())
	}
	ob := s.stage("onebox")
	if !ob.GetBlock().GetIn() || !ob.GetBlock().GetOut() || !strings.Contains(ob.GetBlock().GetReason(), "release 2 failed") {
		t.Fatalf("onebox block = %v, want in+out with the reason", ob.GetBlock())
	}
	if !slices.Contains(ob.GetBadReleases(), r2) {
		t.Fatalf("release %d not marked bad: %v", r2, ob.GetBadReleases())
	}
	if got := s.runs("h-onebox"); got != r1 {
		t.Fatalf("onebox host runs %d after rollback, want %d", got, r1)
	}
	s.wantPhase("onebox", idle)
	var rb *captainv1.Deployment
	for _, d := range s.view.Deployments {
		if d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK {
			rb = d
		}
	}
	if rb == nil || rb.GetRelease() != r1 || rb.GetFromRelease() != r2 || rb.GetTrigger().GetKind() != captainv1.TriggerKind_TRIGGER_KIND_AUTOMATIC ||
		rb.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED {
		t.Fatalf("rollback deployment = %v", rb)
	}
}

func TestBadReleaseInWave1LeavesOtherStagesUntouched(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	r2 := s.createRelease()
	s.badHosts["h-z1b"] = map[uint64]bool{r2: true}
	s.settle()
	s.advance(10 * time.Minute) // onebox approves r2; zone1 takes it and fails on one host
	s.advance(time.Hour)

	if got := s.releasesSeen("zone2"); !slices.Equal(got, []uint64{r1}) {
		t.Fatalf("zone2 deployed %v, want only %d", got, r1)
	}
	if s.stage("onebox").GetBlock().GetIn() || s.stage("zone2").GetBlock().GetIn() {
		t.Fatal("a stage other than the failed one is blocked")
	}
	if s.runs("h-onebox") != r2 || s.env("onebox", "onebox").GetLastGoodRelease() != r2 {
		t.Fatalf("onebox should keep running approved release %d", r2)
	}
	if s.runs("h-z1a") != r1 || s.runs("h-z1b") != r1 {
		t.Fatalf("zone1 hosts run %d, %d after rollback, want %d", s.runs("h-z1a"), s.runs("h-z1b"), r1)
	}
	if s.runs("h-z2a") != r1 || s.runs("h-z2b") != r1 {
		t.Fatal("zone2 hosts changed")
	}
	if !s.stage("zone1").GetBlock().GetIn() {
		t.Fatal("zone1 not blocked")
	}
}

func TestOnlyTheNewestWaitingReleaseEntersABusyStage(t *testing.T) {
	slow := strings.Replace(threeStages, "name: zone2\n    wave: 2\n    environments: [{name: zone2, selector: {az: z2}}]\n    approval: {bake: {duration: 10m}",
		"name: zone2\n    wave: 2\n    environments: [{name: zone2, selector: {az: z2}}]\n    approval: {bake: {duration: 5h}", 1)
	s := newSim(t, slow, threeStageHosts)
	s.shipAll()
	s.advance(5 * time.Hour) // release 1 finishes its long bake in zone2
	r2 := s.createRelease()
	s.settle()
	s.advance(10 * time.Minute)
	s.advance(10 * time.Minute) // r2 now bakes in zone2 for 5 h
	s.wantPhase("zone2", verifying)
	var later []uint64
	for i := 0; i < 3; i++ {
		r := s.createRelease()
		later = append(later, r)
		s.settle()
		s.advance(10 * time.Minute)
		s.advance(10 * time.Minute)
	}
	if got := s.stage("zone2").GetInbox().GetRelease(); got != later[2] {
		t.Fatalf("zone2 inbox = %d, want newest %d", got, later[2])
	}
	if s.stage("zone2").GetRelease() != r2 {
		t.Fatal("the deploying/verifying release in zone2 was interrupted")
	}
	for _, r := range later[:2] {
		if !s.audited("release.superseded", r) {
			t.Errorf("release %d not recorded as superseded", r)
		}
	}
	s.advance(5 * time.Hour)
	s.advance(10 * time.Minute)
	if got := s.releasesSeen("zone2"); !slices.Equal(got, []uint64{1, r2, later[2]}) {
		t.Fatalf("zone2 deployed %v, want [1 %d %d]", got, r2, later[2])
	}
}

func TestFailoverMidBakeKeepsTheBakeEndTime(t *testing.T) {
	s := newSim(t, strings.Replace(threeStages, "duration: 10m}, alarms: {names: [host-health]}}\n  - name: zone1", "duration: 30m}, alarms: {names: [host-health]}}\n  - name: zone1", 1), threeStageHosts)
	s.createRelease()
	s.settle()
	s.wantPhase("onebox", verifying)
	end := s.stage("onebox").GetBakeEndsAt().AsTime()
	if want := s.now.Add(30 * time.Minute); !end.Equal(want) {
		t.Fatalf("bake ends %v, want %v", end, want)
	}
	s.now = s.now.Add(20 * time.Minute)
	// A new leader: a fresh planner that knows only the persisted rows.
	s.planner = Planner{NewID: s.planner.NewID}
	s.settle()
	s.wantPhase("onebox", verifying)
	if got := s.stage("onebox").GetBakeEndsAt().AsTime(); !got.Equal(end) {
		t.Fatalf("bake end moved to %v after failover, want %v", got, end)
	}
	u := s.planner.Plan(s.view, s.now)
	if !u.Wake.Equal(end) {
		t.Fatalf("wake = %v, want the bake end %v", u.Wake, end)
	}
	s.advance(10 * time.Minute)
	if s.stage("onebox").GetApprovedRelease() != 0 || s.stage("zone1").GetRelease() != 1 {
		t.Fatalf("release not approved and promoted at minute 30: onebox=%v zone1=%v", s.stage("onebox"), s.stage("zone1"))
	}
}

func TestBlockOutHoldsAReleaseWhileEarlierStagesContinue(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	s.view.Stages["zone1"].Block = &captainv1.Block{Out: true, Reason: "investigating latency", Actor: "alice", At: timestamppb.New(s.now)}
	r2 := s.createRelease()
	s.settle()
	s.advance(10 * time.Minute)
	s.advance(10 * time.Minute)
	r3 := s.createRelease()
	s.settle()
	s.advance(10 * time.Minute)
	s.advance(10 * time.Minute)

	if got := s.releasesSeen("onebox"); !slices.Equal(got, []uint64{r1, r2, r3}) {
		t.Fatalf("onebox deployed %v, want it to keep deploying newer releases", got)
	}
	if got := s.stage("zone1").GetApprovedRelease(); got != r3 {
		t.Fatalf("zone1 holds approved release %d, want %d", got, r3)
	}
	if got := s.releasesSeen("zone2"); !slices.Equal(got, []uint64{r1}) {
		t.Fatalf("zone2 deployed %v through a block out", got)
	}
	// Lifting the block lets the newest held release through.
	s.view.Stages["zone1"].Block = &captainv1.Block{}
	s.settle()
	s.advance(10 * time.Minute)
	if got := s.releasesSeen("zone2"); !slices.Equal(got, []uint64{r1, r3}) {
		t.Fatalf("zone2 deployed %v after lifting the block, want [%d %d]", got, r1, r3)
	}
}

const twoEnvStage = `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: regional
    environments:
      - {name: east, selector: {region: east}}
      - {name: west, selector: {region: west}}
    approval: {bake: {duration: 10m}, alarms: {names: [host-health]}}
`

func TestRollbackTargetsLastGoodPerEnvironment(t *testing.T) {
	s := newSim(t, twoEnvStage, map[string]string{"e1": "region=east", "w1": "region=west"})
	r1 := s.createRelease()
	s.settle()
	s.advance(10 * time.Minute)
	r2 := s.createRelease()
	s.settle()
	s.advance(10 * time.Minute)
	// Scripted history: the west last ran release 1 to approval (an operator rolled it back to 1
	// and its last good was reset), the east release 2.
	s.env("regional", "west").LastGoodRelease = r1
	if s.env("regional", "east").GetLastGoodRelease() != r2 {
		t.Fatalf("east last good = %d", s.env("regional", "east").GetLastGoodRelease())
	}
	r3 := s.createRelease()
	s.bad[r3] = true
	s.settle()

	if got := s.runs("e1"); got != r2 {
		t.Errorf("east host runs %d, want its last good %d", got, r2)
	}
	if got := s.runs("w1"); got != r1 {
		t.Errorf("west host runs %d, want its last good %d", got, r1)
	}
	if s.env("regional", "east").GetCurrentRelease() != r2 || s.env("regional", "west").GetCurrentRelease() != r1 {
		t.Errorf("environment current releases = %d, %d", s.env("regional", "east").GetCurrentRelease(), s.env("regional", "west").GetCurrentRelease())
	}
}

func TestInsufficientDataFollowsTheStagePolicy(t *testing.T) {
	spec := func(policy string) string {
		return `
name: web
deploy: {app_root: /srv/web}
alarms: [{name: errors}]
stages:
  - name: onebox
    environments: [{name: onebox, selector: {role: onebox}}]
    approval: {alarms: {names: [errors], insufficient_data: ` + policy + `}}
  - name: zone1
    environments: [{name: zone1, selector: {az: z1}}]
`
	}
	hosts := map[string]string{"h1": "role=onebox", "h2": "az=z1"}
	cases := []struct {
		policy    string
		wantPhase captainv1.StagePhase
		promoted  bool
		blocked   bool
	}{
		{"wait", verifying, false, false},
		{"approve", idle, true, false},
		{"rollback", idle, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.policy, func(t *testing.T) {
			s := newSim(t, spec(tc.policy), hosts)
			s.view.Alarms["errors"] = &captainv1.Alarm{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_INSUFFICIENT_DATA}
			s.createRelease()
			s.settle()
			s.advance(time.Hour)
			s.wantPhase("onebox", tc.wantPhase)
			if got := s.stage("zone1").GetRelease() == 1; got != tc.promoted {
				t.Errorf("promoted = %v, want %v", got, tc.promoted)
			}
			if got := s.stage("onebox").GetBlock().GetIn(); got != tc.blocked {
				t.Errorf("blocked = %v, want %v", got, tc.blocked)
			}
		})
	}
}

func TestAlarmDuringBakeRollsBack(t *testing.T) {
	spec := strings.Replace(threeStages, "alarms: {names: [host-health]}}\n  - name: zone1", "alarms: {names: [host-health, errors]}}\n  - name: zone1", 1)
	s := newSim(t, spec, threeStageHosts)
	s.view.Alarms["errors"] = &captainv1.Alarm{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_OK}
	r1 := s.shipAll()
	r2 := s.createRelease()
	s.settle()
	s.wantPhase("onebox", verifying)
	s.view.Alarms["errors"] = &captainv1.Alarm{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_ALARM, Reason: "5xx at 4%"}
	s.advance(time.Minute)
	if s.runs("h-onebox") != r1 {
		t.Fatalf("onebox host runs %d, want %d after the alarm", s.runs("h-onebox"), r1)
	}
	var rb *captainv1.Deployment
	for _, d := range s.view.Deployments {
		if d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK {
			rb = d
		}
	}
	if rb == nil || rb.GetTrigger().GetAlarm() != "errors" || rb.GetFromRelease() != r2 {
		t.Fatalf("rollback trigger = %v", rb.GetTrigger())
	}
}

func TestClosedWindowDelaysADeploymentButNotARollback(t *testing.T) {
	// Deployments into onebox only start 12:00–13:00 UTC; the sim starts at 10:00.
	spec := strings.Replace(threeStages, "approval: {bake: {duration: 10m}, alarms: {names: [host-health]}}\n  - name: zone1",
		"approval: {bake: {duration: 10m}, alarms: {names: [host-health, errors]}, windows: [{cron: \"0 12 * * *\", duration: 1h}]}\n  - name: zone1", 1)
	s := newSim(t, spec, threeStageHosts)
	s.view.Alarms["errors"] = &captainv1.Alarm{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_OK}
	r1 := s.createRelease()
	s.settle()
	s.wantPhase("onebox", idle)
	if u := s.planner.Plan(s.view, s.now); !u.Wake.Equal(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)) {
		t.Fatalf("wake = %v, want the window opening at 12:00", u.Wake)
	}
	s.advance(2 * time.Hour)
	s.wantPhase("onebox", verifying)
	s.advance(10 * time.Minute)
	r2 := s.createRelease()
	s.settle() // 12:10, window open: release 2 deploys and starts verifying
	if got := s.releasesSeen("onebox"); !slices.Equal(got, []uint64{r1, r2}) {
		t.Fatalf("onebox deployed %v inside the window, want [%d %d]", got, r1, r2)
	}
	s.wantPhase("onebox", verifying)
	// The window closes at 13:00; the alarm fires at 13:30 and the rollback still runs.
	s.now = s.now.Add(80 * time.Minute)
	s.view.Alarms["errors"] = &captainv1.Alarm{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_ALARM}
	s.settle()
	if s.runs("h-onebox") != r1 {
		t.Fatalf("rollback held by the closed window: onebox runs %d", s.runs("h-onebox"))
	}
}

func TestLiftingABlockAfterRollbackDeploysTheNewestGoodRelease(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	s.shipAll()
	r2 := s.createRelease()
	s.bad[r2] = true
	s.settle()
	r3 := s.createRelease()
	s.settle()
	if s.stage("onebox").GetInbox().GetRelease() != r3 {
		t.Fatalf("r3 should wait in the blocked onebox inbox, inbox=%v", s.stage("onebox").GetInbox())
	}
	s.view.Stages["onebox"].Block = &captainv1.Block{}
	s.settle()
	if got := s.releasesSeen("onebox"); !slices.Equal(got, []uint64{1, r2, r3}) {
		t.Fatalf("onebox deployed %v", got)
	}
	if s.runs("h-onebox") != r3 {
		t.Fatalf("onebox runs %d, want %d", s.runs("h-onebox"), r3)
	}
	// The bad release is never promoted into the stage again, even if offered.
	s.view.Stages["onebox"].Inbox = &captainv1.Inbox{Release: r2}
	s.advance(time.Minute)
	if got := s.releasesSeen("onebox"); !slices.Equal(got, []uint64{1, r2, r3}) {
		t.Fatalf("bad release redeployed: %v", got)
	}
}

func TestBatchesHonorMaxUnavailable(t *testing.T) {
	spec := `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: fleet
    batch: {max_unavailable: "40%"}
    environments: [{name: fleet, selector: {az: z1}}]
`
	hosts := map[string]string{}
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		hosts[id] = "az=z1"
	}
	s := newSim(t, spec, hosts)
	s.createRelease()
	maxInFlight := 0
	for i := 0; i < 20; i++ {
		s.plan()
		inFlight := 0
		for _, d := range s.view.Deployments {
			for _, hr := range d.GetHosts() {
				if hr.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_ASSIGNED {
					inFlight++
				}
			}
		}
		maxInFlight = max(maxInFlight, inFlight)
		if !s.report() {
			break
		}
	}
	if maxInFlight != 2 {
		t.Fatalf("max hosts in flight = %d, want 2 (40%% of 5)", maxInFlight)
	}
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		if s.runs(id) != 1 {
			t.Fatalf("host %s runs %d", id, s.runs(id))
		}
	}
}

func TestBatchSize(t *testing.T) {
	cases := []struct {
		mu, mh string
		n      int
		want   int
	}{
		{"1", "0", 10, 1},
		{"25%", "0", 10, 2},
		{"25%", "0", 3, 1}, // rounds down, never below one
		{"100%", "0", 4, 4},
		{"5", "50%", 10, 5},
		{"100%", "75%", 10, 2}, // 75% of 10 rounds up to 8 kept
		{"3", "9", 10, 1},
		{"3", "10", 10, 1}, // a contradiction still progresses one host at a time
	}
	for _, tc := range cases {
		if got := BatchSize(&captainv1.BatchPolicy{MaxUnavailable: tc.mu, MinHealthy: tc.mh}, tc.n); got != tc.want {
			t.Errorf("BatchSize(%s, %s, %d) = %d, want %d", tc.mu, tc.mh, tc.n, got, tc.want)
		}
	}
}

func TestDownHostsFollowThePolicy(t *testing.T) {
	for _, tc := range []struct {
		policy  string
		wantEnd captainv1.DeploymentState
	}{
		{"skip", captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED},
		{"fail", captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			s := newSim(t, `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: fleet
    down_hosts: `+tc.policy+`
    environments: [{name: fleet, selector: {az: z1}}]
`, map[string]string{"a": "az=z1", "b": "az=z1"})
			s.host("b").Liveness = captainv1.Liveness_LIVENESS_DOWN
			s.createRelease()
			s.settle()
			for _, d := range s.view.Deployments {
				if d.GetState() != tc.wantEnd {
					t.Fatalf("deployment %s = %s (%s), want %s", d.GetId(), d.GetState(), d.GetReason(), tc.wantEnd)
				}
			}
		})
	}
}

func TestProgressDeadlineFailsAStuckDeployment(t *testing.T) {
	s := newSim(t, `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: fleet
    progress_deadline: 15m
    environments: [{name: fleet, selector: {az: z1}}]
`, map[string]string{"a": "az=z1"})
	s.silent["a"] = true
	s.createRelease()
	s.settle()
	s.wantPhase("fleet", deploying)
	s.advance(15 * time.Minute)
	if s.stage("fleet").GetBadReleases()[0] != 1 || !strings.Contains(s.stage("fleet").GetFailure(), "progress deadline") {
		t.Fatalf("stage = %v", s.stage("fleet"))
	}
}

func TestHostMatchingTwoEnvironmentsIsLeftAlone(t *testing.T) {
	s := newSim(t, twoEnvStage, map[string]string{"e1": "region=east", "both": "region=east"})
	s.host("both").Labels["region"] = "east"
	// Make "both" match west too by giving west a selector it satisfies.
	s.view.Pipeline.Spec.Stages[0].Environments[1].Selector = map[string]string{"tier": "web"}
	s.host("both").Labels["tier"] = "web"
	s.createRelease()
	s.settle()
	if s.runs("both") != 0 {
		t.Fatalf("host matching two environments was deployed")
	}
	if s.runs("e1") != 1 {
		t.Fatal("e1 not deployed")
	}
	if got := Matches(s.view.Pipeline.GetSpec(), s.host("both")); len(got) != 2 {
		t.Fatalf("Matches = %v", got)
	}
}

func TestHostJoiningLaterCatchesUpWithoutANewRelease(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	s.view.Hosts = append(s.view.Hosts, &captainv1.Host{Id: "h-z1c", Labels: map[string]string{"az": "z1"}, Liveness: captainv1.Liveness_LIVENESS_UP})
	s.advance(time.Second)
	if got := s.runs("h-z1c"); got != r1 {
		t.Fatalf("new host runs %d, want the environment's release %d", got, r1)
	}
	if s.view.Latest != r1 {
		t.Fatal("a release was created for the catch-up")
	}
	d := s.view.Deployments[s.env("zone1", "zone1").GetDeploymentId()]
	if len(d.GetHosts()) != 1 || d.GetHosts()[0].GetHostId() != "h-z1c" || !strings.Contains(d.GetTrigger().GetReason(), "catch-up") {
		t.Fatalf("catch-up deployment = %v", d)
	}
	// Nothing more happens once it caught up.
	if u := s.planner.Plan(s.view, s.now); !u.Empty() {
		t.Fatalf("plan after catch-up not empty: %v", u)
	}
}

func TestHostDownDuringADeploymentCatchesUpWhenItReturns(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	s.host("h-z2b").Liveness = captainv1.Liveness_LIVENESS_DOWN
	r2 := s.shipAll()
	if s.runs("h-z2b") != r1 || s.runs("h-z2a") != r2 {
		t.Fatalf("before return: z2a=%d z2b=%d", s.runs("h-z2a"), s.runs("h-z2b"))
	}
	s.host("h-z2b").Liveness = captainv1.Liveness_LIVENESS_UP
	s.advance(time.Second)
	if got := s.runs("h-z2b"); got != r2 {
		t.Fatalf("returned host runs %d, want %d", got, r2)
	}
}

func TestFailedCatchUpIsNotRetriedForTheSameRelease(t *testing.T) {
	s := newSim(t, threeStages, threeStageHosts)
	r1 := s.shipAll()
	s.view.Hosts = append(s.view.Hosts, &captainv1.Host{Id: "h-z1c", Labels: map[string]string{"az": "z1"}, Liveness: captainv1.Liveness_LIVENESS_UP})
	s.badHosts["h-z1c"] = map[uint64]bool{r1: true}
	s.advance(time.Second)
	s.advance(time.Hour)
	n := 0
	for _, d := range s.view.Deployments {
		for _, hr := range d.GetHosts() {
			if hr.GetHostId() == "h-z1c" {
				n++
			}
		}
	}
	if n != 1 {
		t.Fatalf("host h-z1c was in %d deployments, want exactly one failed catch-up", n)
	}
}
