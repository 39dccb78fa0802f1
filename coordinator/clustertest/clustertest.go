// Package clustertest runs real coordinator clusters in-process for tests: real Raft over
// loopback TCP, bolt files in t.TempDir(), the real API served over HTTP.
package clustertest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/daemon"
	"github.com/captain-cd/captain/coordinator/state"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// AdminSecret is the initial admin token of every test cluster.
const AdminSecret = "cpt_testadmin_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// Node is one member of a test cluster; D is nil while the node is stopped.
type Node struct {
	ID       string
	DataDir  string
	RaftAddr string
	APIAddr  string

	mu sync.Mutex
	d  *daemon.Daemon
}

// Daemon returns the running daemon, or nil when stopped.
func (n *Node) Daemon() *daemon.Daemon {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.d
}

// Running reports whether the node runs.
func (n *Node) Running() bool { return n.Daemon() != nil }

// State returns the node's current state store.
func (n *Node) State() *state.Store { return n.Daemon().FSM().State() }

// Cluster is a set of in-process coordinator nodes.
type Cluster struct {
	t     testing.TB
	opts  Options
	Nodes []*Node
}

// Options tune a cluster.
type Options struct {
	// Configure edits each node's config before it starts.
	Configure func(i int, cfg *daemon.Config)
	// Prepare runs on every daemon (also after a restart) before it starts, e.g. to add
	// leader tasks.
	Prepare func(n *Node, d *daemon.Daemon)
}

// New starts an n-node cluster: node 0 bootstraps with AdminSecret, the others join through
// node 0's API. It returns once every node is a voter and the member table is replicated.
func New(t testing.TB, n int, opts ...Options) *Cluster {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	c := &Cluster{t: t, opts: o}
	t.Cleanup(c.StopAll)
	for i := range n {
		node := &Node{ID: fmt.Sprintf("node%d", i), DataDir: filepath.Join(t.TempDir(), "data"), RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0"}
		c.Nodes = append(c.Nodes, node)
		cfg := c.config(node)
		if i == 0 {
			cfg.Bootstrap = true
			cfg.InitialAdminSecret = AdminSecret
		} else {
			cfg.Join = []string{c.Nodes[0].APIAddr}
			cfg.JoinToken = AdminSecret
		}
		if o.Configure != nil {
			o.Configure(i, &cfg)
		}
		c.start(node, cfg)
		if i == 0 {
			Eventually(t, 10*time.Second, func() error {
				if _, err := node.State().Snapshot().Token("testadmin"); err != nil {
					return fmt.Errorf("initial admin token not created yet: %w", err)
				}
				return nil
			})
		}
	}
	c.WaitMembers(n)
	return c
}

func (c *Cluster) config(n *Node) daemon.Config {
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("CAPTAIN_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return daemon.Config{
		NodeID: n.ID, DataDir: n.DataDir, RaftAddr: n.RaftAddr, APIAddr: n.APIAddr,
		Logger: logger,
	}
}

func (c *Cluster) start(n *Node, cfg daemon.Config) {
	c.t.Helper()
	d, err := daemon.New(cfg)
	if err != nil {
		c.t.Fatalf("start %s: %v", n.ID, err)
	}
	if c.opts.Prepare != nil {
		c.opts.Prepare(n, d)
	}
	if err := d.Start(context.Background()); err != nil {
		d.Kill()
		c.t.Fatalf("start %s: %v", n.ID, err)
	}
	n.mu.Lock()
	n.d = d
	// Keep the ports so a restart comes back at the same addresses.
	n.RaftAddr, n.APIAddr = d.Node().Addr(), d.APIAddr()
	n.mu.Unlock()
}

// WaitMembers waits until every running node sees n voters, a leader, and n member rows.
func (c *Cluster) WaitMembers(n int) {
	c.t.Helper()
	Eventually(c.t, 15*time.Second, func() error {
		for _, node := range c.Running() {
			servers, err := node.Daemon().Node().Servers()
			if err != nil {
				return err
			}
			if len(servers) != n {
				return fmt.Errorf("%s sees %d servers, want %d", node.ID, len(servers), n)
			}
			ms, err := node.State().Snapshot().Members()
			if err != nil {
				return err
			}
			if len(ms) != n {
				return fmt.Errorf("%s knows %d member addresses, want %d", node.ID, len(ms), n)
			}
			if id, _ := node.Daemon().Node().Leader(); id == "" {
				return fmt.Errorf("%s knows no leader", node.ID)
			}
		}
		return nil
	})
}

// Running returns the running nodes.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Leader waits up to timeout for a running node that leads and that every other running
// node agrees on.
func (c *Cluster) Leader(timeout time.Duration) *Node {
	c.t.Helper()
	var leader *Node
	Eventually(c.t, timeout, func() error {
		leader = nil
		for _, n := range c.Running() {
			if n.Daemon().Node().IsLeader() {
				leader = n
			}
		}
		if leader == nil {
			return fmt.Errorf("no running node leads")
		}
		for _, n := range c.Running() {
			if id, _ := n.Daemon().Node().Leader(); id != leader.ID {
				return fmt.Errorf("%s thinks the leader is %q, not %s", n.ID, id, leader.ID)
			}
		}
		return nil
	})
	return leader
}

// Followers returns the running nodes that are not leader.
func (c *Cluster) Followers() []*Node {
	var out []*Node
	for _, n := range c.Running() {
		if !n.Daemon().Node().IsLeader() {
			out = append(out, n)
		}
	}
	return out
}

// Kill stops a node abruptly: no leadership transfer, transport closed.
func (c *Cluster) Kill(n *Node) {
	n.mu.Lock()
	d := n.d
	n.d = nil
	n.mu.Unlock()
	if d != nil {
		d.Kill()
	}
}

// Stop shuts a node down gracefully, handing leadership over first when it leads.
func (c *Cluster) Stop(n *Node) {
	c.t.Helper()
	n.mu.Lock()
	d := n.d
	n.d = nil
	n.mu.Unlock()
	if d == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Shutdown(ctx, true); err != nil {
		c.t.Errorf("stop %s: %v", n.ID, err)
	}
}

// Restart starts a stopped node again from its data dir at the same addresses.
func (c *Cluster) Restart(n *Node) {
	c.t.Helper()
	if n.Running() {
		c.t.Fatalf("restart %s: still running", n.ID)
	}
	cfg := c.config(n)
	// The same per-node settings as at first start (TLS, heartbeat timing, artifact store…).
	if c.opts.Configure != nil {
		c.opts.Configure(slices.Index(c.Nodes, n), &cfg)
	}
	c.start(n, cfg)
}

// StopAll kills every running node; registered as cleanup.
func (c *Cluster) StopAll() {
	for _, n := range c.Nodes {
		c.Kill(n)
	}
}

// Clients are Connect clients for one node, authenticated with a token.
type Clients struct {
	Pipeline   captainv1connect.PipelineServiceClient
	Release    captainv1connect.ReleaseServiceClient
	Cluster    captainv1connect.ClusterServiceClient
	Token      captainv1connect.TokenServiceClient
	Audit      captainv1connect.AuditServiceClient
	Host       captainv1connect.HostServiceClient
	Alarm      captainv1connect.AlarmServiceClient
	Agent      captainv1connect.AgentServiceClient
	Deployment captainv1connect.DeploymentServiceClient
	Operator   captainv1connect.OperatorServiceClient
}

// Client returns clients for n using token (AdminSecret when empty) and extra options
// (e.g. connect.WithGRPC()).
func (c *Cluster) Client(n *Node, token string, opts ...connect.ClientOption) *Clients {
	if token == "" {
		token = AdminSecret
	}
	cfg := &clientcfg.Config{Addr: n.APIAddr, Token: token}
	hc, err := cfg.HTTPClient()
	if err != nil {
		c.t.Fatalf("client: %v", err)
	}
	return NewClients(hc, cfg.BaseURL(), token, opts...)
}

// NewClients builds clients for any base URL.
func NewClients(hc *http.Client, base, token string, opts ...connect.ClientOption) *Clients {
	opts = append([]connect.ClientOption{connect.WithInterceptors(clientcfg.BearerInterceptor(token))}, opts...)
	return &Clients{
		Pipeline:   captainv1connect.NewPipelineServiceClient(hc, base, opts...),
		Release:    captainv1connect.NewReleaseServiceClient(hc, base, opts...),
		Cluster:    captainv1connect.NewClusterServiceClient(hc, base, opts...),
		Token:      captainv1connect.NewTokenServiceClient(hc, base, opts...),
		Audit:      captainv1connect.NewAuditServiceClient(hc, base, opts...),
		Host:       captainv1connect.NewHostServiceClient(hc, base, opts...),
		Alarm:      captainv1connect.NewAlarmServiceClient(hc, base, opts...),
		Agent:      captainv1connect.NewAgentServiceClient(hc, base, opts...),
		Deployment: captainv1connect.NewDeploymentServiceClient(hc, base, opts...),
		Operator:   captainv1connect.NewOperatorServiceClient(hc, base, opts...),
	}
}

// SaveSnapshot streams a snapshot from n's API into memory.
func (c *Cluster) SaveSnapshot(ctx context.Context, n *Node) ([]byte, error) {
	stream, err := c.Client(n, "").Cluster.SnapshotSave(ctx, connect.NewRequest(&captainv1.SnapshotSaveRequest{}))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var out []byte
	for stream.Receive() {
		out = append(out, stream.Msg().GetChunk()...)
	}
	return out, stream.Err()
}

// RestoreSnapshot uploads a snapshot through n's API.
func (c *Cluster) RestoreSnapshot(ctx context.Context, n *Node, snap io.Reader) (uint64, error) {
	up := c.Client(n, "").Cluster.SnapshotRestore(ctx)
	buf := make([]byte, 256<<10)
	for {
		k, err := snap.Read(buf)
		if k > 0 {
			if serr := up.Send(&captainv1.SnapshotRestoreRequest{Chunk: buf[:k]}); serr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	res, err := up.CloseAndReceive()
	if err != nil {
		return 0, err
	}
	return res.Msg.GetIndex(), nil
}

// Eventually retries cond until it returns nil or timeout passes, then fails the test with
// the last error. It polls; it never sleeps a fixed time and hopes.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := WaitFor(timeout, cond); err != nil {
		t.Fatalf("condition not met within %s: %v", timeout, err)
	}
}

// WaitFor is Eventually returning the error instead of failing.
func WaitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
