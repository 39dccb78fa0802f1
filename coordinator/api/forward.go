package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/raftnode"
	"github.com/captain-cd/captain/coordinator/state"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// forwardedHeader marks a request a follower forwarded; it is never forwarded again, so two
// nodes that disagree about the leader cannot bounce a request between them.
const forwardedHeader = "Captain-Forwarded"

// LeaderHeader, on an answer a follower forwarded, names the leader's API base URL, so a
// client that sends many leader-only calls (an agent's heartbeats) can send them there and
// spare the follower a hop.
const LeaderHeader = "Captain-Leader"

type handlerFunc[Req, Res any] func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error)

// onLeader runs fn on the leader: here when this node leads, else by forwarding the same
// RPC to the leader's API. It waits up to ElectionWait for a leader to appear.
func onLeader[Req, Res any](s *Server, fn handlerFunc[Req, Res]) handlerFunc[Req, Res] {
	return func(ctx context.Context, req *connect.Request[Req]) (*connect.Response[Res], error) {
		forwarded := req.Header().Get(forwardedHeader) != ""
		deadline := time.Now().Add(s.electionWait)
		var lastErr error
		for {
			if s.node.IsLeader() {
				// fn checks the state before it writes (a pipeline exists, a stage is named):
				// a leader elected a moment ago must have applied its predecessors' entries
				// first, or it would call a pipeline created just before the election unknown.
				err := s.node.CaughtUp(ctx)
				var res *connect.Response[Res]
				if err == nil {
					res, err = fn(ctx, req)
				}
				// ErrNotLeader means the entry was never appended: safe to try again.
				if err == nil || !errors.Is(err, raftnode.ErrNotLeader) || forwarded || time.Now().After(deadline) {
					return res, toConnect(err)
				}
				lastErr = err
			} else if forwarded {
				return nil, toConnect(fmt.Errorf("%w: node %s received a forwarded request but does not lead", raftnode.ErrNotLeader, s.node.ID()))
			} else if base, err := s.leaderAPI(); err != nil {
				lastErr = err
			} else {
				res, err := forward[Req, Res](ctx, s, base, req)
				if err == nil {
					res.Header().Set(LeaderHeader, base)
				}
				if err == nil || !retryable(err) {
					return res, err
				}
				lastErr = err
			}
			if time.Now().After(deadline) {
				return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf(
					"no leader: none reachable within %s (last: %v); check that a majority of coordinators is up with `captain cluster peers`",
					s.electionWait, lastErr))
			}
			select {
			case <-ctx.Done():
				return nil, toConnect(ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// retryable reports whether a forwarded call certainly did nothing: the leader refused it
// as not-leader, or the connection to it could not be opened.
func retryable(err error) bool {
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Meta().Get(notLeaderMeta) != "" {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// leaderAPI returns the base URL of the leader's API.
func (s *Server) leaderAPI() (string, error) {
	id, _ := s.node.Leader()
	if id == "" {
		return "", raftnode.ErrNoLeader
	}
	m, err := s.fsm.State().Snapshot().Member(id)
	if err != nil {
		return "", fmt.Errorf("leader %s has no API address recorded yet: %w", id, err)
	}
	return s.baseURL(m.GetApiAddress()), nil
}

func (s *Server) baseURL(addr string) string {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimRight(addr, "/")
	}
	return s.scheme + "://" + addr
}

func forward[Req, Res any](ctx context.Context, s *Server, base string, req *connect.Request[Req]) (*connect.Response[Res], error) {
	client := connect.NewClient[Req, Res](s.httpClient, base+req.Spec().Procedure)
	out := connect.NewRequest(req.Msg)
	out.Header().Set("Authorization", req.Header().Get("Authorization"))
	out.Header().Set(forwardedHeader, s.node.ID())
	return client.CallUnary(ctx, out)
}

// reader serves a read: from local state by default; after a leader check when consistent
// (forwarded when this node does not lead); after waiting for min_index when blocking.
func reader[Req, Res any](s *Server, opts func(*Req) *captainv1.ReadOptions,
	fn func(context.Context, *Req, *state.Reader) (*Res, error)) handlerFunc[Req, Res] {
	local := func(ctx context.Context, req *connect.Request[Req]) (*connect.Response[Res], error) {
		o := opts(req.Msg)
		// Not "&& IsLeader()": a node that lost leadership since onLeader checked must refuse
		// (ErrNotLeader, so the caller retries on the new leader), not answer from local state.
		if o.GetConsistent() {
			if err := s.node.ConsistentRead(ctx); err != nil {
				return nil, err
			}
		}
		if o.GetMinIndex() > 0 {
			if err := s.waitIndex(ctx, o); err != nil {
				return nil, err
			}
		}
		res, err := fn(ctx, req.Msg, s.fsm.State().Snapshot())
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(res), nil
	}
	viaLeader := onLeader(s, local)
	return func(ctx context.Context, req *connect.Request[Req]) (*connect.Response[Res], error) {
		if opts(req.Msg).GetConsistent() {
			return viaLeader(ctx, req)
		}
		res, err := local(ctx, req)
		return res, toConnect(err)
	}
}

// waitIndex blocks until the state passes min_index or max_wait ends; on timeout the read
// proceeds with what is there, like any blocking query.
func (s *Server) waitIndex(ctx context.Context, o *captainv1.ReadOptions) error {
	wait := 30 * time.Second
	if d := o.GetMaxWait(); d != nil {
		wait = min(d.AsDuration(), 5*time.Minute)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		err := s.fsm.State().Wait(ctx, o.GetMinIndex())
		switch {
		case errors.Is(err, state.ErrAbandoned):
			continue // restored: wait on the new store
		case errors.Is(err, context.DeadlineExceeded):
			return nil
		default:
			return err
		}
	}
}
