package api

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/coordinator/state"
	"github.com/captain-cd/captain/pipelinespec"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

type pipelineService struct{ s *Server }

// violationsError lists every violation in the message and attaches them as a
// ValidatePipelineResponse detail for clients that want them structured.
func violationsError(vs pipelinespec.Violations) error {
	lines := make([]string, len(vs))
	for i, v := range vs {
		lines[i] = v.String()
	}
	e := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid pipeline spec: %s", strings.Join(lines, "; ")))
	if d, err := connect.NewErrorDetail(&captainv1.ValidatePipelineResponse{Violations: vs.Proto()}); err == nil {
		e.AddDetail(d)
	}
	return e
}

func required(field, value string) error {
	if strings.TrimSpace(value) == "" {
		return invalid(fmt.Errorf("%s: required", field))
	}
	return nil
}

func (p *pipelineService) ApplyPipeline(ctx context.Context, req *connect.Request[captainv1.ApplyPipelineRequest]) (*connect.Response[captainv1.ApplyPipelineResponse], error) {
	spec := proto.CloneOf(req.Msg.GetSpec())
	if vs := pipelinespec.Validate(spec); len(vs) > 0 {
		return nil, violationsError(vs)
	}
	pipelinespec.Normalize(spec)
	return onLeader(p.s, func(ctx context.Context, req *connect.Request[captainv1.ApplyPipelineRequest]) (*connect.Response[captainv1.ApplyPipelineResponse], error) {
		cmd := p.s.command(ctx, req.Msg.GetRequestId(), req.Msg.GetReason())
		cmd.Body = &raftv1.Command_ApplyPipeline{ApplyPipeline: &raftv1.ApplyPipeline{Spec: spec}}
		res, err := p.s.apply(ctx, cmd)
		if err != nil {
			return nil, err
		}
		pl, err := value[*captainv1.Pipeline](res)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.ApplyPipelineResponse{Pipeline: pl, Changed: res.Created}), nil
	})(ctx, req)
}

func (p *pipelineService) ValidatePipeline(_ context.Context, req *connect.Request[captainv1.ValidatePipelineRequest]) (*connect.Response[captainv1.ValidatePipelineResponse], error) {
	return connect.NewResponse(&captainv1.ValidatePipelineResponse{Violations: pipelinespec.Validate(req.Msg.GetSpec()).Proto()}), nil
}

func (p *pipelineService) GetPipeline(ctx context.Context, req *connect.Request[captainv1.GetPipelineRequest]) (*connect.Response[captainv1.GetPipelineResponse], error) {
	return reader(p.s, (*captainv1.GetPipelineRequest).GetRead,
		func(_ context.Context, m *captainv1.GetPipelineRequest, r *state.Reader) (*captainv1.GetPipelineResponse, error) {
			if err := required("name", m.GetName()); err != nil {
				return nil, err
			}
			pl, err := r.Pipeline(m.GetName(), m.GetVersion())
			if err != nil {
				return nil, err
			}
			return &captainv1.GetPipelineResponse{Pipeline: pl}, nil
		})(ctx, req)
}

func (p *pipelineService) ListPipelines(ctx context.Context, req *connect.Request[captainv1.ListPipelinesRequest]) (*connect.Response[captainv1.ListPipelinesResponse], error) {
	return reader(p.s, (*captainv1.ListPipelinesRequest).GetRead,
		func(_ context.Context, _ *captainv1.ListPipelinesRequest, r *state.Reader) (*captainv1.ListPipelinesResponse, error) {
			ps, err := r.Pipelines()
			if err != nil {
				return nil, err
			}
			return &captainv1.ListPipelinesResponse{Pipelines: ps, Index: r.Index()}, nil
		})(ctx, req)
}

func (p *pipelineService) ListPipelineVersions(ctx context.Context, req *connect.Request[captainv1.ListPipelineVersionsRequest]) (*connect.Response[captainv1.ListPipelineVersionsResponse], error) {
	return reader(p.s, func(*captainv1.ListPipelineVersionsRequest) *captainv1.ReadOptions { return nil },
		func(_ context.Context, m *captainv1.ListPipelineVersionsRequest, r *state.Reader) (*captainv1.ListPipelineVersionsResponse, error) {
			if err := required("name", m.GetName()); err != nil {
				return nil, err
			}
			vs, err := r.PipelineVersions(m.GetName())
			if err != nil {
				return nil, err
			}
			return &captainv1.ListPipelineVersionsResponse{Versions: vs}, nil
		})(ctx, req)
}

// pipelineExists turns a missing pipeline into an error naming it.
func pipelineExists(r *state.Reader, name string) error {
	if _, err := r.Pipeline(name, 0); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return fmt.Errorf("pipeline %q does not exist (see `captain pipeline list`): %w", name, state.ErrNotFound)
		}
		return err
	}
	return nil
}
