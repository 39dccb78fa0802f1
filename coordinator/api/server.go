// Package api serves the coordinator's Connect API: authentication, forwarding writes to the
// leader, building Raft commands, and mapping errors to connect codes.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/coordinator/liveness"
	"github.com/captain-cd/captain/coordinator/raftnode"
	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// Config wires the API to its node.
type Config struct {
	// Node is the local Raft node.
	Node *raftnode.Node
	// FSM holds the replicated state.
	FSM *fsm.FSM
	// APIAddr is this node's API address as peers reach it (host:port or URL).
	APIAddr string
	// HTTPClient forwards requests to the leader; it must speak HTTP/2 (h2c without TLS).
	HTTPClient *http.Client
	// TLS tells whether peers' APIs are https.
	TLS bool
	// ElectionWait bounds how long a write waits for a leader (default 5s).
	ElectionWait time.Duration
	// Interceptors run before authentication (e.g. metrics).
	Interceptors []connect.Interceptor
	// Logger for API events.
	Logger *slog.Logger
	// Now is the clock used for command timestamps (default time.Now).
	Now func() time.Time
	// HeartbeatInterval is how often agents heartbeat (default 5s); HeartbeatTTL is how long a
	// host may stay silent before it counts down (default 20s).
	HeartbeatInterval, HeartbeatTTL time.Duration
	// Artifacts lets release diffs and rollback previews show file changes from the artifact
	// manifests; nil leaves them out and says why.
	Artifacts *ArtifactStore
}

// Server implements the registered Connect services.
type Server struct {
	node         *raftnode.Node
	fsm          *fsm.FSM
	apiAddr      string
	httpClient   *http.Client
	scheme       string
	electionWait time.Duration
	interceptors []connect.Interceptor
	logger       *slog.Logger
	now          func() time.Time

	heartbeatInterval time.Duration
	heartbeatTTL      time.Duration
	manifests         *manifestReader
	// liveness holds the heartbeat tracker while this node leads (RunLiveness), else nil.
	liveness atomic.Pointer[liveness.Tracker]
	// reports batches host reports into shared Raft commands.
	reports *reportBatcher
}

// New returns a Server.
func New(cfg Config) *Server {
	s := &Server{
		node: cfg.Node, fsm: cfg.FSM, apiAddr: cfg.APIAddr, httpClient: cfg.HTTPClient,
		scheme: "http", electionWait: cfg.ElectionWait, interceptors: cfg.Interceptors,
		logger: cfg.Logger, now: cfg.Now, heartbeatInterval: cfg.HeartbeatInterval, heartbeatTTL: cfg.HeartbeatTTL,
		manifests: newManifestReader(cfg.Artifacts),
	}
	s.reports = &reportBatcher{s: s}
	if s.heartbeatInterval <= 0 {
		s.heartbeatInterval = DefaultHeartbeatInterval
	}
	if s.heartbeatTTL <= 0 {
		s.heartbeatTTL = DefaultHeartbeatTTL
	}
	if cfg.TLS {
		s.scheme = "https"
	}
	if s.electionWait <= 0 {
		s.electionWait = 5 * time.Second
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.httpClient == nil {
		s.httpClient = http.DefaultClient
	}
	return s
}

// maxMessageBytes bounds one request message.
const maxMessageBytes = 4 << 20

// compressMinBytes is the smallest message worth compressing.
const compressMinBytes = 4 << 10

// ServiceNames lists the fully qualified names of the services Handler serves.
func ServiceNames() []string {
	return []string{
		captainv1connect.PipelineServiceName,
		captainv1connect.ReleaseServiceName,
		captainv1connect.HostServiceName,
		captainv1connect.ClusterServiceName,
		captainv1connect.TokenServiceName,
		captainv1connect.AuditServiceName,
		captainv1connect.AlarmServiceName,
	}
}

// Handler returns the Connect, gRPC and gRPC-Web handlers of every implemented service plus
// gRPC reflection, on one mux.
func (s *Server) Handler() http.Handler {
	opts := connect.WithHandlerOptions(
		connect.WithInterceptors(append(append([]connect.Interceptor{}, s.interceptors...), errorLogger{s.logger}, authInterceptor{s: s})...),
		// Requests are small (commands stay far under 512 KB); snapshot chunks are 1 MiB.
		connect.WithReadMaxBytes(maxMessageBytes),
		// Compressing a heartbeat's 20-byte answer costs more than sending it: a gzip writer
		// reset was a fifth of a busy leader's CPU. Only messages worth it are compressed.
		connect.WithCompressMinBytes(compressMinBytes),
	)
	mux := http.NewServeMux()
	mux.Handle(captainv1connect.NewPipelineServiceHandler(&pipelineService{s}, opts))
	mux.Handle(captainv1connect.NewReleaseServiceHandler(&releaseService{s}, opts))
	mux.Handle(captainv1connect.NewHostServiceHandler(&hostService{s}, opts))
	mux.Handle(captainv1connect.NewClusterServiceHandler(&clusterService{s}, opts))
	mux.Handle(captainv1connect.NewTokenServiceHandler(&tokenService{s}, opts))
	mux.Handle(captainv1connect.NewAuditServiceHandler(&auditService{s}, opts))
	mux.Handle(captainv1connect.NewAlarmServiceHandler(&alarmService{s}, opts))
	mux.Handle(captainv1connect.NewAgentServiceHandler(&agentService{s}, opts))
	mux.Handle(captainv1connect.NewDeploymentServiceHandler(&deploymentService{s}, opts))
	mux.Handle(captainv1connect.NewOperatorServiceHandler(&operatorService{s: s}, opts))
	reflector := grpcreflect.NewStaticReflector(ServiceNames()...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			r = r.WithContext(context.WithValue(r.Context(), nodeCertKey{}, true))
		}
		mux.ServeHTTP(w, r)
	})
}

type nodeCertKey struct{}

// errorLogger logs failures that are the server's fault; client mistakes are only returned.
type errorLogger struct{ logger *slog.Logger }

func (e errorLogger) log(procedure string, err error) {
	switch connect.CodeOf(err) {
	case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
		e.logger.Error("request failed", "procedure", procedure, "err", err)
	}
}

func (e errorLogger) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if err != nil {
			e.log(req.Spec().Procedure, err)
		}
		return res, err
	}
}

func (e errorLogger) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (e errorLogger) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		if err != nil {
			e.log(conn.Spec().Procedure, err)
		}
		return err
	}
}

// hasNodeCert reports whether the caller presented a client certificate signed by the
// cluster CA (only nodes have one; the CLI authenticates with tokens alone).
func hasNodeCert(ctx context.Context) bool {
	ok, _ := ctx.Value(nodeCertKey{}).(bool)
	return ok
}

// command builds a Raft command with the leader's clock and the caller as actor.
func (s *Server) command(ctx context.Context, requestID, reason string) *raftv1.Command {
	return &raftv1.Command{At: timestamppb.New(s.now()), Actor: actor(ctx), RequestId: requestID, Reason: reason}
}

// apply replicates cmd and returns the FSM's result; a semantic error comes back as err.
func (s *Server) apply(ctx context.Context, cmd *raftv1.Command) (*fsm.Result, error) {
	resp, _, err := s.node.Apply(ctx, cmd)
	if err != nil {
		return nil, err
	}
	res, ok := resp.(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("unexpected apply response %T", resp)
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res, nil
}

func value[T proto.Message](res *fsm.Result) (T, error) {
	v, ok := res.Value.(T)
	if !ok {
		var zero T
		return zero, fmt.Errorf("unexpected apply value %T", res.Value)
	}
	return v, nil
}

// OnLeadership does the work a new leader owes the cluster: it waits until every earlier
// entry is applied, records its own API address, and creates the first admin token from
// initialAdminSecret when no token exists yet.
func (s *Server) OnLeadership(ctx context.Context, initialAdminSecret string) error {
	if err := s.node.Barrier(ctx); err != nil {
		return fmt.Errorf("barrier after winning the election: %w", err)
	}
	cmd := s.command(ctx, "", "leader records its API address")
	cmd.Actor = "captain"
	cmd.Body = &raftv1.Command_SetMember{SetMember: &raftv1.SetMember{Member: &raftv1.ClusterMember{
		NodeId: s.node.ID(), RaftAddress: s.node.Addr(), ApiAddress: s.apiAddr,
	}}}
	if _, err := s.apply(ctx, cmd); err != nil {
		return fmt.Errorf("record own member entry: %w", err)
	}
	if initialAdminSecret == "" {
		return nil
	}
	tokens, err := s.fsm.State().Snapshot().Tokens()
	if err != nil || len(tokens) > 0 {
		return err
	}
	id, ok := TokenIDFromSecret(initialAdminSecret)
	if !ok {
		id = "initial-admin"
	}
	cmd = s.command(ctx, "initial-admin-token", "initial admin token from --initial-admin-token-file")
	cmd.Actor = "captain"
	cmd.Body = &raftv1.Command_CreateToken{CreateToken: &raftv1.CreateToken{
		Token: &captainv1.Token{
			Id: id, Name: "initial-admin", Role: captainv1.Role_ROLE_ADMIN, CreatedBy: "captain", CreatedAt: cmd.At,
		},
		SecretHash: HashSecret(initialAdminSecret),
	}}
	_, err = s.apply(ctx, cmd)
	if errors.Is(err, fsm.ErrAlreadyExists) {
		return nil
	}
	if err == nil {
		s.logger.Info("initial admin token created", "id", id)
	}
	return err
}

// readerOf returns a read view of the current state.
func (s *Server) readerOf() *state.Reader { return s.fsm.State().Snapshot() }
