package fsm

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// An engine decision made from a read that a host report overtook must not overwrite the report.
func TestEngineUpdateFromAStaleReadIsRefused(t *testing.T) {
	f := New(nil)
	at := timestamppb.Now()
	apply := func(index uint64, body any) *Result {
		cmd := &raftv1.Command{At: at, Actor: "test"}
		switch b := body.(type) {
		case *raftv1.EngineUpdate:
			cmd.Body = &raftv1.Command_EngineUpdate{EngineUpdate: b}
		case *raftv1.HostReports:
			cmd.Body = &raftv1.Command_HostReports{HostReports: b}
		case *raftv1.RegisterHost:
			cmd.Body = &raftv1.Command_RegisterHost{RegisterHost: b}
		}
		return f.ApplyCommand(index, cmd)
	}
	if r := apply(1, &raftv1.RegisterHost{Host: &captainv1.Host{Id: "h1"}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	dep := &captainv1.Deployment{Id: "d1", Pipeline: "web", Environment: "east", Hosts: []*captainv1.HostResult{{HostId: "h1", State: captainv1.HostDeployState_HOST_DEPLOY_STATE_ASSIGNED}}}
	if r := apply(2, &raftv1.EngineUpdate{Deployments: []*captainv1.Deployment{dep}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	read, _ := f.State().Snapshot().Deployment("d1") // the engine reads at index 2 ...
	if r := apply(3, &raftv1.HostReports{Reports: []*raftv1.HostReport{{HostId: "h1", Events: []*captainv1.HostEvent{{
		Seq: 1, DeploymentId: "d1", State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY,
	}}}}}); r.Err != nil { // ... a report lands at index 3 ...
		t.Fatal(r.Err)
	}
	stale := proto.CloneOf(read)
	stale.CurrentBatch = 2
	r := apply(4, &raftv1.EngineUpdate{Deployments: []*captainv1.Deployment{stale}}) // ... and the stale decision arrives.
	if !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("stale engine update: err = %v, want ErrConflict", r.Err)
	}
	got, _ := f.State().Snapshot().Deployment("d1")
	if got.GetHosts()[0].GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("the host's report was overwritten: %v", got.GetHosts()[0])
	}
	fresh := proto.CloneOf(got)
	fresh.CurrentBatch = 2
	if r := apply(5, &raftv1.EngineUpdate{Deployments: []*captainv1.Deployment{fresh}}); r.Err != nil {
		t.Fatalf("update from a fresh read: %v", r.Err)
	}
	if r := apply(6, &raftv1.EngineUpdate{Deployments: []*captainv1.Deployment{{Id: "d9", Index: 7}}}); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("a row read at an index but missing now must conflict, got %v", r.Err)
	}
}
