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
