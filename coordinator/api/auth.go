package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/raftnode"
	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// minRole is the least role each procedure needs. A procedure missing here is refused to
// everyone but admins, so a new RPC is never accidentally open.
var minRole = map[string]captainv1.Role{
	captainv1connect.PipelineServiceApplyPipelineProcedure:        captainv1.Role_ROLE_DEPLOYER,
	captainv1connect.PipelineServiceValidatePipelineProcedure:     captainv1.Role_ROLE_VIEWER,
	captainv1connect.PipelineServiceGetPipelineProcedure:          captainv1.Role_ROLE_VIEWER,
	captainv1connect.PipelineServiceListPipelinesProcedure:        captainv1.Role_ROLE_VIEWER,
	captainv1connect.PipelineServiceListPipelineVersionsProcedure: captainv1.Role_ROLE_VIEWER,
	captainv1connect.ReleaseServiceCreateReleaseProcedure:         captainv1.Role_ROLE_DEPLOYER,
	captainv1connect.ReleaseServiceGetReleaseProcedure:            captainv1.Role_ROLE_VIEWER,
	captainv1connect.ReleaseServiceListReleasesProcedure:          captainv1.Role_ROLE_VIEWER,
	captainv1connect.ReleaseServiceDiffReleasesProcedure:          captainv1.Role_ROLE_VIEWER,
	captainv1connect.HostServiceListHostsProcedure:                captainv1.Role_ROLE_VIEWER,
	captainv1connect.HostServiceGetHostProcedure:                  captainv1.Role_ROLE_VIEWER,
	captainv1connect.ClusterServiceListPeersProcedure:             captainv1.Role_ROLE_VIEWER,
	captainv1connect.ClusterServiceGetLeaderProcedure:             captainv1.Role_ROLE_VIEWER,
	captainv1connect.ClusterServiceJoinProcedure:                  captainv1.Role_ROLE_ADMIN,
	captainv1connect.ClusterServiceRemoveProcedure:                captainv1.Role_ROLE_ADMIN,
	captainv1connect.ClusterServiceTransferLeadershipProcedure:    captainv1.Role_ROLE_ADMIN,
	captainv1connect.ClusterServiceSnapshotSaveProcedure:          captainv1.Role_ROLE_ADMIN,
	captainv1connect.ClusterServiceSnapshotRestoreProcedure:       captainv1.Role_ROLE_ADMIN,
	captainv1connect.TokenServiceCreateTokenProcedure:             captainv1.Role_ROLE_ADMIN,
	captainv1connect.TokenServiceListTokensProcedure:              captainv1.Role_ROLE_ADMIN,
	captainv1connect.TokenServiceRevokeTokenProcedure:             captainv1.Role_ROLE_ADMIN,
	captainv1connect.TokenServiceWhoAmIProcedure:                  anyValidToken,
	captainv1connect.AuditServiceListAuditEventsProcedure:         captainv1.Role_ROLE_VIEWER,
	captainv1connect.AlarmServiceSetAlarmStateProcedure:           captainv1.Role_ROLE_DEPLOYER,
	captainv1connect.AlarmServiceListAlarmsProcedure:              captainv1.Role_ROLE_VIEWER,
	captainv1connect.AgentServiceRegisterProcedure:                captainv1.Role_ROLE_AGENT,
	captainv1connect.AgentServiceHeartbeatProcedure:               hostCredential,
	captainv1connect.AgentServiceWatchProcedure:                   hostCredential,
	captainv1connect.AgentServiceReportProcedure:                  hostCredential,
	captainv1connect.DeploymentServiceListDeploymentsProcedure:    captainv1.Role_ROLE_VIEWER,
	captainv1connect.DeploymentServiceGetDeploymentProcedure:      captainv1.Role_ROLE_VIEWER,
	captainv1connect.DeploymentServiceWhereIsCommitProcedure:      captainv1.Role_ROLE_VIEWER,
	captainv1connect.DeploymentServiceGetStatusProcedure:          captainv1.Role_ROLE_VIEWER,
	captainv1connect.OperatorServiceSetPromotionsProcedure:        captainv1.Role_ROLE_DEPLOYER,
	captainv1connect.OperatorServiceApproveProcedure:              captainv1.Role_ROLE_DEPLOYER,
	captainv1connect.OperatorServiceRollbackProcedure:             captainv1.Role_ROLE_DEPLOYER,
	captainv1connect.OperatorServicePreviewRollbackProcedure:      captainv1.Role_ROLE_DEPLOYER,
}

// anyValidToken marks procedures any valid token may call.
const anyValidToken = captainv1.Role(-1)

// allows reports whether a token of role have may call a procedure needing need.
// admin > deployer > viewer; agent tokens only reach agent procedures.
func allows(have, need captainv1.Role) bool {
	if need == anyValidToken {
		return true
	}
	if need == hostCredential {
		return false // only a host's own credential, checked by authenticateHost
	}
	if have == captainv1.Role_ROLE_ADMIN {
		return true
	}
	if have == captainv1.Role_ROLE_AGENT || need == captainv1.Role_ROLE_AGENT {
		return have == need
	}
	rank := map[captainv1.Role]int{captainv1.Role_ROLE_VIEWER: 1, captainv1.Role_ROLE_DEPLOYER: 2, captainv1.Role_ROLE_ADMIN: 3}
	return rank[have] > 0 && rank[need] > 0 && rank[have] >= rank[need]
}

func roleName(r captainv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

type callerKey struct{}

// caller returns the token that authenticated the request.
func caller(ctx context.Context) *captainv1.Token {
	t, _ := ctx.Value(callerKey{}).(*captainv1.Token)
	return t
}

// actor is the name recorded in the audit log for the request.
func actor(ctx context.Context) string {
	if t := caller(ctx); t != nil {
		return t.GetName()
	}
	return "anonymous"
}

// HashSecret is how token secrets are stored: SHA-256 of the whole bearer string.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// NewTokenSecret returns a token ID and its secret "cpt_<id>_<64 hex>".
func NewTokenSecret() (id, secret string, err error) {
	b := make([]byte, 6+32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("generate token: %w", err)
	}
	id = hex.EncodeToString(b[:6])
	return id, "cpt_" + id + "_" + hex.EncodeToString(b[6:]), nil
}

// TokenIDFromSecret returns the ID embedded in a "cpt_<id>_<secret>" bearer string.
func TokenIDFromSecret(secret string) (string, bool) {
	rest, ok := strings.CutPrefix(secret, "cpt_")
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "_")
	return id, ok && id != ""
}

type authInterceptor struct{ s *Server }

// askLeaderWhoAmI has the leader authenticate the bearer token.
func (s *Server) askLeaderWhoAmI(ctx context.Context, header string) error {
	if s.node.IsLeader() {
		return nil // checked locally by the caller's next lookup
	}
	base, err := s.leaderAPI()
	if err != nil {
		return err
	}
	req := connect.NewRequest(&captainv1.WhoAmIRequest{})
	req.Header().Set("Authorization", header)
	req.Header().Set(forwardedHeader, s.node.ID())
	_, err = captainv1connect.NewTokenServiceClient(s.httpClient, base).WhoAmI(ctx, req)
	return err
}

func errUnknownToken() error {
	return connect.NewError(connect.CodeUnauthenticated, errors.New("unknown token: check CAPTAIN_TOKEN, or ask an admin for a new one"))
}

// tokenFromLeader settles a token this follower does not know: when the leader rejects it,
// its answer (unknown, revoked, expired) is final; when the leader accepts it, this node waits
// until the token has replicated here. A nil row with a nil error means unknown.
func (s *Server) tokenFromLeader(ctx context.Context, header string, hash []byte) (*raftv1.StoredToken, error) {
	lookup := func() (*raftv1.StoredToken, error) {
		st, err := s.fsm.State().Snapshot().TokenBySecretHash(hash)
		if errors.Is(err, state.ErrNotFound) {
			return nil, nil
		}
		return st, err
	}
	deadline := time.Now().Add(s.electionWait)
	for {
		err := s.askLeaderWhoAmI(ctx, header)
		if err == nil {
			break
		}
		if st, lerr := lookup(); st != nil || lerr != nil {
			return st, lerr // replicated meanwhile (or this node became leader and knows it)
		}
		var ce *connect.Error
		if errors.As(err, &ce) && ce.Code() == connect.CodeUnauthenticated {
			return nil, ce
		}
		if !retryable(err) && !errors.Is(err, raftnode.ErrNoLeader) && !errors.Is(err, state.ErrNotFound) {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("cannot check the token with the leader: %w", err))
		}
		if time.Now().After(deadline) {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("cannot check the token: no leader reachable within %s: %w", s.electionWait, err))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	for {
		st, err := lookup()
		if st != nil || err != nil || s.node.IsLeader() {
			return st, err
		}
		if time.Now().After(deadline) {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf(
				"node %s lags the leader and has not received this token yet: retry, or use another coordinator", s.node.ID()))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (a authInterceptor) authenticate(ctx context.Context, procedure string, h http.Header) (context.Context, error) {
	header := h.Get("Authorization")
	need, known := minRole[procedure]
	if !known {
		need = captainv1.Role_ROLE_ADMIN
	}
	secret, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || strings.TrimSpace(secret) == "" {
		return ctx, connect.NewError(connect.CodeUnauthenticated,
			errors.New("no bearer token: send \"Authorization: Bearer <token>\" (captain reads CAPTAIN_TOKEN)"))
	}
	if strings.HasPrefix(secret, hostPrefix) {
		return a.authenticateHost(ctx, procedure, strings.TrimSpace(secret))
	}
	if need == hostCredential {
		return ctx, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s takes a host credential (host:<id>:<secret>), not a token", procedure))
	}
	hash := HashSecret(strings.TrimSpace(secret))
	st, err := a.s.fsm.State().Snapshot().TokenBySecretHash(hash)
	if errors.Is(err, state.ErrNotFound) && !a.s.node.IsLeader() && h.Get(forwardedHeader) == "" {
		// A follower that lags the leader (a token created a moment ago, or a node that just
		// restarted) may not know a valid token yet: ask the leader before saying "unknown".
		if st, err = a.s.tokenFromLeader(ctx, header, hash); err != nil {
			return ctx, err
		}
	}
	if errors.Is(err, state.ErrNotFound) || st == nil {
		return ctx, errUnknownToken()
	}
	if err != nil {
		return ctx, connect.NewError(connect.CodeInternal, err)
	}
	tok := st.GetToken()
	if tok.GetRevokedAt() != nil {
		return ctx, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("token %s (%s) was revoked at %s", tok.GetId(), tok.GetName(),
			tok.GetRevokedAt().AsTime().Format("2006-01-02T15:04:05Z")))
	}
	if exp := tok.GetExpiresAt(); exp != nil && !a.s.now().Before(exp.AsTime()) {
		return ctx, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("token %s (%s) expired at %s", tok.GetId(), tok.GetName(),
			exp.AsTime().Format("2006-01-02T15:04:05Z")))
	}
	if !allows(tok.GetRole(), need) {
		return ctx, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s needs role %s or above; token %q has role %s",
			procedure, roleName(need), tok.GetName(), roleName(tok.GetRole())))
	}
	return context.WithValue(ctx, callerKey{}, tok), nil
}

func (a authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := a.authenticate(ctx, req.Spec().Procedure, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := a.authenticate(ctx, conn.Spec().Procedure, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}
