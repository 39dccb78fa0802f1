package agentclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// coordinator is a real Connect AgentService server over h2c that records what it sees.
type coordinator struct {
	captainv1connect.UnimplementedAgentServiceHandler
	mu      sync.Mutex
	auth    []string
	states  []*captainv1.WatchResponse
	breakAt int // close the Watch stream after sending this many states (0: never)
	watches []uint64
	// leader, when set, is named in the Captain-Leader header of heartbeat answers, as a
	// follower that forwarded the call does.
	leader string
	beats  int
}

func (c *coordinator) Register(_ context.Context, req *connect.Request[captainv1.RegisterRequest]) (*connect.Response[captainv1.RegisterResponse], error) {
	c.mu.Lock()
	c.auth = append(c.auth, req.Header().Get("Authorization"))
	c.mu.Unlock()
	if req.Header().Get("Authorization") != "Bearer join-secret" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("unknown token"))
	}
	return connect.NewResponse(&captainv1.RegisterResponse{HostId: "h1", HostSecret: "s1"}), nil
}

func (c *coordinator) Heartbeat(_ context.Context, req *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
	c.mu.Lock()
	c.auth = append(c.auth, req.Header().Get("Authorization"))
	c.beats++
	leader := c.leader
	c.mu.Unlock()
	res := connect.NewResponse(&captainv1.HeartbeatResponse{DesiredIndex: 7})
	if leader != "" {
		res.Header().Set(leaderHeader, leader)
	}
	return res, nil
}

func (c *coordinator) heartbeats() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.beats
}

func (c *coordinator) Watch(ctx context.Context, req *connect.Request[captainv1.WatchRequest], s *connect.ServerStream[captainv1.WatchResponse]) error {
	c.mu.Lock()
	c.watches = append(c.watches, req.Msg.GetAfterIndex())
	states, breakAt := c.states, c.breakAt
	c.mu.Unlock()
	sent := 0
	for _, st := range states {
		if st.GetIndex() <= req.Msg.GetAfterIndex() {
			continue
		}
		if err := s.Send(st); err != nil {
			return err
		}
		sent++
		if breakAt > 0 && sent == breakAt {
			return connect.NewError(connect.CodeUnavailable, errors.New("node shutting down"))
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func serve(t *testing.T, c *coordinator) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(captainv1connect.NewAgentServiceHandler(c))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

func h2c() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// deadAddr is an address nothing listens on.
func deadAddr(t *testing.T) string {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close()
	return u
}

func TestFailsOverToTheNextCoordinator(t *testing.T) {
	live := &coordinator{}
	addrs := []string{deadAddr(t), serve(t, live)}
	c, err := New(addrs, Credentials{JoinToken: "join-secret"}, Options{HTTPClient: h2c(), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.cur = 0 // start at the dead one
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Register(ctx, &captainv1.RegisterRequest{Hostname: "web-1"})
	if err != nil || res.GetHostId() != "h1" {
		t.Fatalf("Register = %v, %v", res, err)
	}
	c.SetCredentials(Credentials{HostID: res.GetHostId(), HostSecret: res.GetHostSecret()})
	if _, err := c.Heartbeat(ctx, &captainv1.HeartbeatRequest{HostId: "h1"}); err != nil {
		t.Fatal(err)
	}
	live.mu.Lock()
	defer live.mu.Unlock()
	if len(live.auth) != 2 || live.auth[0] != "Bearer join-secret" || live.auth[1] != "Bearer host:h1:s1" {
		t.Fatalf("credentials sent = %v", live.auth)
	}
}

func TestRegisterSendsTheJoinTokenWhileOtherCallsKeepTheHostCredential(t *testing.T) {
	live := &coordinator{}
	c, _ := New([]string{serve(t, live)}, Credentials{JoinToken: "join-secret", HostID: "h1", HostSecret: "old"}, Options{HTTPClient: h2c(), MinBackoff: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Register(ctx, &captainv1.RegisterRequest{HostId: "h1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(ctx, &captainv1.HeartbeatRequest{HostId: "h1"}); err != nil {
		t.Fatal(err)
	}
	live.mu.Lock()
	defer live.mu.Unlock()
	if len(live.auth) != 2 || live.auth[0] != "Bearer join-secret" || live.auth[1] != "Bearer host:h1:old" {
		t.Fatalf("credentials sent = %v, want the join token for Register, the host credential after", live.auth)
	}
}

func TestAuthenticationErrorsAreNotRetried(t *testing.T) {
	live := &coordinator{}
	c, _ := New([]string{serve(t, live)}, Credentials{JoinToken: "wrong"}, Options{HTTPClient: h2c(), MinBackoff: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Register(ctx, &captainv1.RegisterRequest{})
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("err = %v, want Unauthenticated at once", err)
	}
	if len(live.auth) != 1 {
		t.Fatalf("tried %d times, want 1", len(live.auth))
	}
}

func TestGivesUpWithTheLastErrorWhenNoCoordinatorAnswers(t *testing.T) {
	c, _ := New([]string{deadAddr(t), deadAddr(t)}, Credentials{JoinToken: "x"}, Options{HTTPClient: h2c(), MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Heartbeat(ctx, &captainv1.HeartbeatRequest{})
	if !errors.Is(err, context.DeadlineExceeded) || !connectRefused(err) {
		t.Fatalf("err = %v, want the deadline with the last connection error", err)
	}
}

func connectRefused(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "unavailable"))
}

func TestWatchResumesAfterTheLastAcceptedIndexOnAnotherNode(t *testing.T) {
	states := []*captainv1.WatchResponse{{Index: 3}, {Index: 5}, {Index: 9}}
	first := &coordinator{states: states, breakAt: 2}
	second := &coordinator{states: states}
	c, _ := New([]string{serve(t, first), serve(t, second)}, Credentials{HostID: "h1", HostSecret: "s1"},
		Options{HTTPClient: h2c(), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	c.cur = 0
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []uint64
	stop := errors.New("seen all")
	err := c.Watch(ctx, "h1", 0, func(w *captainv1.WatchResponse) error {
		got = append(got, w.GetIndex())
		if w.GetIndex() == 9 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Watch = %v", err)
	}
	if len(got) != 3 || got[0] != 3 || got[1] != 5 || got[2] != 9 {
		t.Fatalf("states handed over = %v, want [3 5 9] exactly once each", got)
	}
	second.mu.Lock()
	defer second.mu.Unlock()
	if len(second.watches) != 1 || second.watches[0] != 5 {
		t.Fatalf("second node was asked for states after %v, want [5]", second.watches)
	}
}

func TestBackoffStaysWithinBounds(t *testing.T) {
	c, _ := New([]string{"http://x"}, Credentials{}, Options{HTTPClient: h2c(), MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	for n := 0; n < 40; n++ {
		if d := c.Backoff(n); d < 50*time.Millisecond || d > 1050*time.Millisecond {
			t.Fatalf("Backoff(%d) = %s out of [50ms, 1.05s]", n, d)
		}
	}
}

func TestHeartbeatsGoToTheLeaderAFollowerNames(t *testing.T) {
	tests := []struct {
		name string
		// named returns what the follower puts in its leader header, given the leader's URL.
		named        func(leaderURL string) string
		wantLeader   int // heartbeats the leader receives of the 5 after the first
		killLeader   bool
		wantFollower int
	}{
		{name: "configured leader", named: func(u string) string { return u + "/" }, wantLeader: 5},
		{name: "address not in the config is ignored", named: func(string) string { return "http://203.0.113.9:7400" }, wantFollower: 5},
		{name: "a dead leader is dropped", named: func(u string) string { return u }, killLeader: true, wantFollower: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leader := &coordinator{}
			leaderURL := serve(t, leader)
			follower := &coordinator{leader: tt.named(leaderURL)}
			followerURL := serve(t, follower)
			c, err := New([]string{followerURL, leaderURL}, Credentials{HostID: "h1", HostSecret: "s1"}, Options{HTTPClient: h2c(), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			c.cur = 0
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := c.Heartbeat(ctx, &captainv1.HeartbeatRequest{HostId: "h1"}); err != nil {
				t.Fatal(err)
			}
			if tt.killLeader {
				c.mu.Lock()
				c.leader = deadAddr(t) // the leader died; pretend it was configured
				c.addrs[1] = c.leader
				c.mu.Unlock()
			}
			for range 5 {
				if _, err := c.Heartbeat(ctx, &captainv1.HeartbeatRequest{HostId: "h1"}); err != nil {
					t.Fatal(err)
				}
			}
			if got := leader.heartbeats(); got != tt.wantLeader {
				t.Errorf("leader got %d heartbeats after the first, want %d", got, tt.wantLeader)
			}
			if got := follower.heartbeats() - 1; got != tt.wantFollower {
				t.Errorf("follower got %d heartbeats after the first, want %d", got, tt.wantFollower)
			}
			// Watches stay where the agent is, not on the leader.
			if addr, _, _ := c.pick(false, false); addr != followerURL {
				t.Errorf("watch goes to %s, want the follower %s", addr, followerURL)
			}
		})
	}
}
