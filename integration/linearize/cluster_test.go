package linearize

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/integration/harness"
	"github.com/captain-cd/captain/integration/netns"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// node is one captaind of the cluster, on loopback or alone in a network namespace.
type node struct {
	id       string
	apiAddr  string
	raftAddr string
	dataDir  string
	host     *netns.Host // nil on loopback

	mu   sync.Mutex
	proc *harness.Process
}

func (n *node) url() string { return "http://" + n.apiAddr }

// running reports whether the node's process is up.
func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return false
	}
	done, _ := n.proc.Exited()
	return !done
}

// cluster is three captaind started for the linearizability runs. It is not harness.Cluster
// because with namespaces every node runs inside its own host, through `ip netns exec`.
type cluster struct {
	t         *testing.T
	bins      harness.Bins
	net       *netns.Net // nil on loopback: no partitions then
	nodes     []*node
	token     string
	tokenFile string
	http      *http.Client
}

// startCluster starts three nodes: in network namespaces when this machine can make them
// (root, ip, nft), so partitions are possible; on loopback otherwise, with leader kills only.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	bins := harness.Binaries(t)
	c := &cluster{t: t, bins: bins, token: "cpt_admin_" + randomHex(16)}
	dir := t.TempDir()
	c.tokenFile = filepath.Join(dir, "admin.token")
	if err := os.WriteFile(c.tokenFile, []byte(c.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := netns.Available(); err == nil {
		c.net = netns.New(t)
	} else {
		t.Logf("partitions off, leader kills only: %v", err)
	}
	for i := range 3 {
		n := &node{id: fmt.Sprintf("n%d", i+1), dataDir: filepath.Join(dir, fmt.Sprintf("n%d", i+1))}
		if c.net != nil {
			n.host = c.net.AddHost(t, n.id)
			n.apiAddr, n.raftAddr = n.host.IP+":7400", n.host.IP+":7401"
		} else {
			n.apiAddr, n.raftAddr = harness.FreeAddr(t), harness.FreeAddr(t)
		}
		c.nodes = append(c.nodes, n)
	}
	hc, err := (&clientcfg.Config{Addr: c.nodes[0].url()}).HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	c.http = hc
	for i, n := range c.nodes {
		c.start(n, i == 0)
		// The next node joins through this one, so it must be serving first.
		c.waitReady(t, n, 30*time.Second)
	}
	return c
}

func (c *cluster) start(n *node, bootstrap bool) {
	args := []string{"--node-id", n.id, "--data-dir", n.dataDir, "--raft-addr", n.raftAddr, "--api-addr", n.apiAddr}
	if bootstrap {
		args = append(args, "--bootstrap", "--initial-admin-token-file", c.tokenFile)
	} else {
		var peers []string
		for _, o := range c.nodes {
			if o != n {
				peers = append(peers, o.apiAddr)
			}
		}
		args = append(args, "--join", strings.Join(peers, ","), "--join-token-file", c.tokenFile)
	}
	// Writes wait less for an election than by default, and snapshots are frequent, so restarted
	// nodes also catch up from snapshots, not only from the log.
	args = append(args, "--log-level", "warn", "--election-wait", "3s",
		"--snapshot-threshold", "200", "--snapshot-interval", "1s", "--snapshot-trailing-logs", "50")
	bin := c.bins.Captaind
	if n.host != nil {
		// `ip netns exec` execs captaind in place: the PID, and the process group the harness
		// kills, are captaind's.
		args = append([]string{"netns", "exec", n.host.NS, bin}, args...)
		bin = "ip"
	}
	p := harness.Start(c.t, "captaind "+n.id, bin, nil, args...)
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
}

func (c *cluster) waitReady(t testing.TB, n *node, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := harness.WaitReady(ctx, n.url()); err != nil {
		t.Fatalf("node %s not ready: %v", n.id, err)
	}
}

// kill sends SIGKILL to a node.
func (c *cluster) kill(n *node) {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// restart starts a killed node again from its data directory. The process belongs to the
// whole test (it outlives the run that restarted it).
func (c *cluster) restart(n *node) {
	if n.running() {
		return
	}
	c.start(n, false)
}

func (c *cluster) opts() connect.ClientOption {
	return connect.WithInterceptors(clientcfg.BearerInterceptor(c.token))
}

// leader returns the node the running nodes name as leader in the highest term they know.
func (c *cluster) leader(ctx context.Context) (*node, error) {
	var best *node
	var bestTerm uint64
	var errs []error
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		res, err := captainv1connect.NewClusterServiceClient(c.http, n.url(), c.opts()).GetLeader(cctx, connect.NewRequest(&captainv1.GetLeaderRequest{}))
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.id, err))
			continue
		}
		id := res.Msg.GetLeader().GetId()
		for _, m := range c.nodes {
			if m.id == id && id != "" && (best == nil || res.Msg.GetTerm() > bestTerm) {
				best, bestTerm = m, res.Msg.GetTerm()
			}
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no node names a leader: %w", errors.Join(errs...))
	}
	return best, nil
}

// healthy waits until every node runs, no partition is left, and every node knows the same
// leader: the state a run starts from.
func (c *cluster) healthy(t testing.TB, within time.Duration) {
	t.Helper()
	if c.net != nil {
		c.net.HealAll(t)
	}
	for _, n := range c.nodes {
		c.restart(n)
	}
	for _, n := range c.nodes {
		c.waitReady(t, n, within)
	}
	harness.Eventually(t, within, "every node names the same leader", func() bool {
		ids := map[string]bool{}
		for _, n := range c.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			res, err := captainv1connect.NewClusterServiceClient(c.http, n.url(), c.opts()).GetLeader(ctx, connect.NewRequest(&captainv1.GetLeaderRequest{}))
			cancel()
			if err != nil || res.Msg.GetLeader().GetId() == "" {
				return false
			}
			ids[res.Msg.GetLeader().GetId()] = true
		}
		return len(ids) == 1
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
