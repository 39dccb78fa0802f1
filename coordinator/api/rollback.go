package api

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/coordinator/engine"
	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func (o *operatorService) PreviewRollback(ctx context.Context, req *connect.Request[captainv1.PreviewRollbackRequest]) (*connect.Response[captainv1.PreviewRollbackResponse], error) {
	rd := o.s.readerOf()
	plan, _, err := o.planRollback(rd, req.Msg.GetTarget(), actor(ctx), "", true)
	if err != nil {
		return nil, err
	}
	unavailable := o.describe(ctx, rd, req.Msg.GetTarget().GetPipeline(), plan)
	return connect.NewResponse(&captainv1.PreviewRollbackResponse{Plan: plan, FileChangesUnavailable: unavailable}), nil
}

// Rollback plans on the leader only: a follower that lags could refuse a rollback the leader
// would start (a stage it does not know yet) or plan from an old last good release.
func (o *operatorService) Rollback(ctx context.Context, req *connect.Request[captainv1.RollbackRequest]) (*connect.Response[captainv1.RollbackResponse], error) {
	return onLeader(o.s, o.rollback)(ctx, req)
}

func (o *operatorService) rollback(ctx context.Context, req *connect.Request[captainv1.RollbackRequest]) (*connect.Response[captainv1.RollbackResponse], error) {
	m := req.Msg
	if id := m.GetRequestId(); id != "" {
		if res, err := o.rollbackDone(o.s.readerOf(), id); res != nil || err != nil {
			return res, err
		}
	}
	// The plan is made from a read of the state; if an agent's report lands before it is
	// written, the FSM refuses it as stale and we plan again.
	for attempt := 0; ; attempt++ {
		rd := o.s.readerOf()
		plan, u, err := o.planRollback(rd, m.GetTarget(), actor(ctx), m.GetReason(), false)
		if err != nil {
			return nil, err
		}
		var started []*captainv1.Deployment
		for _, d := range u.Deployments {
			if d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK && d.GetIndex() == 0 {
				started = append(started, d)
			}
		}
		cmd := o.s.command(ctx, m.GetRequestId(), m.GetReason())
		cmd.Body = &raftv1.Command_StartRollback{StartRollback: &raftv1.StartRollback{Stages: u.Stages, Deployments: u.Deployments, Plan: plan}}
		_, err = o.s.apply(ctx, cmd)
		if errors.Is(err, fsm.ErrConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			return nil, err
		}
		// File changes go into the answer only, after the write: a manifest diff can be large
		// and the Raft command must stay small.
		res := &captainv1.RollbackResponse{Deployments: started}
		for _, er := range plan {
			res.Plan = append(res.Plan, proto.CloneOf(er))
		}
		res.FileChangesUnavailable = o.describe(ctx, rd, m.GetTarget().GetPipeline(), res.Plan)
		return connect.NewResponse(res), nil
	}
}

// rollbackDone answers a retried rollback request from the state it left.
func (o *operatorService) rollbackDone(rd *state.Reader, requestID string) (*connect.Response[captainv1.RollbackResponse], error) {
	rec, err := rd.Request(requestID)
	if errors.Is(err, state.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	res := &captainv1.RollbackResponse{}
	if ids, ok := strings.CutPrefix(rec.GetResult(), fsm.RollbackResultPrefix); ok && ids != "" {
		for _, id := range strings.Split(ids, ",") {
			if d, err := rd.Deployment(id); err == nil {
				res.Deployments = append(res.Deployments, d)
			}
		}
	}
	return connect.NewResponse(res), nil
}

// planRollback runs the engine's rollback planner on one read of the state.
func (o *operatorService) planRollback(rd *state.Reader, t *captainv1.RollbackTarget, who, reason string, preview bool) ([]*captainv1.EnvironmentRollback, *engine.Update, error) {
	p, err := pipelineNamed(rd, t.GetPipeline())
	if err != nil {
		return nil, nil, err
	}
	v, err := engine.ViewOf(rd, p)
	if err != nil {
		return nil, nil, err
	}
	ran := engine.RanTo{}
	for _, st := range p.GetSpec().GetStages() {
		for _, env := range st.GetEnvironments() {
			deps, err := rd.Deployments(p.GetSpec().GetName(), env.GetName())
			if err != nil {
				return nil, nil, err
			}
			for _, d := range deps {
				if d.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED && !slices.Contains(ran[env.GetName()], d.GetRelease()) {
					ran[env.GetName()] = append(ran[env.GetName()], d.GetRelease())
				}
			}
			slices.Sort(ran[env.GetName()])
		}
	}
	planner := engine.Planner{NewID: engine.NewDeploymentID}
	plan, u, err := planner.PlanRollback(v, ran, t, o.s.now(), who, reason, preview)
	switch {
	case errors.Is(err, engine.ErrUnknownTarget):
		return nil, nil, connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, engine.ErrBadTarget):
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, err)
	case err != nil:
		return nil, nil, fmt.Errorf("plan rollback: %w", err)
	}
	return plan, u, nil
}

// describe fills what the engine's plan leaves out: per environment the commits that go away
// (from the release records) and the file changes from the running release to the target (from
// the artifact manifests). It never fails the rollback: it returns why file changes are missing.
func (o *operatorService) describe(ctx context.Context, rd *state.Reader, pipeline string, plan []*captainv1.EnvironmentRollback) string {
	type pair struct{ from, to uint64 }
	type found struct {
		commits []*captainv1.Commit
		files   []*captainv1.FileChange
	}
	done := map[pair]found{}
	unavailable := ""
	for _, er := range plan {
		if er.GetFromRelease() == 0 || er.GetAlreadyThere() {
			continue // nothing deployed there yet, or nothing changes
		}
		k := pair{er.GetFromRelease(), er.GetToRelease()}
		f, ok := done[k]
		if !ok {
			var arts []*captainv1.ArtifactRef
			for _, n := range []uint64{k.from, k.to} {
				rel, err := rd.Release(pipeline, n)
				if err != nil {
					return fmt.Sprintf("release %d of pipeline %s: %v", n, pipeline, err)
				}
				arts = append(arts, rel.GetArtifact())
			}
			if k.to < k.from {
				rels, err := rd.Releases(pipeline, k.from+1, int(k.from-k.to))
				if err != nil {
					return fmt.Sprintf("releases %d to %d of pipeline %s: %v", k.to, k.from, pipeline, err)
				}
				for _, rel := range rels {
					if rel.GetNumber() > k.to {
						f.commits = append(f.commits, rel.GetCommits()...)
					}
				}
			}
			if unavailable == "" {
				var err error
				if f.files, err = o.s.manifests.FileChanges(ctx, arts[0], arts[1]); err != nil {
					o.s.logger.Debug("rollback plan without file changes", "pipeline", pipeline, "err", err)
					unavailable = err.Error()
				}
			}
			done[k] = f
		}
		er.CommitsRemoved, er.FileChanges = f.commits, f.files
	}
	return unavailable
}
