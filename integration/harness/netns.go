package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/integration/netns"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// Ports every namespaced coordinator uses on its own address; a namespace has no other
// listeners, so they are always free.
const (
	nsAPIPort  = "7400"
	nsRaftPort = "7401"
)

// StartIn is Start for a process inside host's network namespace.
func StartIn(t testing.TB, host *netns.Host, name, bin string, env []string, args ...string) *Process {
	t.Helper()
	return launch(t, name, bin, host.Command(context.Background(), bin, args...), env, args)
}

// StartClusterOn starts one coordinator in each host, each binding its API and Raft addresses
// to its host's IP, with extra flags for every node; the first bootstraps, the others join. It
// returns once every node reports ready. The test process reaches every node through the
// bridge; nftables rules of the net cut the nodes off from each other.
func StartClusterOn(t testing.TB, bins Bins, hosts []*netns.Host, extra ...string) *Cluster {
	t.Helper()
	c := newCluster(t, bins, extra)
	for i, h := range hosts {
		id := fmt.Sprintf("n%d", i+1)
		node := &Node{
			ID:       id,
			APIAddr:  net.JoinHostPort(h.IP, nsAPIPort),
			RaftAddr: net.JoinHostPort(h.IP, nsRaftPort),
			DataDir:  filepath.Join(c.dir, id),
			Host:     h,
		}
		c.startNode(node, i == 0)
		c.Nodes = append(c.Nodes, node)
	}
	c.waitAllReady()
	return c
}

// StartClusterAuto starts n coordinators in network namespaces of a fresh net when
// netns.Available, else on loopback. The net is nil on loopback; why is in the error.
func StartClusterAuto(t testing.TB, bins Bins, n int, extra ...string) (*Cluster, *netns.Net, error) {
	t.Helper()
	if err := netns.Available(); err != nil {
		return StartClusterArgs(t, bins, n, extra...), nil, err
	}
	nw := netns.New(t)
	hosts := make([]*netns.Host, n)
	for i := range hosts {
		hosts[i] = nw.AddHost(t, fmt.Sprintf("n%d", i+1))
	}
	return StartClusterOn(t, bins, hosts, extra...), nw, nil
}

func newCluster(t testing.TB, bins Bins, extra []string) *Cluster {
	t.Helper()
	c := &Cluster{Bins: bins, t: t, dir: t.TempDir(), AdminToken: "cpt_admin_" + randomHex(16), extra: extra}
	c.tokenFile = filepath.Join(c.dir, "admin.token")
	if err := os.WriteFile(c.tokenFile, []byte(c.AdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *Cluster) waitAllReady() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, node := range c.Nodes {
		if err := WaitReady(ctx, node.URL()); err != nil {
			c.t.Fatalf("node %s not ready: %v", node.ID, err)
		}
	}
}

// Auth adds the cluster's admin token to every unary call of a Connect client.
func (c *Cluster) Auth() connect.ClientOption {
	token := c.AdminToken
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	}))
}

// Leader asks the nodes in running, in order, who leads, and returns the leader only when the
// node it names agrees it is the leader.
func (c *Cluster) Leader(ctx context.Context, running []*Node) (*Node, error) {
	var errs []error
	byID := map[string]*Node{}
	for _, n := range running {
		byID[n.ID] = n
	}
	for _, n := range running {
		client := captainv1connect.NewClusterServiceClient(http.DefaultClient, n.URL(), c.Auth())
		res, err := client.GetLeader(ctx, connect.NewRequest(&captainv1.GetLeaderRequest{}))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.ID, err))
			continue
		}
		id := res.Msg.GetLeader().GetId()
		leader := byID[id]
		if leader == nil {
			errs = append(errs, fmt.Errorf("%s names leader %q, not among the running nodes", n.ID, id))
			continue
		}
		if leader == n {
			return leader, nil
		}
	}
	return nil, fmt.Errorf("no running node says it leads: %w", errors.Join(errs...))
}

// WaitLeader waits up to within for a leader among running.
func (c *Cluster) WaitLeader(within time.Duration, running []*Node) *Node {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		leader, err := c.Leader(ctx, running)
		cancel()
		if err == nil {
			return leader
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("after %s no leader among %d nodes: %v", within, len(running), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
