package engine

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/captain-cd/captain/coordinator/state"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// desiredReader is the part of the state the desired-state computation reads.
type desiredReader interface {
	Pipelines() ([]*captainv1.Pipeline, error)
	Pipeline(name string, version uint64) (*captainv1.Pipeline, error)
	Release(pipeline string, number uint64) (*captainv1.Release, error)
	Deployments(pipeline, environment string) ([]*captainv1.Deployment, error)
	Stages(pipeline string) ([]*captainv1.StageState, error)
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
		return app, nil
	}
	return nil, nil
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
