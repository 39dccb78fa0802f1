package api

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/coordinator/raftnode"
	"github.com/captain-cd/captain/coordinator/state"
)

// notLeaderMeta marks an error meaning "this node was not the leader and did nothing", so a
// forwarding follower knows retrying elsewhere is safe.
const notLeaderMeta = "Captain-Not-Leader"

// toConnect maps package sentinel errors to connect codes; the only place that does.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	code := connect.CodeInternal
	switch {
	case errors.Is(err, state.ErrNotFound), errors.Is(err, raftnode.ErrUnknownServer):
		code = connect.CodeNotFound
	case errors.Is(err, fsm.ErrAlreadyExists):
		code = connect.CodeAlreadyExists
	case errors.Is(err, fsm.ErrConflict), errors.Is(err, raftnode.ErrConflict):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, fsm.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, raftnode.ErrTooLarge):
		code = connect.CodeResourceExhausted
	case errors.Is(err, raftnode.ErrNotLeader):
		e := connect.NewError(connect.CodeUnavailable, err)
		e.Meta().Set(notLeaderMeta, "1")
		return e
	case errors.Is(err, raftnode.ErrNoLeader), errors.Is(err, raftnode.ErrAmbiguous),
		errors.Is(err, raftnode.ErrShutdown), errors.Is(err, state.ErrAbandoned):
		code = connect.CodeUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	}
	return connect.NewError(code, err)
}

func invalid(err error) error { return connect.NewError(connect.CodeInvalidArgument, err) }
