package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/agent/agentclient"
	"github.com/captain-cd/captain/integration/harness"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// benchCluster is a 3-node cluster with an admin view of it.
type benchCluster struct {
	*harness.Cluster
	http *http.Client
}

// startCluster starts three captaind with quiet logs: the harness asks for debug logs, which
// at thousands of requests a second would measure the logger, and the last flag wins.
func startCluster(t *testing.T, e *env, extra ...string) *benchCluster {
	t.Helper()
	c := harness.StartClusterArgs(t, e.bins, 3, append([]string{"--log-level", "warn"}, extra...)...)
	e.track(c)
	t.Cleanup(func() { e.untrack(c) })
	hc, err := (&clientcfg.Config{Addr: c.Nodes[0].URL()}).HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	return &benchCluster{Cluster: c, http: hc}
}

func (c *benchCluster) opts() connect.ClientOption {
	return connect.WithInterceptors(clientcfg.BearerInterceptor(c.AdminToken))
}

func (c *benchCluster) clusterClient(base string) captainv1connect.ClusterServiceClient {
	return captainv1connect.NewClusterServiceClient(c.http, base, c.opts())
}

// leaderURL asks the cluster which node leads and returns that node's API URL.
func (c *benchCluster) leaderURL(ctx context.Context) (string, error) {
	var last error
	for _, n := range c.Nodes {
		if ok, _ := n.Exited(); ok {
			continue
		}
		res, err := c.clusterClient(n.URL()).GetLeader(ctx, connect.NewRequest(&captainv1.GetLeaderRequest{}))
		if err != nil {
			last = err
			continue
		}
		if a := res.Msg.GetLeader().GetApiAddress(); a != "" {
			if !strings.Contains(a, "://") {
				a = "http://" + a
			}
			return a, nil
		}
	}
	return "", fmt.Errorf("no node names a leader (last error: %w)", last)
}

// commitIndex is the leader's commit index: every Raft entry written moves it.
func (c *benchCluster) commitIndex(ctx context.Context) (uint64, error) {
	leader, err := c.leaderURL(ctx)
	if err != nil {
		return 0, err
	}
	res, err := c.clusterClient(leader).GetLeader(ctx, connect.NewRequest(&captainv1.GetLeaderRequest{}))
	if err != nil {
		return 0, fmt.Errorf("GetLeader on %s: %w", leader, err)
	}
	return res.Msg.GetCommitIndex(), nil
}

// hosts lists every host as the leader sees it (liveness lives in leader memory).
func (c *benchCluster) hosts(ctx context.Context) ([]*captainv1.Host, error) {
	leader, err := c.leaderURL(ctx)
	if err != nil {
		return nil, err
	}
	cl := captainv1connect.NewHostServiceClient(c.http, leader, c.opts())
	res, err := cl.ListHosts(ctx, connect.NewRequest(&captainv1.ListHostsRequest{Read: &captainv1.ReadOptions{Consistent: true}}))
	if err != nil {
		return nil, fmt.Errorf("ListHosts on %s: %w", leader, err)
	}
	return res.Msg.GetHosts(), nil
}

// simAgent is one simulated host: the agent's real client, without a deploy loop.
type simAgent struct {
	id     string
	client *agentclient.Client
}

// httpPool is the set of HTTP clients the simulated agents share. One client per agent would
// mean 10,000 connections and file descriptors in this process; one client for all would
// multiplex everything over a single HTTP/2 connection per node, which no real fleet does. A
// few dozen transports keep the server's connection handling in the measurement.
func httpPool(n int) ([]*http.Client, error) {
	out := make([]*http.Client, n)
	for i := range out {
		hc, err := (&clientcfg.Config{Addr: "http://127.0.0.1"}).HTTPClient()
		if err != nil {
			return nil, fmt.Errorf("http client: %w", err)
		}
		out[i] = hc
	}
	return out, nil
}

// registerFleet registers n simulated agents, spread over every node (each agentclient starts
// at a random address; followers forward registrations to the leader). ready, when set, is
// called as each agent registers, so its heartbeats can start before its TTL runs out while
// the rest of a large fleet is still registering.
func registerFleet(ctx context.Context, c *benchCluster, n int, labels func(i int) map[string]string, ready func(i int, a *simAgent)) ([]*simAgent, error) {
	pool, err := httpPool(32)
	if err != nil {
		return nil, err
	}
	agents := make([]*simAgent, n)
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				cl, err := agentclient.New(c.Addrs(), agentclient.Credentials{JoinToken: c.AdminToken}, agentclient.Options{HTTPClient: pool[i%len(pool)]})
				if err == nil {
					var res *captainv1.RegisterResponse
					res, err = cl.Register(ctx, &captainv1.RegisterRequest{Hostname: fmt.Sprintf("sim-%05d", i), Labels: labels(i), AgentVersion: "bench", RequestId: fmt.Sprintf("bench-%d-%05d", os.Getpid(), i)})
					if err == nil {
						cl.SetCredentials(agentclient.Credentials{HostID: res.GetHostId(), HostSecret: res.GetHostSecret()})
						agents[i] = &simAgent{id: res.GetHostId(), client: cl}
						if ready != nil {
							ready(i, agents[i])
						}
					}
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("register agent %d: %w", i, err):
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case work <- i:
		case err := <-errs:
			close(work)
			wg.Wait()
			return nil, err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	return agents, nil
}
