package engine

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// sim is the replicated state as the FSM would keep it, a fake clock, and scripted agents.
// It applies each Update the way the FSM does (rows replaced as given) and plays the agents'
// reports (a host assigned a release reports healthy, or failed when the script says so).
type sim struct {
	t        *testing.T
	planner  Planner
	now      time.Time
	view     View
	ids      int
	bad      map[uint64]bool // releases whose health checks fail on every host
	badHosts map[string]map[uint64]bool
	silent   map[string]bool // hosts that never report
	applied  []*Update
	assigned map[string]int // deployment/host → times the host was assigned (never twice)
}

func newSim(t *testing.T, yaml string, hosts map[string]string) *sim {
	t.Helper()
	spec, vs, err := pipelinespec.ParseYAML([]byte(yaml))
	if err != nil || len(vs) > 0 {
		t.Fatalf("spec: %v %v", err, vs)
	}
	s := &sim{
		t: t, now: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC),
		view: View{
			Pipeline: &captainv1.Pipeline{Spec: spec, Version: 1},
			Stages:   map[string]*captainv1.StageState{}, Deployments: map[string]*captainv1.Deployment{},
			Alarms: map[string]*captainv1.Alarm{},
		},
		bad: map[uint64]bool{}, badHosts: map[string]map[uint64]bool{}, silent: map[string]bool{}, assigned: map[string]int{},
	}
	s.planner = Planner{NewID: func() string { s.ids++; return fmt.Sprintf("d%03d", s.ids) }}
	ids := make([]string, 0, len(hosts))
	for id := range hosts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		labels := map[string]string{}
		for _, kv := range strings.Split(hosts[id], ",") {
			k, v, _ := strings.Cut(kv, "=")
			labels[k] = v
		}
		s.view.Hosts = append(s.view.Hosts, &captainv1.Host{Id: id, Labels: labels, Liveness: captainv1.Liveness_LIVENESS_UP})
	}
	return s
}

func (s *sim) host(id string) *captainv1.Host {
	for _, h := range s.view.Hosts {
		if h.GetId() == id {
			return h
		}
	}
	s.t.Fatalf("no host %s", id)
	return nil
}

// createRelease is what CreateRelease does in the FSM.
func (s *sim) createRelease() uint64 {
	s.view.Latest++
	return s.view.Latest
}

// plan runs the planner once and applies its update like the FSM.
func (s *sim) plan() *Update {
	u := s.planner.Plan(s.view, s.now)
	for _, st := range u.Stages {
		s.view.Stages[st.GetStage()] = proto.CloneOf(st)
	}
	for _, d := range u.Deployments {
		s.view.Deployments[d.GetId()] = proto.CloneOf(d)
	}
	if !u.Empty() {
		s.applied = append(s.applied, u)
	}
	return u
}

// report plays one round of agent reports for hosts assigned a release.
func (s *sim) report() bool {
	changed := false
	for _, d := range s.view.Deployments {
		for _, hr := range d.GetHosts() {
			if hr.GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_ASSIGNED || s.silent[hr.GetHostId()] {
				continue
			}
			key := d.GetId() + "/" + hr.GetHostId()
			s.assigned[key]++
			if s.assigned[key] > 1 {
				s.t.Fatalf("host %s assigned twice in deployment %s", hr.GetHostId(), d.GetId())
			}
			h := s.host(hr.GetHostId())
			app := hostApp(h, d.GetPipeline())
			if app == nil {
				app = &captainv1.HostApp{Pipeline: d.GetPipeline()}
				h.Apps = append(h.Apps, app)
			}
			app.CurrentRelease, app.CurrentDeploymentId = d.GetRelease(), d.GetId()
			if s.bad[d.GetRelease()] || s.badHosts[h.GetId()][d.GetRelease()] {
				hr.State, hr.Message = captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, "health check http: status 500"
				app.Health = captainv1.HealthState_HEALTH_STATE_UNHEALTHY
			} else {
				hr.State = captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY
				app.Health = captainv1.HealthState_HEALTH_STATE_HEALTHY
			}
			hr.FinishedAt = timestamppb.New(s.now)
			changed = true
		}
	}
	return changed
}

// settle plans and reports until nothing moves at the current time.
func (s *sim) settle() {
	s.t.Helper()
	for i := 0; i < 200; i++ {
		u := s.plan()
		if !s.report() && u.Empty() {
			if again := s.planner.Plan(s.view, s.now); !again.Empty() {
				s.t.Fatalf("Plan does not converge: %d stages, %d deployments changed again", len(again.Stages), len(again.Deployments))
			}
			return
		}
	}
	s.t.Fatal("no steady state after 200 rounds")
}

// advance moves the clock and settles.
func (s *sim) advance(d time.Duration) {
	s.t.Helper()
	s.now = s.now.Add(d)
	s.settle()
}

func (s *sim) stage(name string) *captainv1.StageState {
	st := s.view.Stages[name]
	if st == nil {
		s.t.Fatalf("no stage %s", name)
	}
	return st
}

func (s *sim) env(stage, env string) *captainv1.EnvironmentState {
	return envState(s.stage(stage), env)
}

// runs reports the release the host runs.
func (s *sim) runs(host string) uint64 {
	return hostApp(s.host(host), s.view.Pipeline.GetSpec().GetName()).GetCurrentRelease()
}

// releasesSeen lists every release a stage ever deployed, from the deployments.
func (s *sim) releasesSeen(stage string) []uint64 {
	var out []uint64
	for _, d := range s.view.Deployments {
		if d.GetStage() == stage && d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY && !slices.Contains(out, d.GetRelease()) {
			out = append(out, d.GetRelease())
		}
	}
	slices.Sort(out)
	return out
}

func (s *sim) audited(action string, release uint64) bool {
	for _, u := range s.applied {
		for _, a := range u.Audit {
			if a.GetAction() == action && a.GetDetails()["release"] == fmt.Sprint(release) {
				return true
			}
		}
	}
	return false
}

func (s *sim) wantPhase(stage string, want captainv1.StagePhase) {
	s.t.Helper()
	if got := s.stage(stage).GetPhase(); got != want {
		s.t.Fatalf("stage %s phase = %s, want %s (failure %q)", stage, got, want, s.stage(stage).GetFailure())
	}
}
