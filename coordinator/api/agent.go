package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/captain-cd/captain/coordinator/engine"
	"github.com/captain-cd/captain/coordinator/liveness"
	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// hostPrefix starts a per-host credential: "host:<host id>:<secret>".
const hostPrefix = "host:"

// hostCredential marks procedures only a host's own credential may call.
const hostCredential = captainv1.Role(-2)

// Heartbeat timing told to agents. A host is down after HeartbeatTTL without a heartbeat.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHeartbeatTTL      = 20 * time.Second
)

// authenticateHost checks a per-host credential against the stored hash and returns the
// caller token for it: named "host:<id>", role agent.
func (a authInterceptor) authenticateHost(ctx context.Context, procedure, secret string) (context.Context, error) {
	rest := strings.TrimPrefix(secret, hostPrefix)
	id, _, ok := strings.Cut(rest, ":")
	if !ok || id == "" {
		return ctx, connect.NewError(connect.CodeUnauthenticated, errors.New(`malformed host credential: expected "host:<host id>:<secret>"`))
	}
	if _, err := a.s.hostForCredential(ctx, id, secret); err != nil {
		return ctx, err
	}
	if need := minRole[procedure]; need != hostCredential {
		return ctx, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s is not open to host credentials", procedure))
	}
	return context.WithValue(ctx, callerKey{}, &captainv1.Token{Id: hostPrefix + id, Name: hostPrefix + id, Role: captainv1.Role_ROLE_AGENT}), nil
}

// hostForCredential finds the host a credential names and checks its secret. A follower that
// does not know the host or its new secret yet (a registration that has not replicated here)
// waits for its log to catch up before it says no.
func (s *Server) hostForCredential(ctx context.Context, id, secret string) (*raftv1.StoredHost, error) {
	deadline := time.Now().Add(s.electionWait)
	for {
		st := s.fsm.State()
		idx := st.Index()
		h, err := st.Snapshot().Host(id)
		switch {
		case err == nil && subtle.ConstantTimeCompare(h.GetSecretHash(), HashSecret(secret)) == 1:
			return h, nil
		case err != nil && !errors.Is(err, state.ErrNotFound):
			return nil, connect.NewError(connect.CodeInternal, err)
		}
		if s.node.IsLeader() || time.Now().After(deadline) {
			if err != nil {
				return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("host %s is not registered: register again with a join token", id))
			}
			return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("wrong secret for host %s: register again with a join token", id))
		}
		wctx, cancel := context.WithDeadline(ctx, deadline)
		werr := st.Wait(wctx, idx)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		_ = werr // a timeout ends the loop on the deadline check; an abandoned store is re-read
	}
}

// callerHost returns the host ID of a host credential, or "".
func callerHost(ctx context.Context) string {
	return strings.TrimPrefix(caller(ctx).GetId(), hostPrefix)
}

// ownHost refuses a request about another host: a host can only speak for itself.
func ownHost(ctx context.Context, hostID string) error {
	if got := callerHost(ctx); got == "" || got != hostID {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("host %q may not act for host %q", got, hostID))
	}
	return nil
}

type agentService struct{ s *Server }

var (
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)
	hostIDRE     = regexp.MustCompile(`^h-[0-9a-f]{12}$`)
)

func (a *agentService) Register(ctx context.Context, req *connect.Request[captainv1.RegisterRequest]) (*connect.Response[captainv1.RegisterResponse], error) {
	return onLeader(a.s, a.register)(ctx, req)
}

func (a *agentService) register(ctx context.Context, req *connect.Request[captainv1.RegisterRequest]) (*connect.Response[captainv1.RegisterResponse], error) {
	m := req.Msg
	if strings.TrimSpace(m.GetHostname()) == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("hostname: required"))
	}
	for k, v := range m.GetLabels() {
		if !labelKeyRE.MatchString(k) {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("labels.%s: %q is not a valid label key", k, k))
		}
		if !labelValueRE.MatchString(v) {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("labels.%s: %q is not a valid label value (up to 63 letters, digits, '.', '_', '-')", k, v))
		}
	}
	id := m.GetHostId()
	if id != "" && !hostIDRE.MatchString(id) {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("host_id %q: expected an ID a coordinator gave, like h-0123456789ab", id))
	}
	switch {
	case id == "" && m.GetRequestId() != "":
		// A retried registration must land on the same host, not create a second one: derive
		// the ID from the request ID. Naming an existing host is no new power: host_id does that.
		sum := sha256.Sum256([]byte("register/" + m.GetRequestId()))
		id = "h-" + hex.EncodeToString(sum[:6])
	case id == "":
		b := make([]byte, 6)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		id = "h-" + hex.EncodeToString(b)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	secret := hostPrefix + id + ":" + hex.EncodeToString(b)
	cmd := a.s.command(ctx, "", "agent registration")
	cmd.Body = &raftv1.Command_RegisterHost{RegisterHost: &raftv1.RegisterHost{
		Host: &captainv1.Host{
			Id: id, Hostname: m.GetHostname(), Labels: m.GetLabels(), AgentVersion: m.GetAgentVersion(),
			Liveness: captainv1.Liveness_LIVENESS_UP, LivenessSince: cmd.At,
		},
		SecretHash: HashSecret(secret),
	}}
	if _, err := a.s.apply(ctx, cmd); err != nil {
		return nil, err
	}
	if t := a.s.tracker(); t != nil {
		t.Heartbeat(id)
	}
	return connect.NewResponse(&captainv1.RegisterResponse{
		HostId: id, HostSecret: strings.TrimPrefix(secret, hostPrefix+id+":"),
		HeartbeatInterval: durationpb.New(a.s.heartbeatInterval), HeartbeatTtl: durationpb.New(a.s.heartbeatTTL),
	}), nil
}

func (a *agentService) Heartbeat(ctx context.Context, req *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
	if err := ownHost(ctx, req.Msg.GetHostId()); err != nil {
		return nil, err
	}
	return onLeader(a.s, a.heartbeat)(ctx, req)
}

// heartbeat only touches the leader's memory, unless the host must be written up again.
func (a *agentService) heartbeat(ctx context.Context, req *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
	id := req.Msg.GetHostId()
	t := a.s.tracker()
	if t == nil {
		// Leading, but the heartbeat timers are not running yet (leader setup in progress).
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("leader is starting; retry"))
	}
	if !t.Heartbeat(id) {
		h, err := a.s.readerOf().Host(id)
		if err != nil {
			t.Forget(id)
			return nil, err
		}
		if h.GetHost().GetLiveness() != captainv1.Liveness_LIVENESS_UP {
			cmd := a.s.command(ctx, "", "heartbeat after the host was down")
			cmd.Body = &raftv1.Command_SetLiveness{SetLiveness: &raftv1.SetLiveness{Changes: []*raftv1.LivenessChange{{HostId: id, Liveness: captainv1.Liveness_LIVENESS_UP}}}}
			if _, err := a.s.apply(ctx, cmd); err != nil {
				t.Forget(id) // the next heartbeat tries again
				return nil, err
			}
		}
	}
	return connect.NewResponse(&captainv1.HeartbeatResponse{
		HeartbeatInterval: durationpb.New(a.s.heartbeatInterval), DesiredIndex: a.s.fsm.State().Index(),
	}), nil
}

func (a *agentService) Report(ctx context.Context, req *connect.Request[captainv1.ReportRequest]) (*connect.Response[captainv1.ReportResponse], error) {
	if err := ownHost(ctx, req.Msg.GetHostId()); err != nil {
		return nil, err
	}
	if n := len(req.Msg.GetEvents()); n > maxReportEvents {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("events: %d in one report, at most %d", n, maxReportEvents))
	}
	return onLeader(a.s, a.report)(ctx, req)
}

// maxReportEvents keeps one report's Raft command far below the 512 KB bound.
const maxReportEvents = 64

func (a *agentService) report(ctx context.Context, req *connect.Request[captainv1.ReportRequest]) (*connect.Response[captainv1.ReportResponse], error) {
	id := req.Msg.GetHostId()
	if len(req.Msg.GetEvents()) > 0 {
		if err := a.s.reports.submit(ctx, &raftv1.HostReport{HostId: id, Events: req.Msg.GetEvents()}); err != nil {
			return nil, err
		}
	}
	h, err := a.s.readerOf().Host(id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&captainv1.ReportResponse{AckedSeq: h.GetAckedSeq()}), nil
}

// Watch is served by any node from its replicated state: a follower's view may lag by a few
// entries, and the stream catches up as entries arrive.
func (a *agentService) Watch(ctx context.Context, req *connect.Request[captainv1.WatchRequest], stream *connect.ServerStream[captainv1.WatchResponse]) error {
	id := req.Msg.GetHostId()
	if err := ownHost(ctx, id); err != nil {
		return err
	}
	var last []*captainv1.DesiredApp
	sent := false
	for {
		st := a.s.fsm.State()
		rd := st.Snapshot()
		h, err := rd.Host(id)
		if err != nil {
			return toConnect(err)
		}
		apps, err := engine.Desired(rd, h.GetHost())
		if err != nil {
			return toConnect(err)
		}
		// The first state always goes out (an agent skips an index it has seen already), then
		// only changes: most writes concern other hosts.
		if !sent || !sameApps(apps, last) {
			if err := stream.Send(&captainv1.WatchResponse{Index: rd.Index(), Apps: apps, HeartbeatInterval: durationpb.New(a.s.heartbeatInterval)}); err != nil {
				return err
			}
			last, sent = apps, true
		}
		switch err := st.Wait(ctx, rd.Index()); {
		case errors.Is(err, state.ErrAbandoned):
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			return toConnect(err)
		}
	}
}

func sameApps(a, b []*captainv1.DesiredApp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// tracker is the leader's heartbeat tracker, nil when this node does not lead.
func (s *Server) tracker() *liveness.Tracker { return s.liveness.Load() }

// RunLiveness is the leader task that owns heartbeat deadlines: every host up in state gets a
// full TTL, and hosts whose TTL passes are written down in batches.
func (s *Server) RunLiveness(ctx context.Context) error {
	t := liveness.New(s.heartbeatTTL, nil)
	hosts, err := s.readerOf().Hosts()
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if h.GetHost().GetLiveness() == captainv1.Liveness_LIVENESS_UP {
			t.Track(h.GetHost().GetId())
		}
	}
	s.liveness.Store(t)
	defer s.liveness.CompareAndSwap(t, nil)
	t.Run(ctx, 50*time.Millisecond, func(ctx context.Context, ids []string) error {
		cmd := s.command(ctx, "", fmt.Sprintf("no heartbeat for %s", s.heartbeatTTL))
		cmd.Actor = engine.Actor
		changes := make([]*raftv1.LivenessChange, len(ids))
		for i, id := range ids {
			changes[i] = &raftv1.LivenessChange{HostId: id, Liveness: captainv1.Liveness_LIVENESS_DOWN}
		}
		cmd.Body = &raftv1.Command_SetLiveness{SetLiveness: &raftv1.SetLiveness{Changes: changes}}
		_, err := s.apply(ctx, cmd)
		if err != nil {
			s.logger.Warn("could not mark hosts down", "hosts", len(ids), "err", err)
		}
		return err
	})
	return nil
}
