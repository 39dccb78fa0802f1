package history

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/coordinator/state"
	"github.com/captain-cd/captain/pipelinespec"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

const spec = `
name: web
deploy: {app_root: /srv/web}
alarms: [{name: errors}]
stages:
  - name: regional
    environments:
      - {name: east, selector: {region: east}}
      - {name: central, selector: {region: central}}
    approval: {alarms: {names: [errors, host-health]}}
  - name: far
    environments: [{name: west, selector: {region: west}}]
`

var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// sha makes a recognisable 40-digit commit SHA.
func sha(prefix string) string { return prefix + strings.Repeat("0", 40-len(prefix)) }

type scripted struct {
	t     *testing.T
	f     *fsm.FSM
	index uint64
}

func (s *scripted) apply(cmd *raftv1.Command) {
	s.t.Helper()
	s.index++
	if cmd.At == nil {
		cmd.At = timestamppb.New(t0)
	}
	cmd.Actor = "test"
	if res := s.f.ApplyCommand(s.index, cmd); res.Err != nil {
		s.t.Fatalf("apply: %v", res.Err)
	}
}

func (s *scripted) reader() *state.Reader { return s.f.State().Snapshot() }

func dep(id, env string, kind captainv1.DeploymentKind, from, to uint64, min int, st captainv1.DeploymentState) *captainv1.Deployment {
	hs := captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY
	if st != captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED {
		hs = captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED
	}
	at := timestamppb.New(t0.Add(time.Duration(min) * time.Minute))
	return &captainv1.Deployment{
		Id: id, Pipeline: "web", Environment: env, Kind: kind, FromRelease: from, Release: to, State: st,
		CreatedAt: at, FinishedAt: at, Hosts: []*captainv1.HostResult{{HostId: env + "-1", State: hs}},
	}
}

// newScript builds five releases (release N brings commits cN-a and cN-b) and this history:
// east: 1, 2, 3, 4 fails, rollback to 3, 5 — central: 1, 2, 3, 4, rolled back to 3 — west: 1, 2.
func newScript(t *testing.T) *scripted {
	s := &scripted{t: t, f: fsm.New(nil)}
	p, vs, err := pipelinespec.ParseYAML([]byte(spec))
	if err != nil || len(vs) > 0 {
		t.Fatal(err, vs)
	}
	s.apply(&raftv1.Command{Body: &raftv1.Command_ApplyPipeline{ApplyPipeline: &raftv1.ApplyPipeline{Spec: p}}})
	for n := 1; n <= 5; n++ {
		s.apply(&raftv1.Command{Body: &raftv1.Command_CreateRelease{CreateRelease: &raftv1.CreateRelease{
			Pipeline: "web", HeadCommit: sha(fmt.Sprintf("c%db", n)), Artifact: &captainv1.ArtifactRef{Sha256: fmt.Sprint(n)},
			Commits: []*captainv1.Commit{{Sha: sha(fmt.Sprintf("c%db", n)), Message: fmt.Sprintf("change %db", n)}, {Sha: sha(fmt.Sprintf("c%da", n)), Message: fmt.Sprintf("change %da", n)}},
		}}})
	}
	deploy, rollback := captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK
	ok, failed := captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED, captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED
	s.apply(&raftv1.Command{Body: &raftv1.Command_EngineUpdate{EngineUpdate: &raftv1.EngineUpdate{
		Stages: []*captainv1.StageState{
			{Pipeline: "web", Stage: "regional", Phase: captainv1.StagePhase_STAGE_PHASE_IDLE, Release: 5, Environments: []*captainv1.EnvironmentState{
				{Environment: "east", CurrentRelease: 5, LastGoodRelease: 5, DeploymentId: "e6"},
				{Environment: "central", CurrentRelease: 3, LastGoodRelease: 3, DeploymentId: "c5"},
			}},
			{Pipeline: "web", Stage: "far", Phase: captainv1.StagePhase_STAGE_PHASE_IDLE, Release: 2, Environments: []*captainv1.EnvironmentState{
				{Environment: "west", CurrentRelease: 2, LastGoodRelease: 2, DeploymentId: "w2"},
			}},
		},
		Deployments: []*captainv1.Deployment{
			dep("e1", "east", deploy, 0, 1, 1, ok), dep("e2", "east", deploy, 1, 2, 2, ok), dep("e3", "east", deploy, 2, 3, 3, ok),
			dep("e4", "east", deploy, 3, 4, 4, failed), dep("e5", "east", rollback, 4, 3, 5, ok), dep("e6", "east", deploy, 3, 5, 6, ok),
			dep("c1", "central", deploy, 0, 1, 1, ok), dep("c2", "central", deploy, 1, 2, 2, ok), dep("c3", "central", deploy, 2, 3, 3, ok),
			dep("c4", "central", deploy, 3, 4, 4, ok), dep("c5", "central", rollback, 4, 3, 5, ok),
			dep("w1", "west", deploy, 0, 1, 1, ok), dep("w2", "west", deploy, 1, 2, 7, ok),
		},
	}}})
	return s
}

func pipelineOf(t *testing.T, r *state.Reader) *captainv1.Pipeline {
	p, err := r.Pipeline("web", 0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEnvironmentHistoryIsNewestFirstWithCommitsAdded(t *testing.T) {
	s := newScript(t)
	r := s.reader()
	deps, added, err := EnvironmentDeployments(r, pipelineOf(t, r), "east", 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range deps {
		ids = append(ids, d.GetId())
	}
	if got := strings.Join(ids, " "); got != "e6 e5 e4 e3 e2 e1" {
		t.Fatalf("history = %s, want newest first e6 … e1", got)
	}
	commits := func(id string) string {
		var out []string
		for _, c := range added[id].GetCommits() {
			out = append(out, c.GetSha()[:3])
		}
		return strings.Join(out, " ")
	}
	for id, want := range map[string]string{"e6": "c5b c5a c4b c4a", "e4": "c4b c4a", "e1": "c1b c1a", "e5": ""} {
		if got := commits(id); got != want {
			t.Errorf("commits added by %s = %q, want %q", id, got, want)
		}
	}
	if _, ok := added["e5"]; ok {
		t.Error("a rollback adds no commits")
	}
	limited, _, _ := EnvironmentDeployments(r, pipelineOf(t, r), "east", 2)
	if len(limited) != 2 || limited[0].GetId() != "e6" {
		t.Fatalf("limit 2 = %v", limited)
	}
	if _, _, err := EnvironmentDeployments(r, pipelineOf(t, r), "mars", 0); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "mars") {
		t.Fatalf("unknown environment: %v", err)
	}
}

func TestWhereIsCommit(t *testing.T) {
	s := newScript(t)
	r := s.reader()
	at := func(min int) string { return t0.Add(time.Duration(min) * time.Minute).Format(time.RFC3339) }
	cases := []struct {
		commit string
		first  uint64
		// environment → presence, deployment, since
		want map[string][3]string
	}{
		{sha("c4a"), 4, map[string][3]string{
			"east":    {"CONTAINED", "e6", at(6)},
			"central": {"ROLLED_BACK", "c4", ""},
			"west":    {"NOT_YET", "", ""},
		}},
		{"c2a0", 2, map[string][3]string{
			"east":    {"CONTAINED", "e2", at(2)},
			"central": {"CONTAINED", "c2", at(2)},
			"west":    {"CONTAINED", "w2", at(7)},
		}},
		{sha("c1b"), 1, map[string][3]string{
			"east": {"CONTAINED", "e1", at(1)}, "central": {"CONTAINED", "c1", at(1)}, "west": {"CONTAINED", "w1", at(1)},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.commit, func(t *testing.T) {
			resp, err := WhereIsCommit(r, tc.commit, "")
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetFirstRelease()["web"] != tc.first || !strings.HasPrefix(resp.GetCommit(), tc.commit[:4]) || len(resp.GetCommit()) != 40 {
				t.Fatalf("commit %s first release %v", resp.GetCommit(), resp.GetFirstRelease())
			}
			if len(resp.GetLocations()) != 3 {
				t.Fatalf("locations = %v", resp.GetLocations())
			}
			for _, loc := range resp.GetLocations() {
				w := tc.want[loc.GetEnvironment()]
				since := ""
				if loc.GetSince() != nil {
					since = loc.GetSince().AsTime().Format(time.RFC3339)
				}
				got := [3]string{strings.TrimPrefix(loc.GetPresence().String(), "COMMIT_PRESENCE_"), loc.GetDeploymentId(), since}
				if got != w {
					t.Errorf("%s: got %v, want %v", loc.GetEnvironment(), got, w)
				}
			}
		})
	}
}

func TestWhereIsCommitRefusals(t *testing.T) {
	s := newScript(t)
	// Two commits sharing a prefix.
	s.apply(&raftv1.Command{Body: &raftv1.Command_CreateRelease{CreateRelease: &raftv1.CreateRelease{
		Pipeline: "web", HeadCommit: sha("abcd1"), Commits: []*captainv1.Commit{{Sha: sha("abcd1")}, {Sha: sha("abcd2")}}, Artifact: &captainv1.ArtifactRef{Sha256: "6"},
	}}})
	r := s.reader()
	for _, tc := range []struct {
		commit, pipeline string
		want             error
		says             string
	}{
		{"abcd", "", ErrAmbiguous, "matches 2 commits"},
		{"ffff", "", ErrNotFound, `"ffff" is in no release`},
		{"c4", "", ErrInvalid, "at least 4 hex digits"},
		{"zzzzzz", "", ErrInvalid, "hex digits"},
		{"c4a0", "api", ErrNotFound, `pipeline "api"`},
	} {
		_, err := WhereIsCommit(r, tc.commit, tc.pipeline)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("WhereIsCommit(%q, %q) = %v, want %v saying %q", tc.commit, tc.pipeline, err, tc.want, tc.says)
		}
	}
}

func TestStatusListsEveryStageInOrderWithWatchedAlarms(t *testing.T) {
	s := newScript(t)
	s.apply(&raftv1.Command{Body: &raftv1.Command_SetAlarmState{SetAlarmState: &raftv1.SetAlarmState{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_ALARM, Reason: "5xx"}}})
	r := s.reader()
	st, err := Status(r, pipelineOf(t, r), r.Index())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetStages()) != 2 || st.GetStages()[0].GetStage() != "regional" || st.GetStages()[1].GetStage() != "far" {
		t.Fatalf("stages = %v", st.GetStages())
	}
	if st.GetLatestRelease() != 5 {
		t.Errorf("latest release = %d", st.GetLatestRelease())
	}
	al := st.GetStages()[0].GetAlarms()
	if len(al) != 1 || al[0].GetName() != "errors" || al[0].GetState() != captainv1.AlarmState_ALARM_STATE_ALARM {
		t.Errorf("regional alarms = %v", al)
	}
	// Status must not change the stored rows it decorates.
	stored, _ := r.Stage("web", "regional")
	if len(stored.GetAlarms()) != 0 {
		t.Error("Status wrote alarms into the stored stage row")
	}
}
