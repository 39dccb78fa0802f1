// Package agentclient is the agent's connection to the coordinator cluster: it speaks
// AgentService to any of several coordinator addresses, moves on to the next one when a node is
// unreachable, and backs off with jitter so a fleet of agents does not stampede a recovering
// cluster.
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// Credentials authenticate an agent: a join token (role agent) until registered, then the
// per-host credential.
type Credentials struct {
	JoinToken  string
	HostID     string
	HostSecret string
}

// Bearer is the token the next call sends (Register sends the join token when there is one).
func (c Credentials) Bearer() string {
	if c.HostID != "" && c.HostSecret != "" {
		return "host:" + c.HostID + ":" + c.HostSecret
	}
	return c.JoinToken
}

// Client talks to the coordinators.
type Client struct {
	addrs []string
	http  *http.Client
	minBO time.Duration
	maxBO time.Duration
	mu    sync.Mutex
	cur   int
	// leader is the coordinator a follower named as leader (see api.LeaderHeader), where
	// calls that only the leader serves go first; "" until named, and after it failed.
	leader string
	creds  Credentials
	client map[string]captainv1connect.AgentServiceClient
}

// Options tune a Client.
type Options struct {
	// HTTPClient must speak HTTP/2 for Watch (h2c for plain http).
	HTTPClient *http.Client
	// MinBackoff and MaxBackoff bound the wait between failed attempts (defaults 200ms, 15s).
	MinBackoff, MaxBackoff time.Duration
}

// New returns a client for the given coordinator base URLs ("http://10.0.0.1:7400").
func New(addrs []string, creds Credentials, opts Options) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no coordinator addresses: set coordinators in the agent config")
	}
	if opts.HTTPClient == nil {
		return nil, errors.New("agentclient: an HTTP client is required")
	}
	c := &Client{
		addrs: append([]string(nil), addrs...), http: opts.HTTPClient, creds: creds,
		minBO: opts.MinBackoff, maxBO: opts.MaxBackoff, client: map[string]captainv1connect.AgentServiceClient{},
	}
	if c.minBO <= 0 {
		c.minBO = 200 * time.Millisecond
	}
	if c.maxBO <= 0 {
		c.maxBO = 15 * time.Second
	}
	// Agents start at different addresses so load spreads over the cluster.
	c.cur = rand.IntN(len(c.addrs))
	return c, nil
}

// SetCredentials switches to the per-host credential after registration.
func (c *Client) SetCredentials(creds Credentials) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.creds = creds
}

// pick returns the current coordinator and the bearer token to send: the join token for a
// registration (so a re-registration needs no switch of credentials that other calls in
// flight would see), the host credential for everything else.
func (c *Client) pick(register, toLeader bool) (string, captainv1connect.AgentServiceClient, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	addr := c.addrs[c.cur%len(c.addrs)]
	if toLeader && c.leader != "" {
		addr = c.leader
	}
	cl := c.client[addr]
	if cl == nil {
		cl = captainv1connect.NewAgentServiceClient(c.http, strings.TrimRight(addr, "/"))
		c.client[addr] = cl
	}
	if register && c.creds.JoinToken != "" {
		return addr, cl, c.creds.JoinToken
	}
	return addr, cl, c.creds.Bearer()
}

// next moves to the next coordinator after addr failed (unless another call moved already).
func (c *Client) next(failed string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader == failed {
		c.leader = ""
	}
	if c.addrs[c.cur%len(c.addrs)] == failed {
		c.cur++
	}
}

// leaderHeader is api.LeaderHeader (the agent does not import the coordinator).
const leaderHeader = "Captain-Leader"

// noteLeader remembers the leader a follower named, when it is one of the configured
// coordinators: the agent sends its credential only to addresses its config names.
func (c *Client) noteLeader(named string) {
	if named == "" {
		return
	}
	named = strings.TrimRight(named, "/")
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.addrs {
		if strings.TrimRight(a, "/") == named {
			c.leader = a
			return
		}
	}
}

// Backoff returns the wait before attempt n (0-based): exponential with full jitter.
func (c *Client) Backoff(n int) time.Duration {
	d := c.minBO << min(n, 16)
	if d > c.maxBO || d <= 0 {
		d = c.maxBO
	}
	return time.Duration(rand.Int64N(int64(d))) + c.minBO/2
}

// retryable says whether another coordinator may answer where this one did not.
func retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeDeadlineExceeded, connect.CodeAborted, connect.CodeInternal:
		return true
	}
	return false
}

// unary calls fn against the current coordinator, moving through the list with backoff until it
// succeeds, fails for a reason another node would share (bad credentials, bad request), or ctx ends.
func unary[Req, Res any](ctx context.Context, c *Client, register bool, call func(captainv1connect.AgentServiceClient) func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error), msg *Req) (*Res, error) {
	var last error
	for attempt := 0; ; attempt++ {
		// Every unary agent call is served by the leader; followers forward it.
		addr, cl, bearer := c.pick(register, true)
		req := connect.NewRequest(msg)
		if bearer != "" {
			req.Header().Set("Authorization", "Bearer "+bearer)
		}
		res, err := call(cl)(ctx, req)
		if err == nil {
			c.noteLeader(res.Header().Get(leaderHeader))
			return res.Msg, nil
		}
		if ctx.Err() != nil {
			if last == nil {
				last = err
			}
			return nil, fmt.Errorf("%w (last error from %s: %v)", ctx.Err(), addr, last)
		}
		if !retryable(err) {
			return nil, fmt.Errorf("coordinator %s: %w", addr, err)
		}
		last = err
		c.next(addr)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last error from %s: %v)", ctx.Err(), addr, last)
		case <-time.After(c.Backoff(attempt)):
		}
	}
}

// Register registers the host; it retries across coordinators until ctx ends.
func (c *Client) Register(ctx context.Context, req *captainv1.RegisterRequest) (*captainv1.RegisterResponse, error) {
	return unary(ctx, c, true, func(cl captainv1connect.AgentServiceClient) func(context.Context, *connect.Request[captainv1.RegisterRequest]) (*connect.Response[captainv1.RegisterResponse], error) {
		return cl.Register
	}, req)
}

// Heartbeat sends one heartbeat.
func (c *Client) Heartbeat(ctx context.Context, req *captainv1.HeartbeatRequest) (*captainv1.HeartbeatResponse, error) {
	return unary(ctx, c, false, func(cl captainv1connect.AgentServiceClient) func(context.Context, *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
		return cl.Heartbeat
	}, req)
}

// Report sends a batch of events and returns the highest sequence stored.
func (c *Client) Report(ctx context.Context, req *captainv1.ReportRequest) (*captainv1.ReportResponse, error) {
	return unary(ctx, c, false, func(cl captainv1connect.AgentServiceClient) func(context.Context, *connect.Request[captainv1.ReportRequest]) (*connect.Response[captainv1.ReportResponse], error) {
		return cl.Report
	}, req)
}

// Watch streams desired states to fn until ctx ends or fn fails, reconnecting (to the next
// coordinator, with backoff) whenever a stream breaks. It resumes after the last index fn
// accepted, so no state is skipped and none is handed over twice.
func (c *Client) Watch(ctx context.Context, hostID string, after uint64, fn func(*captainv1.WatchResponse) error) error {
	failures := 0
	for {
		// Watches stay spread over the cluster: any node serves them from its own state.
		addr, cl, bearer := c.pick(false, false)
		req := connect.NewRequest(&captainv1.WatchRequest{HostId: hostID, AfterIndex: after})
		if bearer != "" {
			req.Header().Set("Authorization", "Bearer "+bearer)
		}
		stream, err := cl.Watch(ctx, req)
		if err == nil {
			for stream.Receive() {
				msg := stream.Msg()
				if msg.GetIndex() <= after {
					continue
				}
				if err := fn(msg); err != nil {
					_ = stream.Close()
					return err
				}
				after = msg.GetIndex()
				failures = 0
			}
			err = stream.Err()
			_ = stream.Close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !retryable(err) {
			return fmt.Errorf("watch on %s: %w", addr, err)
		}
		c.next(addr)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.Backoff(failures)):
		}
		failures++
	}
}
