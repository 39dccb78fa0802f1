package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// harness applies commands at increasing indexes, as Raft would.
type harness struct {
	t     *testing.T
	f     *FSM
	index uint64
}

func newHarness(t *testing.T) *harness { return &harness{t: t, f: New(nil)} }

func (h *harness) apply(body any, opts ...func(*raftv1.Command)) *Result {
	h.t.Helper()
	h.index++
	cmd := &raftv1.Command{At: timestamppb.New(t0.Add(time.Duration(h.index) * time.Second)), Actor: "tester"}
	switch b := body.(type) {
	case *raftv1.ApplyPipeline:
		cmd.Body = &raftv1.Command_ApplyPipeline{ApplyPipeline: b}
	case *raftv1.CreateRelease:
		cmd.Body = &raftv1.Command_CreateRelease{CreateRelease: b}
	case *raftv1.CreateToken:
		cmd.Body = &raftv1.Command_CreateToken{CreateToken: b}
	case *raftv1.RevokeToken:
		cmd.Body = &raftv1.Command_RevokeToken{RevokeToken: b}
	case *raftv1.RegisterHost:
		cmd.Body = &raftv1.Command_RegisterHost{RegisterHost: b}
	case *raftv1.SetLiveness:
		cmd.Body = &raftv1.Command_SetLiveness{SetLiveness: b}
	case *raftv1.HostReports:
		cmd.Body = &raftv1.Command_HostReports{HostReports: b}
	case *raftv1.SetAlarmState:
		cmd.Body = &raftv1.Command_SetAlarmState{SetAlarmState: b}
	case *raftv1.EngineUpdate:
		cmd.Body = &raftv1.Command_EngineUpdate{EngineUpdate: b}
	case *raftv1.SetBlock:
		cmd.Body = &raftv1.Command_SetBlock{SetBlock: b}
	case *raftv1.Approve:
		cmd.Body = &raftv1.Command_Approve{Approve: b}
	case *raftv1.RemoveHost:
		cmd.Body = &raftv1.Command_RemoveHost{RemoveHost: b}
	case *raftv1.StartRollback:
		cmd.Body = &raftv1.Command_StartRollback{StartRollback: b}
	case *raftv1.SetMember:
		cmd.Body = &raftv1.Command_SetMember{SetMember: b}
	default:
		h.t.Fatalf("unknown body %T", body)
	}
	for _, o := range opts {
		o(cmd)
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		h.t.Fatal(err)
	}
	res, _ := h.f.Apply(&raft.Log{Index: h.index, Type: raft.LogCommand, Data: data}).(*Result)
	return res
}

func (h *harness) r() *state.Reader { return h.f.State().Snapshot() }

func requestID(id string) func(*raftv1.Command) { return func(c *raftv1.Command) { c.RequestId = id } }

func spec(name, desc string) *captainv1.PipelineSpec {
	return &captainv1.PipelineSpec{Name: name, Description: desc, Stages: []*captainv1.Stage{{Name: "one", Wave: 1}}}
}

func release(p string, n int) *raftv1.CreateRelease {
	return &raftv1.CreateRelease{Pipeline: p, HeadCommit: fmt.Sprintf("%040x", n), Artifact: &captainv1.ArtifactRef{Sha256: fmt.Sprintf("%064x", n)}}
}

func TestReleaseNumbersArePerPipelineAndIdempotent(t *testing.T) {
	h := newHarness(t)
	h.apply(&raftv1.ApplyPipeline{Spec: spec("web", "")})
	h.apply(&raftv1.ApplyPipeline{Spec: spec("api", "")})
	steps := []struct {
		pipeline, request string
		wantNumber        uint64
		wantCreated       bool
	}{
		{"web", "a", 1, true},
		{"web", "b", 2, true},
		{"api", "c", 1, true},
		{"web", "a", 1, false}, // retry of a
		{"web", "", 3, true},
		{"api", "c", 1, false},
		{"web", "d", 4, true},
	}
	for i, s := range steps {
		res := h.apply(release(s.pipeline, i), requestID(s.request))
		if res.Err != nil {
			t.Fatalf("step %d: %v", i, res.Err)
		}
		rel := res.Value.(*captainv1.Release)
		if rel.GetNumber() != s.wantNumber || res.Created != s.wantCreated {
			t.Fatalf("step %d (%s %q): release %d created=%v, want %d created=%v", i, s.pipeline, s.request,
				rel.GetNumber(), res.Created, s.wantNumber, s.wantCreated)
		}
		if s.wantCreated && (rel.GetIndex() != h.index || rel.GetCreatedBy() != "tester" || !rel.GetCreatedAt().AsTime().Equal(t0.Add(time.Duration(h.index)*time.Second))) {
			t.Fatalf("step %d: row index/actor/time = %d/%s/%v, want the command's", i, rel.GetIndex(), rel.GetCreatedBy(), rel.GetCreatedAt())
		}
		if len(rel.GetCommits()) == 0 || rel.GetCommits()[0].GetSha() != rel.GetHeadCommit() {
			t.Fatalf("step %d: head commit not first in commits: %v", i, rel.GetCommits())
		}
	}
}

func TestSemanticErrorsAreReturnedAndWriteNothing(t *testing.T) {
	h := newHarness(t)
	h.apply(&raftv1.ApplyPipeline{Spec: spec("web", "")})
	h.apply(&raftv1.CreateToken{Token: &captainv1.Token{Id: "t1", Name: "a", Role: captainv1.Role_ROLE_ADMIN}, SecretHash: []byte{1}})
	tests := []struct {
		name string
		body any
		want error
	}{
		{"release of unknown pipeline", release("nope", 1), state.ErrNotFound},
		{"duplicate token id", &raftv1.CreateToken{Token: &captainv1.Token{Id: "t1"}, SecretHash: []byte{2}}, ErrAlreadyExists},
		{"duplicate token secret", &raftv1.CreateToken{Token: &captainv1.Token{Id: "t2"}, SecretHash: []byte{1}}, ErrAlreadyExists},
		{"revoke unknown token", &raftv1.RevokeToken{Id: "zz"}, state.ErrNotFound},
		{"remove unknown host", &raftv1.RemoveHost{HostId: "h9"}, state.ErrNotFound},
		{"block unknown stage", &raftv1.SetBlock{Pipeline: "web", Stage: "nope"}, state.ErrNotFound},
		{"approve without stage row", &raftv1.Approve{Pipeline: "web", Stage: "one", Release: 1}, state.ErrNotFound},
		{"pipeline without name", &raftv1.ApplyPipeline{Spec: &captainv1.PipelineSpec{}}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := h.r().AuditEvents(state.AuditFilter{})
			res := h.apply(tt.body)
			if !errors.Is(res.Err, tt.want) {
				t.Fatalf("err = %v, want %v", res.Err, tt.want)
			}
			after, _ := h.r().AuditEvents(state.AuditFilter{})
			if len(after) != len(before) {
				t.Fatalf("a rejected command recorded %d audit events", len(after)-len(before))
			}
		})
	}
}

func TestEveryWriteIsAudited(t *testing.T) {
	h := newHarness(t)
	h.apply(&raftv1.ApplyPipeline{Spec: spec("web", "")}, func(c *raftv1.Command) { c.Reason = "first cut" })
	h.apply(release("web", 1), requestID("r1"))
	h.apply(&raftv1.CreateToken{Token: &captainv1.Token{Id: "t1"}, SecretHash: []byte{1}})
	h.apply(&raftv1.RevokeToken{Id: "t1"})
	h.apply(&raftv1.RegisterHost{Host: &captainv1.Host{Id: "h1", Hostname: "box"}, SecretHash: []byte{3}})
	h.apply(&raftv1.SetLiveness{Changes: []*raftv1.LivenessChange{{HostId: "h1", Liveness: captainv1.Liveness_LIVENESS_DOWN}}})
	h.apply(&raftv1.SetAlarmState{Name: "errors", State: captainv1.AlarmState_ALARM_STATE_ALARM, Source: "api:x"})
	h.apply(&raftv1.EngineUpdate{
		Stages: []*captainv1.StageState{{Pipeline: "web", Stage: "one", Release: 1, Phase: captainv1.StagePhase_STAGE_PHASE_VERIFYING}},
		Audit:  []*captainv1.AuditEvent{{Action: "stage.verify", Target: "pipeline/web/stage/one"}},
	})
	h.apply(&raftv1.SetBlock{Pipeline: "web", Stage: "one", Direction: captainv1.PromotionDirection_PROMOTION_DIRECTION_IN})
	h.apply(&raftv1.Approve{Pipeline: "web", Stage: "one", Release: 1, Comment: "lgtm"})
	h.apply(&raftv1.StartRollback{Stages: []*captainv1.StageState{{Pipeline: "web", Stage: "two"}}}, requestID("rb1"))
	h.apply(&raftv1.RemoveHost{HostId: "h1"})
	h.apply(&raftv1.SetMember{Member: &raftv1.ClusterMember{NodeId: "n1", ApiAddress: "a:1"}})

	evs, err := h.r().AuditEvents(state.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for i := len(evs) - 1; i >= 0; i-- {
		actions = append(actions, evs[i].GetAction())
		if evs[i].GetActor() != "tester" || evs[i].GetAt() == nil || evs[i].GetIndex() == 0 {
			t.Errorf("event %v lacks actor, time or index", evs[i])
		}
	}
	want := []string{"pipeline.apply", "release.create", "token.create", "token.revoke", "host.register", "host.liveness",
		"alarm.set", "stage.verify", "promotions.disable", "release.approve", "rollback.start", "host.remove", "cluster.member"}
	if fmt.Sprint(actions) != fmt.Sprint(want) {
		t.Fatalf("audit actions\n got %v\nwant %v", actions, want)
	}
	if evs[len(evs)-1].GetReason() != "first cut" || evs[len(evs)-2].GetRequestId() != "r1" {
		t.Fatalf("reason/request id not recorded: %v / %v", evs[len(evs)-1], evs[len(evs)-2])
	}
	st, _ := h.r().Stage("web", "one")
	if !st.GetBlock().GetIn() || st.GetBlock().GetOut() || st.GetApprovals()[0].GetDetail() != "approved by tester: lgtm" {
		t.Fatalf("stage after block+approve = %v", st)
	}
}

func TestHostReportsApplyOnlyNewSequences(t *testing.T) {
	h := newHarness(t)
	h.apply(&raftv1.RegisterHost{Host: &captainv1.Host{Id: "h1"}})
	h.apply(&raftv1.EngineUpdate{Deployments: []*captainv1.Deployment{{Id: "d1", Pipeline: "web", Environment: "e"}}})
	report := func(seq uint64, release uint64) *raftv1.HostReports {
		return &raftv1.HostReports{Reports: []*raftv1.HostReport{{HostId: "h1", Events: []*captainv1.HostEvent{{
			Seq: seq, Pipeline: "web", DeploymentId: "d1", State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY,
			App: &captainv1.HostApp{Pipeline: "web", CurrentRelease: release},
		}}}, {HostId: "unknown"}}}
	}
	h.apply(report(5, 7))
	h.apply(report(3, 1)) // stale: ignored
	got, err := h.r().Host("h1")
	if err != nil {
		t.Fatal(err)
	}
	if got.GetAckedSeq() != 5 || got.GetHost().GetApps()[0].GetCurrentRelease() != 7 {
		t.Fatalf("host = %v, want acked 5 and release 7", got)
	}
	d, _ := h.r().Deployment("d1")
	if len(d.GetHosts()) != 1 || d.GetHosts()[0].GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("deployment hosts = %v", d.GetHosts())
	}
}

func TestUndecodableEntryPanics(t *testing.T) {
	f := New(nil)
	defer func() {
		if recover() == nil {
			t.Fatal("garbage entry applied without panic; replicas could diverge")
		}
	}()
	f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{0xff, 0xff, 0xff}})
}

type sink struct {
	bytes.Buffer
	cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { s.cancelled = true; return nil }
func (s *sink) Close() error  { return nil }

func TestSnapshotRestoreRoundTripsAndWakesReaders(t *testing.T) {
	h := newHarness(t)
	h.apply(&raftv1.ApplyPipeline{Spec: spec("web", "")})
	h.apply(&raftv1.ApplyPipeline{Spec: spec("web", "v2")})
	h.apply(release("web", 1), requestID("r1"))
	h.apply(&raftv1.CreateToken{Token: &captainv1.Token{Id: "t1"}, SecretHash: []byte{1}})
	h.apply(&raftv1.RegisterHost{Host: &captainv1.Host{Id: "h1"}, SecretHash: []byte{2}})
	h.apply(&raftv1.SetMember{Member: &raftv1.ClusterMember{NodeId: "n1", ApiAddress: "a:1"}})
	h.apply(&raftv1.EngineUpdate{Audit: []*captainv1.AuditEvent{{Action: "x"}, {Action: "y"}}})

	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	saved := append([]byte(nil), s.Bytes()...)

	g := New(nil)
	old := g.State()
	waitErr := make(chan error, 1)
	go func() { waitErr <- old.Wait(t.Context(), 1000) }()
	if err := g.Restore(readCloser{bytes.NewReader(saved)}); err != nil {
		t.Fatal(err)
	}
	if err := <-waitErr; !errors.Is(err, state.ErrAbandoned) {
		t.Fatalf("reader blocked on the replaced store got %v, want ErrAbandoned", err)
	}
	var again bytes.Buffer
	if err := WriteSnapshot(&again, g.State().Snapshot()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(saved, again.Bytes()) {
		t.Fatalf("snapshot of the restored state differs (%d vs %d bytes)", len(saved), again.Len())
	}
	if g.State().Index() != h.index {
		t.Fatalf("restored index = %d, want %d", g.State().Index(), h.index)
	}
	// The restored state keeps numbering and idempotency.
	h2 := &harness{t: t, f: g, index: h.index}
	if res := h2.apply(release("web", 2), requestID("r1")); res.Value.(*captainv1.Release).GetNumber() != 1 || res.Created {
		t.Fatalf("retry after restore = %v", res)
	}
	if res := h2.apply(release("web", 3)); res.Value.(*captainv1.Release).GetNumber() != 2 {
		t.Fatalf("next release after restore = %v", res.Value)
	}
}

func TestRestoreRejectsWhatIsNotASnapshot(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":     nil,
		"garbage":   []byte("hello world, not protobuf at all"),
		"no header": mustDelim(t, &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Alarm{Alarm: &captainv1.Alarm{Name: "a"}}}),
		"format 2":  mustDelim(t, &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Header{Header: &raftv1.SnapshotHeader{Format: 2}}}),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ReadSnapshot(bytes.NewReader(data)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
