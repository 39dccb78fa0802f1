package engine

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// desiredReader is the part of the state the desired-state computation reads.
type desiredReader interface {
	Pipelines() ([]*captainv1.Pipeline, error)
	Pipeline(name string, version uint64) (*captainv1.Pipeline, error)
	Release(pipeline string, number uint64) (*captainv1.Release, error)
	Deployments(pipeline, environment string) ([]*captainv1.Deployment, error)
	Stages(pipeline string) ([]*captainv1.StageState, error)
	Hosts() ([]*raftv1.StoredHost, error)
}

// Desired computes what the host should run, per pipeline: the release of the newest deployment
// in its environment that assigned the host. A host waiting for its batch keeps what it has; a
// host in two environments of one pipeline gets nothing for that pipeline.
func Desired(r desiredReader, host *captainv1.Host) ([]*captainv1.DesiredApp, error) {
	pipelines, err := r.Pipelines()
	if err != nil {
		return nil, err
	}
	var out []*captainv1.DesiredApp
	for _, p := range pipelines {
		envs := Matches(p.GetSpec(), host)
		if len(envs) != 1 {
			continue
		}
		app, err := desiredIn(r, p, envs[0], host.GetId())
		if err != nil {
			return nil, fmt.Errorf("pipeline %s: %w", p.GetSpec().GetName(), err)
		}
		if app != nil {
			out = append(out, app)
		}
	}
	return out, nil
}

func desiredIn(r desiredReader, p *captainv1.Pipeline, env, hostID string) (*captainv1.DesiredApp, error) {
	name := p.GetSpec().GetName()
	deps, err := r.Deployments(name, env)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(deps, func(a, b *captainv1.Deployment) int {
		if c := b.GetCreatedAt().AsTime().Compare(a.GetCreatedAt().AsTime()); c != 0 {
			return c
		}
		return cmp.Compare(b.GetId(), a.GetId())
	})
	for _, d := range deps {
		if !assigned(d, hostID) {
			continue
		}
		rel, err := r.Release(name, d.GetRelease())
		if err != nil {
			return nil, fmt.Errorf("release %d of deployment %s: %w", d.GetRelease(), d.GetId(), err)
		}
		// Deploy settings come from the spec version the release was created under, so a spec
		// change never alters how an older release is installed or rolled back to.
		spec := p
		if v := rel.GetPipelineVersion(); v != 0 && v != p.GetVersion() {
			if old, err := r.Pipeline(name, v); err == nil {
				spec = old
			} else if !errors.Is(err, state.ErrNotFound) {
				return nil, err
			}
		}
		app := &captainv1.DesiredApp{
			Pipeline: name, Environment: env, Release: d.GetRelease(), DeploymentId: d.GetId(),
			Artifact: rel.GetArtifact(), Deploy: spec.GetSpec().GetDeploy(),
		}
		if lg := lastGood(r, name, env); lg != 0 && lg != d.GetRelease() {
			app.KeepReleases = []uint64{lg}
		}
		tests, err := commandTests(r, p, env, hostID)
		if err != nil {
			return nil, err
		}
		app.Tests = tests
		return app, nil
	}
	return nil, nil
}

// TestID names one command test run: the stage, the release it verifies and the test.
func TestID(pipeline, stage string, release uint64, test string) string {
	return fmt.Sprintf("%s/%s/%d/%s", pipeline, stage, release, test)
}

// ParseTestID splits a TestID.
func ParseTestID(id string) (pipeline, stage string, release uint64, test string, ok bool) {
	parts := strings.SplitN(id, "/", 4)
	if len(parts) != 4 {
		return "", "", 0, "", false
	}
	n, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		return "", "", 0, "", false
	}
	return parts[0], parts[1], n, parts[3], true
}

// commandTests lists the command tests the host should run: those of its stage's verifying
// release that are still pending and for which it is the chosen host (the first healthy host of
// the stage, by ID, whose labels match the test's host_selector).
func commandTests(r desiredReader, p *captainv1.Pipeline, env, hostID string) ([]*captainv1.CommandTestRun, error) {
	name := p.GetSpec().GetName()
	var st *captainv1.Stage
	for _, s := range p.GetSpec().GetStages() {
		if slices.ContainsFunc(s.GetEnvironments(), func(e *captainv1.Environment) bool { return e.GetName() == env }) {
			st = s
		}
	}
	var cmdTests []*captainv1.TestStep
	for _, t := range st.GetApproval().GetTests() {
		if t.GetCommand() != nil {
			cmdTests = append(cmdTests, t)
		}
	}
	if len(cmdTests) == 0 {
		return nil, nil
	}
	stages, err := r.Stages(name)
	if err != nil {
		return nil, err
	}
	var row *captainv1.StageState
	for _, s := range stages {
		if s.GetStage() == st.GetName() {
			row = s
		}
	}
	if row.GetPhase() != captainv1.StagePhase_STAGE_PHASE_VERIFYING {
		return nil, nil
	}
	stored, err := r.Hosts()
	if err != nil {
		return nil, err
	}
	hosts := make([]*captainv1.Host, 0, len(stored))
	for _, h := range stored {
		hosts = append(hosts, h.GetHost())
	}
	members, _ := Membership(p.GetSpec(), hosts)
	var out []*captainv1.CommandTestRun
	for _, t := range cmdTests {
		a := findApproval(row, testPrefix+t.GetName())
		if a == nil || a.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING {
			continue
		}
		chosen := ""
		for _, e := range st.GetEnvironments() {
			for _, h := range members[e.GetName()] {
				app := hostApp(h, name)
				if h.GetLiveness() == captainv1.Liveness_LIVENESS_DOWN || app.GetCurrentRelease() != row.GetRelease() ||
					app.GetHealth() != captainv1.HealthState_HEALTH_STATE_HEALTHY || !selects(t.GetCommand().GetHostSelector(), h.GetLabels()) {
					continue
				}
				if chosen == "" || h.GetId() < chosen {
					chosen = h.GetId()
				}
			}
		}
		if chosen == hostID {
			out = append(out, &captainv1.CommandTestRun{
				Id: TestID(name, st.GetName(), row.GetRelease(), t.GetName()), Name: t.GetName(),
				Command: t.GetCommand().GetCommand(), Timeout: t.GetTimeout(),
			})
		}
	}
	return out, nil
}

// assigned reports whether the deployment ever told the host to deploy.
func assigned(d *captainv1.Deployment, hostID string) bool {
	for _, hr := range d.GetHosts() {
		if hr.GetHostId() != hostID {
			continue
		}
		switch hr.GetState() {
		case captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING, captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED, captainv1.HostDeployState_HOST_DEPLOY_STATE_UNSPECIFIED:
			return false
		}
		return true
	}
	return false
}

func lastGood(r desiredReader, pipeline, env string) uint64 {
	stages, err := r.Stages(pipeline)
	if err != nil {
		return 0
	}
	for _, s := range stages {
		for _, e := range s.GetEnvironments() {
			if e.GetEnvironment() == env {
				return e.GetLastGoodRelease()
			}
		}
	}
	return 0
}
