package api

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

type tokenService struct{ s *Server }

func (t *tokenService) CreateToken(ctx context.Context, req *connect.Request[captainv1.CreateTokenRequest]) (*connect.Response[captainv1.CreateTokenResponse], error) {
	m := req.Msg
	if err := required("name", m.GetName()); err != nil {
		return nil, err
	}
	if _, ok := captainv1.Role_name[int32(m.GetRole())]; !ok || m.GetRole() == captainv1.Role_ROLE_UNSPECIFIED {
		return nil, invalid(errors.New("role: required; one of admin, deployer, viewer, agent"))
	}
	if m.GetTtl() != nil && m.GetTtl().AsDuration() <= 0 {
		return nil, invalid(fmt.Errorf("ttl: %s is not positive; leave it unset for a token that never expires", m.GetTtl().AsDuration()))
	}
	return onLeader(t.s, func(ctx context.Context, req *connect.Request[captainv1.CreateTokenRequest]) (*connect.Response[captainv1.CreateTokenResponse], error) {
		id, secret, err := NewTokenSecret()
		if err != nil {
			return nil, err
		}
		cmd := t.s.command(ctx, "", "")
		tok := &captainv1.Token{Id: id, Name: m.GetName(), Role: m.GetRole(), CreatedBy: actor(ctx), CreatedAt: cmd.At}
		if ttl := m.GetTtl(); ttl != nil {
			tok.ExpiresAt = timestamppb.New(cmd.At.AsTime().Add(ttl.AsDuration()))
		}
		cmd.Body = &raftv1.Command_CreateToken{CreateToken: &raftv1.CreateToken{Token: tok, SecretHash: HashSecret(secret)}}
		if _, err := t.s.apply(ctx, cmd); err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.CreateTokenResponse{Token: tok, Secret: secret}), nil
	})(ctx, req)
}

func (t *tokenService) ListTokens(ctx context.Context, req *connect.Request[captainv1.ListTokensRequest]) (*connect.Response[captainv1.ListTokensResponse], error) {
	return reader(t.s, func(*captainv1.ListTokensRequest) *captainv1.ReadOptions { return nil },
		func(_ context.Context, _ *captainv1.ListTokensRequest, r *state.Reader) (*captainv1.ListTokensResponse, error) {
			ts, err := r.Tokens()
			if err != nil {
				return nil, err
			}
			out := &captainv1.ListTokensResponse{}
			for _, st := range ts {
				out.Tokens = append(out.Tokens, st.GetToken())
			}
			return out, nil
		})(ctx, req)
}

func (t *tokenService) RevokeToken(ctx context.Context, req *connect.Request[captainv1.RevokeTokenRequest]) (*connect.Response[captainv1.RevokeTokenResponse], error) {
	if err := required("id", req.Msg.GetId()); err != nil {
		return nil, err
	}
	return onLeader(t.s, func(ctx context.Context, req *connect.Request[captainv1.RevokeTokenRequest]) (*connect.Response[captainv1.RevokeTokenResponse], error) {
		cmd := t.s.command(ctx, "", "")
		cmd.Body = &raftv1.Command_RevokeToken{RevokeToken: &raftv1.RevokeToken{Id: req.Msg.GetId()}}
		res, err := t.s.apply(ctx, cmd)
		if err != nil {
			return nil, err
		}
		tok, err := value[*captainv1.Token](res)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.RevokeTokenResponse{Token: tok}), nil
	})(ctx, req)
}

func (t *tokenService) WhoAmI(ctx context.Context, _ *connect.Request[captainv1.WhoAmIRequest]) (*connect.Response[captainv1.WhoAmIResponse], error) {
	return connect.NewResponse(&captainv1.WhoAmIResponse{Token: caller(ctx)}), nil
}
