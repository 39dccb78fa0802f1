package api

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/history"
	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

type deploymentService struct{ s *Server }

func pipelineNamed(r *state.Reader, name string) (*captainv1.Pipeline, error) {
	if err := required("pipeline", name); err != nil {
		return nil, err
	}
	p, err := r.Pipeline(name, 0)
	if errors.Is(err, state.ErrNotFound) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("pipeline %q not found: `captain pipeline list` shows the pipelines", name))
	}
	return p, err
}

func (d *deploymentService) ListDeployments(ctx context.Context, req *connect.Request[captainv1.ListDeploymentsRequest]) (*connect.Response[captainv1.ListDeploymentsResponse], error) {
	return reader(d.s, (*captainv1.ListDeploymentsRequest).GetRead,
		func(_ context.Context, m *captainv1.ListDeploymentsRequest, r *state.Reader) (*captainv1.ListDeploymentsResponse, error) {
			p, err := pipelineNamed(r, m.GetPipeline())
			if err != nil {
				return nil, err
			}
			if err := required("environment", m.GetEnvironment()); err != nil {
				return nil, err
			}
			limit := int(m.GetLimit())
			if limit == 0 {
				limit = 20
			}
			deps, added, err := history.EnvironmentDeployments(r, p, m.GetEnvironment(), limit)
			if err != nil {
				return nil, historyErr(err)
			}
			return &captainv1.ListDeploymentsResponse{Deployments: deps, CommitsAdded: added, Index: r.Index()}, nil
		})(ctx, req)
}

func (d *deploymentService) GetDeployment(ctx context.Context, req *connect.Request[captainv1.GetDeploymentRequest]) (*connect.Response[captainv1.GetDeploymentResponse], error) {
	return reader(d.s, (*captainv1.GetDeploymentRequest).GetRead,
		func(_ context.Context, m *captainv1.GetDeploymentRequest, r *state.Reader) (*captainv1.GetDeploymentResponse, error) {
			if err := required("id", m.GetId()); err != nil {
				return nil, err
			}
			dep, err := r.Deployment(m.GetId())
			if errors.Is(err, state.ErrNotFound) {
				return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("deployment %q not found", m.GetId()))
			}
			if err != nil {
				return nil, err
			}
			return &captainv1.GetDeploymentResponse{Deployment: dep}, nil
		})(ctx, req)
}

func (d *deploymentService) WhereIsCommit(ctx context.Context, req *connect.Request[captainv1.WhereIsCommitRequest]) (*connect.Response[captainv1.WhereIsCommitResponse], error) {
	res, err := history.WhereIsCommit(d.s.readerOf(), req.Msg.GetCommit(), req.Msg.GetPipeline())
	if err != nil {
		return nil, historyErr(err)
	}
	return connect.NewResponse(res), nil
}

func (d *deploymentService) GetStatus(ctx context.Context, req *connect.Request[captainv1.GetStatusRequest]) (*connect.Response[captainv1.GetStatusResponse], error) {
	return reader(d.s, (*captainv1.GetStatusRequest).GetRead,
		func(_ context.Context, m *captainv1.GetStatusRequest, r *state.Reader) (*captainv1.GetStatusResponse, error) {
			p, err := pipelineNamed(r, m.GetPipeline())
			if err != nil {
				return nil, err
			}
			return history.Status(r, p, r.Index())
		})(ctx, req)
}

func historyErr(err error) error {
	switch {
	case errors.Is(err, history.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, history.ErrAmbiguous), errors.Is(err, history.ErrInvalid):
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	return toConnect(err)
}

// operatorService serves promotion blocks and approvals; Rollback and PreviewRollback come with
// the operator work and answer Unimplemented until then.
type operatorService struct {
	captainv1connect.UnimplementedOperatorServiceHandler
	s *Server
}

func stageNamed(r *state.Reader, pipeline, stage string) (*captainv1.Pipeline, error) {
	p, err := pipelineNamed(r, pipeline)
	if err != nil {
		return nil, err
	}
	if err := required("stage", stage); err != nil {
		return nil, err
	}
	for _, st := range p.GetSpec().GetStages() {
		if st.GetName() == stage {
			return p, nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("stage %q not found in pipeline %q", stage, pipeline))
}

func (o *operatorService) SetPromotions(ctx context.Context, req *connect.Request[captainv1.SetPromotionsRequest]) (*connect.Response[captainv1.SetPromotionsResponse], error) {
	m := req.Msg
	if !m.GetEnabled() && m.GetReason() == "" {
		return nil, invalid(errors.New("reason: required when disabling promotions, so others know why"))
	}
	dir := m.GetDirection()
	if dir == captainv1.PromotionDirection_PROMOTION_DIRECTION_UNSPECIFIED {
		dir = captainv1.PromotionDirection_PROMOTION_DIRECTION_BOTH
	}
	return onLeader(o.s, func(ctx context.Context, req *connect.Request[captainv1.SetPromotionsRequest]) (*connect.Response[captainv1.SetPromotionsResponse], error) {
		// Checked on the leader: a follower that lags would call a new stage unknown.
		if _, err := stageNamed(o.s.readerOf(), m.GetPipeline(), m.GetStage()); err != nil {
			return nil, err
		}
		cmd := o.s.command(ctx, "", m.GetReason())
		cmd.Body = &raftv1.Command_SetBlock{SetBlock: &raftv1.SetBlock{Pipeline: m.GetPipeline(), Stage: m.GetStage(), Direction: dir, Enabled: m.GetEnabled()}}
		res, err := o.s.apply(ctx, cmd)
		if err != nil {
			return nil, err
		}
		st, err := value[*captainv1.StageState](res)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.SetPromotionsResponse{Stage: st}), nil
	})(ctx, req)
}

func (o *operatorService) Approve(ctx context.Context, req *connect.Request[captainv1.ApproveRequest]) (*connect.Response[captainv1.ApproveResponse], error) {
	m := req.Msg
	if m.GetRelease() == 0 {
		return nil, invalid(errors.New("release: required, the release number the approval is for"))
	}
	return onLeader(o.s, func(ctx context.Context, req *connect.Request[captainv1.ApproveRequest]) (*connect.Response[captainv1.ApproveResponse], error) {
		if _, err := stageNamed(o.s.readerOf(), m.GetPipeline(), m.GetStage()); err != nil {
			return nil, err
		}
		cmd := o.s.command(ctx, "", m.GetComment())
		cmd.Body = &raftv1.Command_Approve{Approve: &raftv1.Approve{Pipeline: m.GetPipeline(), Stage: m.GetStage(), Release: m.GetRelease(), Comment: m.GetComment()}}
		res, err := o.s.apply(ctx, cmd)
		if err != nil {
			return nil, err
		}
		st, err := value[*captainv1.StageState](res)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.ApproveResponse{Stage: st}), nil
	})(ctx, req)
}
