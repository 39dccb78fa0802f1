package api

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/engine"
	"github.com/captain-cd/captain/coordinator/liveness"
	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

type auditService struct{ s *Server }

func (a *auditService) ListAuditEvents(ctx context.Context, req *connect.Request[captainv1.ListAuditEventsRequest]) (*connect.Response[captainv1.ListAuditEventsResponse], error) {
	return reader(a.s, func(*captainv1.ListAuditEventsRequest) *captainv1.ReadOptions { return nil },
		func(_ context.Context, m *captainv1.ListAuditEventsRequest, r *state.Reader) (*captainv1.ListAuditEventsResponse, error) {
			f := state.AuditFilter{Actor: m.GetActor(), Pipeline: m.GetPipeline(), Limit: int(m.GetLimit())}
			if m.GetSince() != nil {
				f.Since = m.GetSince().AsTime()
			}
			if f.Limit == 0 {
				f.Limit = 100
			}
			evs, err := r.AuditEvents(f)
			if err != nil {
				return nil, err
			}
			return &captainv1.ListAuditEventsResponse{Events: evs}, nil
		})(ctx, req)
}

type alarmService struct{ s *Server }

func (a *alarmService) SetAlarmState(ctx context.Context, req *connect.Request[captainv1.SetAlarmStateRequest]) (*connect.Response[captainv1.SetAlarmStateResponse], error) {
	m := req.Msg
	if err := required("name", m.GetName()); err != nil {
		return nil, err
	}
	if _, ok := captainv1.AlarmState_name[int32(m.GetState())]; !ok || m.GetState() == captainv1.AlarmState_ALARM_STATE_UNSPECIFIED {
		return nil, invalid(errors.New("state: required; one of ok, alarm, insufficient_data"))
	}
	return onLeader(a.s, func(ctx context.Context, req *connect.Request[captainv1.SetAlarmStateRequest]) (*connect.Response[captainv1.SetAlarmStateResponse], error) {
		cmd := a.s.command(ctx, "", m.GetReason())
		cmd.Body = &raftv1.Command_SetAlarmState{SetAlarmState: &raftv1.SetAlarmState{
			Name: m.GetName(), State: m.GetState(), Reason: m.GetReason(), Source: "api:" + actor(ctx),
		}}
		res, err := a.s.apply(ctx, cmd)
		if err != nil {
			return nil, err
		}
		al, err := value[*captainv1.Alarm](res)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.SetAlarmStateResponse{Alarm: al}), nil
	})(ctx, req)
}

func (a *alarmService) ListAlarms(ctx context.Context, req *connect.Request[captainv1.ListAlarmsRequest]) (*connect.Response[captainv1.ListAlarmsResponse], error) {
	return reader(a.s, (*captainv1.ListAlarmsRequest).GetRead,
		func(_ context.Context, _ *captainv1.ListAlarmsRequest, r *state.Reader) (*captainv1.ListAlarmsResponse, error) {
			als, err := r.Alarms()
			if err != nil {
				return nil, err
			}
			return &captainv1.ListAlarmsResponse{Alarms: als, Index: r.Index()}, nil
		})(ctx, req)
}

type hostService struct{ s *Server }

func (h *hostService) ListHosts(ctx context.Context, req *connect.Request[captainv1.ListHostsRequest]) (*connect.Response[captainv1.ListHostsResponse], error) {
	return reader(h.s, (*captainv1.ListHostsRequest).GetRead,
		func(_ context.Context, m *captainv1.ListHostsRequest, r *state.Reader) (*captainv1.ListHostsResponse, error) {
			if m.GetEnvironment() != "" && m.GetPipeline() == "" {
				return nil, invalid(errors.New("environment: needs pipeline"))
			}
			var selectors []map[string]string
			if m.GetPipeline() != "" {
				p, err := r.Pipeline(m.GetPipeline(), 0)
				if err != nil {
					return nil, err
				}
				for _, st := range p.GetSpec().GetStages() {
					for _, env := range st.GetEnvironments() {
						if m.GetEnvironment() == "" || env.GetName() == m.GetEnvironment() {
							selectors = append(selectors, env.GetSelector())
						}
					}
				}
				if len(selectors) == 0 {
					return nil, fmt.Errorf("environment %q of pipeline %q: %w", m.GetEnvironment(), m.GetPipeline(), state.ErrNotFound)
				}
			}
			hosts, err := r.Hosts()
			if err != nil {
				return nil, err
			}
			pipelines, err := r.Pipelines()
			if err != nil {
				return nil, err
			}
			out := &captainv1.ListHostsResponse{Index: r.Index()}
			t := h.s.tracker()
			for _, sh := range hosts {
				if selectors == nil || matchesAny(sh.GetHost().GetLabels(), selectors) {
					out.Hosts = append(out.Hosts, withConflicts(withHeartbeat(sh.GetHost(), t), pipelines))
				}
			}
			return out, nil
		})(ctx, req)
}

func matchesAny(labels map[string]string, selectors []map[string]string) bool {
	for _, sel := range selectors {
		ok := len(sel) > 0
		for k, v := range sel {
			ok = ok && labels[k] == v
		}
		if ok {
			return true
		}
	}
	return false
}

func (h *hostService) GetHost(ctx context.Context, req *connect.Request[captainv1.GetHostRequest]) (*connect.Response[captainv1.GetHostResponse], error) {
	return reader(h.s, (*captainv1.GetHostRequest).GetRead,
		func(_ context.Context, m *captainv1.GetHostRequest, r *state.Reader) (*captainv1.GetHostResponse, error) {
			if err := required("id", m.GetId()); err != nil {
				return nil, err
			}
			sh, err := r.Host(m.GetId())
			if err != nil {
				return nil, err
			}
			pipelines, err := r.Pipelines()
			if err != nil {
				return nil, err
			}
			return &captainv1.GetHostResponse{Host: withConflicts(withHeartbeat(sh.GetHost(), h.s.tracker()), pipelines)}, nil
		})(ctx, req)
}

// withConflicts flags every pipeline in which the host's labels match more than one
// environment: the engine leaves such a host alone, and the operator must see why.
func withConflicts(host *captainv1.Host, pipelines []*captainv1.Pipeline) *captainv1.Host {
	var out *captainv1.Host
	for _, p := range pipelines {
		envs := engine.Matches(p.GetSpec(), host)
		if len(envs) < 2 {
			continue
		}
		if out == nil {
			out = proto.CloneOf(host) // rows in state are shared and immutable
		}
		name := p.GetSpec().GetName()
		var app *captainv1.HostApp
		for _, a := range out.GetApps() {
			if a.GetPipeline() == name {
				app = a
			}
		}
		if app == nil {
			app = &captainv1.HostApp{Pipeline: name}
			out.Apps = append(out.Apps, app)
		}
		app.Environment, app.ConflictingEnvironments = "", envs
	}
	if out == nil {
		return host
	}
	return out
}

// withHeartbeat adds the last heartbeat the leader's tracker knows of. Heartbeats never go
// through Raft, so only the leader can answer (clients ask with read.consistent); on a follower t
// is nil and the field stays empty. The host is copied: rows in state are shared and immutable.
func withHeartbeat(host *captainv1.Host, t *liveness.Tracker) *captainv1.Host {
	if t == nil {
		return host
	}
	last := t.LastHeartbeat(host.GetId())
	if last.IsZero() {
		return host
	}
	out := proto.CloneOf(host)
	out.LastHeartbeatAt = timestamppb.New(last)
	return out
}
