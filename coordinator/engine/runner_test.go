package engine

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/pipelinespec"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// fsmApplier applies commands straight to a real FSM, numbering them like a Raft log would.
type fsmApplier struct {
	mu    sync.Mutex
	fsm   *fsm.FSM
	index uint64
}

func (a *fsmApplier) Apply(_ context.Context, m proto.Message) (any, uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.index++
	res := a.fsm.ApplyCommand(a.index, m.(*raftv1.Command))
	return res.Value, a.index, res.Err
}

func (a *fsmApplier) must(t *testing.T, cmd *raftv1.Command) {
	t.Helper()
	cmd.At = timestamppb.Now()
	if cmd.Actor == "" {
		cmd.Actor = "test"
	}
	if _, _, err := a.Apply(context.Background(), cmd); err != nil {
		t.Fatalf("apply %T: %v", cmd.GetBody(), err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunnerDrivesARealFSMThroughDeployTestAndPromotion(t *testing.T) {
	var testCalls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		testCalls.Add(1)
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()

	spec, vs, err := pipelinespec.ParseYAML([]byte(`
name: web
deploy: {app_root: /srv/web}
stages:
  - name: onebox
    environments: [{name: onebox, selector: {role: onebox}}]
    approval:
      tests: [{name: smoke, http: {url: "` + srv.URL + `"}}]
  - name: fleet
    environments: [{name: fleet, selector: {role: fleet}}]
`))
	if err != nil || len(vs) > 0 {
		t.Fatal(err, vs)
	}
	f := fsm.New(nil)
	ap := &fsmApplier{fsm: f}
	ap.must(t, &raftv1.Command{Body: &raftv1.Command_ApplyPipeline{ApplyPipeline: &raftv1.ApplyPipeline{Spec: spec}}})
	for id, role := range map[string]string{"h1": "onebox", "h2": "fleet"} {
		ap.must(t, &raftv1.Command{Body: &raftv1.Command_RegisterHost{RegisterHost: &raftv1.RegisterHost{
			Host: &captainv1.Host{Id: id, Labels: map[string]string{"role": role}, Liveness: captainv1.Liveness_LIVENESS_UP},
		}}})
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	r := &Runner{State: f, Applier: ap}
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	ap.must(t, &raftv1.Command{Body: &raftv1.Command_CreateRelease{CreateRelease: &raftv1.CreateRelease{
		Pipeline: "web", HeadCommit: "abc", Artifact: &captainv1.ArtifactRef{Sha256: "00"},
	}}})

	// Play the agents: report healthy whenever a host is assigned.
	seq := map[string]uint64{}
	reportAssigned := func() {
		rd := f.State().Snapshot()
		stages, _ := rd.Stages("web")
		for _, s := range stages {
			for _, e := range s.GetEnvironments() {
				d, err := rd.Deployment(e.GetDeploymentId())
				if err != nil {
					continue
				}
				for _, hr := range d.GetHosts() {
					if hr.GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_ASSIGNED {
						continue
					}
					seq[hr.GetHostId()]++
					ap.must(t, &raftv1.Command{Actor: "host:" + hr.GetHostId(), Body: &raftv1.Command_HostReports{HostReports: &raftv1.HostReports{Reports: []*raftv1.HostReport{{
						HostId: hr.GetHostId(),
						Events: []*captainv1.HostEvent{{
							Seq: seq[hr.GetHostId()], Pipeline: "web", DeploymentId: d.GetId(), Release: d.GetRelease(),
							State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY,
							App:   &captainv1.HostApp{Pipeline: "web", CurrentRelease: d.GetRelease(), Health: captainv1.HealthState_HEALTH_STATE_HEALTHY},
						}},
					}}}}})
				}
			}
		}
	}
	waitFor(t, "release 1 approved in fleet", func() bool {
		reportAssigned()
		s, err := f.State().Snapshot().Stage("web", "fleet")
		return err == nil && s.GetRelease() == 1 && s.GetEnvironments()[0].GetLastGoodRelease() == 1
	})
	if n := testCalls.Load(); n != 1 {
		t.Fatalf("smoke test ran %d times, want once", n)
	}
	ob, _ := f.State().Snapshot().Stage("web", "onebox")
	if a := findApproval(ob, "test:smoke"); a == nil || a.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED || len(a.GetOutputs()) != 1 {
		t.Fatalf("smoke approval = %v", a)
	}
}

func TestRunHTTPTestRetriesThenReportsTheLastAttempt(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) < 3 {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready"))
	}))
	defer srv.Close()
	mk := func(retries uint32) *captainv1.TestStep {
		return &captainv1.TestStep{Name: "smoke", Retries: retries, Test: &captainv1.TestStep_Http{Http: &captainv1.HttpTest{Url: srv.URL, ExpectedStatus: 200}}}
	}
	if out := RunHTTPTest(context.Background(), nil, mk(0)); out.GetPassed() || out.GetExitCode() != 503 {
		t.Fatalf("first attempt = %v, want a failure with status 503", out)
	}
	calls.Store(0)
	out := RunHTTPTest(context.Background(), nil, mk(2))
	if !out.GetPassed() || calls.Load() != 3 {
		t.Fatalf("with 2 retries: passed=%v after %d calls, output %q", out.GetPassed(), calls.Load(), out.GetOutput())
	}
}
