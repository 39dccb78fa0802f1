package engine

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/pipelinespec"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestDesiredIsTheNewestDeploymentThatAssignedTheHost(t *testing.T) {
	spec, vs, err := pipelinespec.ParseYAML([]byte(twoEnvStage))
	if err != nil || len(vs) > 0 {
		t.Fatal(err, vs)
	}
	f := fsm.New(nil)
	ap := &fsmApplier{fsm: f}
	ap.must(t, &raftv1.Command{Body: &raftv1.Command_ApplyPipeline{ApplyPipeline: &raftv1.ApplyPipeline{Spec: spec}}})
	for i := 0; i < 3; i++ {
		ap.must(t, &raftv1.Command{Body: &raftv1.Command_CreateRelease{CreateRelease: &raftv1.CreateRelease{
			Pipeline: "web", HeadCommit: "c", Artifact: &captainv1.ArtifactRef{Sha256: string(rune('a' + i))},
		}}})
	}
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	dep := func(id string, release uint64, at time.Duration, states map[string]captainv1.HostDeployState) *captainv1.Deployment {
		d := &captainv1.Deployment{Id: id, Pipeline: "web", Stage: "regional", Environment: "east", Release: release, CreatedAt: timestamppb.New(t0.Add(at))}
		for h, s := range states {
			d.Hosts = append(d.Hosts, &captainv1.HostResult{HostId: h, State: s})
		}
		return d
	}
	healthy, pending, skipped := captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING, captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED
	ap.must(t, &raftv1.Command{Body: &raftv1.Command_EngineUpdate{EngineUpdate: &raftv1.EngineUpdate{
		Stages: []*captainv1.StageState{{Pipeline: "web", Stage: "regional", Environments: []*captainv1.EnvironmentState{{Environment: "east", LastGoodRelease: 1}}}},
		Deployments: []*captainv1.Deployment{
			dep("d1", 1, 0, map[string]captainv1.HostDeployState{"e1": healthy, "e2": healthy}),
			dep("d2", 2, time.Minute, map[string]captainv1.HostDeployState{"e1": healthy, "e2": pending}),
			dep("d3", 3, 2*time.Minute, map[string]captainv1.HostDeployState{"e1": skipped, "e2": skipped}),
		},
	}}})
	rd := f.State().Snapshot()
	cases := []struct {
		host   *captainv1.Host
		want   uint64
		wantID string
	}{
		{&captainv1.Host{Id: "e1", Labels: map[string]string{"region": "east"}}, 2, "d2"},
		{&captainv1.Host{Id: "e2", Labels: map[string]string{"region": "east"}}, 1, "d1"},
		{&captainv1.Host{Id: "w1", Labels: map[string]string{"region": "west"}}, 0, ""},
		{&captainv1.Host{Id: "x", Labels: map[string]string{"region": "north"}}, 0, ""},
	}
	for _, tc := range cases {
		apps, err := Desired(rd, tc.host)
		if err != nil {
			t.Fatal(err)
		}
		if tc.want == 0 {
			if len(apps) != 0 {
				t.Errorf("host %s: desired %v, want nothing", tc.host.GetId(), apps)
			}
			continue
		}
		if len(apps) != 1 || apps[0].GetRelease() != tc.want || apps[0].GetDeploymentId() != tc.wantID {
			t.Errorf("host %s: desired %v, want release %d from %s", tc.host.GetId(), apps, tc.want, tc.wantID)
			continue
		}
		if apps[0].GetDeploy().GetAppRoot() != "/srv/web" || apps[0].GetArtifact().GetSha256() == "" || apps[0].GetEnvironment() != "east" {
			t.Errorf("host %s: desired app lacks deploy settings or artifact: %v", tc.host.GetId(), apps[0])
		}
	}
	if apps, _ := Desired(rd, cases[0].host); len(apps[0].GetKeepReleases()) != 1 || apps[0].GetKeepReleases()[0] != 1 {
		t.Errorf("keep_releases = %v, want the last good release 1", apps[0].GetKeepReleases())
	}
}

func TestCommandTestGoesToTheFirstHealthyMatchingHostAndItsResultSettlesTheApproval(t *testing.T) {
	spec, vs, err := pipelinespec.ParseYAML([]byte(`
name: web
deploy: {app_root: /srv/web}
stages:
  - name: regional
    environments: [{name: east, selector: {region: east}}]
    approval:
      tests: [{name: it, command: {command: [./bin/it], host_selector: {tier: canary}}}]
`))
	if err != nil || len(vs) > 0 {
		t.Fatal(err, vs)
	}
	f := fsm.New(nil)
	ap := &fsmApplier{fsm: f}
	ap.must(t, &raftv1.Command{Body: &raftv1.Command_ApplyPipeline{ApplyPipeline: &raftv1.ApplyPipeline{Spec: spec}}})
	ap.must(t, &raftv1.Command{Body: &raftv1.Command_CreateRelease{CreateRelease: &raftv1.CreateRelease{Pipeline: "web", HeadCommit: "c", Artifact: &captainv1.ArtifactRef{Sha256: "a"}}}})
	healthy := &captainv1.HostApp{Pipeline: "web", CurrentRelease: 1, Health: captainv1.HealthState_HEALTH_STATE_HEALTHY}
	for _, h := range []*captainv1.Host{
		{Id: "a", Labels: map[string]string{"region": "east"}, Apps: []*captainv1.HostApp{healthy}},                   // not canary
		{Id: "b", Labels: map[string]string{"region": "east", "tier": "canary"}, Apps: []*captainv1.HostApp{healthy}}, // chosen
		{Id: "c", Labels: map[string]string{"region": "east", "tier": "canary"}, Apps: []*captainv1.HostApp{healthy}}, // later by ID
	} {
		h.Liveness = captainv1.Liveness_LIVENESS_UP
		ap.must(t, &raftv1.Command{Body: &raftv1.Command_RegisterHost{RegisterHost: &raftv1.RegisterHost{Host: h}}})
	}
	all := map[string]captainv1.HostDeployState{}
	for _, id := range []string{"a", "b", "c"} {
		all[id] = captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY
	}
	d := &captainv1.Deployment{Id: "d1", Pipeline: "web", Stage: "regional", Environment: "east", Release: 1, CreatedAt: timestamppb.Now()}
	for id, s := range all {
		d.Hosts = append(d.Hosts, &captainv1.HostResult{HostId: id, State: s})
	}
	ap.must(t, &raftv1.Command{Body: &raftv1.Command_EngineUpdate{EngineUpdate: &raftv1.EngineUpdate{
		Deployments: []*captainv1.Deployment{d},
		Stages: []*captainv1.StageState{{Pipeline: "web", Stage: "regional", Phase: captainv1.StagePhase_STAGE_PHASE_VERIFYING, Release: 1,
			Environments: []*captainv1.EnvironmentState{{Environment: "east", CurrentRelease: 1, DeploymentId: "d1"}},
			Approvals:    []*captainv1.ApprovalStatus{{Step: "test:it", State: captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING}}}},
	}}})
	testsOf := func(id string) []*captainv1.CommandTestRun {
		h, _ := f.State().Snapshot().Host(id)
		apps, err := Desired(f.State().Snapshot(), h.GetHost())
		if err != nil || len(apps) != 1 {
			t.Fatalf("desired for %s = %v, %v", id, apps, err)
		}
		return apps[0].GetTests()
	}
	if got := testsOf("b"); len(got) != 1 || got[0].GetId() != TestID("web", "regional", 1, "it") || got[0].GetCommand()[0] != "./bin/it" {
		t.Fatalf("tests for b = %v", got)
	}
	if len(testsOf("a")) != 0 || len(testsOf("c")) != 0 {
		t.Fatal("the test went to more than the one chosen host")
	}
	ap.must(t, &raftv1.Command{Body: &raftv1.Command_HostReports{HostReports: &raftv1.HostReports{Reports: []*raftv1.HostReport{{HostId: "b", Events: []*captainv1.HostEvent{{
		Seq: 1, Pipeline: "web", TestResult: &captainv1.CommandTestResult{Id: TestID("web", "regional", 1, "it"), Output: &captainv1.StepOutput{Name: "it", Passed: false, ExitCode: 2, Output: "2 tests failed\n..."}},
	}}}}}}})
	s, _ := f.State().Snapshot().Stage("web", "regional")
	a := findApproval(s, "test:it")
	if a.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED || a.GetDetail() != "failed on host b (exit 2): 2 tests failed" || len(a.GetOutputs()) != 1 {
		t.Fatalf("approval after the report = %v", a)
	}
	if len(testsOf("b")) != 0 {
		t.Fatal("a settled test is still asked for")
	}
}
