package api_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/api"
	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/coordinator/daemon"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// hostClients talks as a registered host.
func hostClients(c *clustertest.Cluster, n *clustertest.Node, id, secret string) *clustertest.Clients {
	return c.Client(n, "host:"+id+":"+secret)
}

func TestAgentLifecycleThroughFollowers(t *testing.T) {
	c := clustertest.New(t, 3, clustertest.Options{Configure: func(_ int, cfg *daemon.Config) {
		cfg.HeartbeatInterval, cfg.HeartbeatTTL = 100*time.Millisecond, 600*time.Millisecond
	}})
	leader := c.Leader(5 * time.Second)
	follower := c.Followers()[0]
	admin := c.Client(leader, "")
	joinToken := newToken(t, admin, "fleet", captainv1.Role_ROLE_AGENT, 0)
	applyPipeline(t, admin, `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: onebox
    environments: [{name: onebox, selector: {role: onebox}}]
`)

	// Register through a follower: forwarded to the leader.
	agent := c.Client(follower, joinToken)
	reg, err := agent.Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: "web-1", Labels: map[string]string{"role": "onebox"}, AgentVersion: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	id, secret := reg.Msg.GetHostId(), reg.Msg.GetHostSecret()
	if !strings.HasPrefix(id, "h-") || secret == "" || reg.Msg.GetHeartbeatInterval().AsDuration() != 100*time.Millisecond {
		t.Fatalf("register = %v", reg.Msg)
	}
	host := hostClients(c, follower, id, secret)

	// Watch through the follower; the first state is empty, then the engine assigns the host.
	wctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	stream, err := host.Agent.Watch(wctx, connect.NewRequest(&captainv1.WatchRequest{HostId: id}))
	if err != nil {
		t.Fatal(err)
	}
	beat := func() error {
		_, err := host.Agent.Heartbeat(ctx(t), connect.NewRequest(&captainv1.HeartbeatRequest{HostId: id}))
		return err
	}
	hb, err := host.Agent.Heartbeat(ctx(t), connect.NewRequest(&captainv1.HeartbeatRequest{HostId: id}))
	if err != nil {
		t.Fatalf("heartbeat through a follower: %v", err)
	}
	// The follower names the leader, so the agent can send its next heartbeats there.
	if got, want := hb.Header().Get(api.LeaderHeader), "http://"+leader.APIAddr; got != want {
		t.Errorf("%s header on a forwarded heartbeat = %q, want %q", api.LeaderHeader, got, want)
	}
	rel, err := admin.Release.CreateRelease(ctx(t), connect.NewRequest(&captainv1.CreateReleaseRequest{
		Pipeline: "web", HeadCommit: strings.Repeat("a", 40),
		Artifact: &captainv1.ArtifactRef{Bucket: "b", Key: "artifacts/web/" + strings.Repeat("1", 64) + ".tar.zst", Sha256: strings.Repeat("1", 64), Size: 1},
	}))
	if err != nil {
		t.Fatal(err)
	}
	var app *captainv1.DesiredApp
	for app == nil && stream.Receive() {
		_ = beat()
		for _, a := range stream.Msg().GetApps() {
			if a.GetRelease() == rel.Msg.GetRelease().GetNumber() {
				app = a
			}
		}
	}
	if app == nil {
		t.Fatalf("no desired app streamed: %v", stream.Err())
	}
	if app.GetDeploy().GetAppRoot() != "/srv/web" || app.GetArtifact().GetSha256() != strings.Repeat("1", 64) || app.GetEnvironment() != "onebox" {
		t.Fatalf("desired app = %v", app)
	}

	// Report healthy; the stage approves (no approval steps) and the host shows the release.
	rep, err := host.Agent.Report(ctx(t), connect.NewRequest(&captainv1.ReportRequest{HostId: id, Events: []*captainv1.HostEvent{{
		Seq: 1, Pipeline: "web", DeploymentId: app.GetDeploymentId(), Release: app.GetRelease(), State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY,
		App: &captainv1.HostApp{Pipeline: "web", CurrentRelease: app.GetRelease(), Health: captainv1.HealthState_HEALTH_STATE_HEALTHY},
	}}}))
	if err != nil || rep.Msg.GetAckedSeq() != 1 {
		t.Fatalf("report = %v, %v", rep, err)
	}
	clustertest.Eventually(t, 10*time.Second, func() error {
		_ = beat()
		st, err := admin.Deployment.GetStatus(ctx(t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
		if err != nil {
			return err
		}
		if lg := st.Msg.GetStages()[0].GetEnvironments()[0].GetLastGoodRelease(); lg != app.GetRelease() {
			return fmt.Errorf("last good %d", lg)
		}
		return nil
	})

	// A host speaks only for itself, and its credential opens nothing else.
	if _, err := host.Agent.Heartbeat(ctx(t), connect.NewRequest(&captainv1.HeartbeatRequest{HostId: "h-000000000000"})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("heartbeat for another host: %v", err)
	}
	if _, err := host.Pipeline.ListPipelines(ctx(t), connect.NewRequest(&captainv1.ListPipelinesRequest{})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("host credential listing pipelines: %v", err)
	}
	if _, err := hostClients(c, leader, id, "wrong").Agent.Heartbeat(ctx(t), connect.NewRequest(&captainv1.HeartbeatRequest{HostId: id})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("wrong secret: %v", err)
	}
	viewer, _ := admin.Token.CreateToken(ctx(t), connect.NewRequest(&captainv1.CreateTokenRequest{Name: "v", Role: captainv1.Role_ROLE_VIEWER}))
	if _, err := c.Client(leader, viewer.Msg.GetSecret()).Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: "x"})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("viewer registering a host: %v", err)
	}
	if _, err := agent.Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: "x", Labels: map[string]string{"az": "not ok!"}})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad label: %v", err)
	}

	// Silence: the host goes down after its TTL, then comes back with the next heartbeat.
	liveness := func() captainv1.Liveness {
		h, err := admin.Host.GetHost(ctx(t), connect.NewRequest(&captainv1.GetHostRequest{Id: id}))
		if err != nil {
			return captainv1.Liveness_LIVENESS_UNSPECIFIED
		}
		return h.Msg.GetHost().GetLiveness()
	}
	clustertest.Eventually(t, 10*time.Second, func() error {
		if l := liveness(); l != captainv1.Liveness_LIVENESS_DOWN {
			return fmt.Errorf("liveness %s", l)
		}
		return nil
	})
	if err := beat(); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 10*time.Second, func() error {
		if l := liveness(); l != captainv1.Liveness_LIVENESS_UP {
			return fmt.Errorf("liveness %s", l)
		}
		return nil
	})
}

func TestRetriedRegistrationLandsOnTheSameHost(t *testing.T) {
	c := clustertest.New(t, 1)
	n := c.Leader(5 * time.Second)
	admin := c.Client(n, "")
	joinToken := newToken(t, admin, "fleet", captainv1.Role_ROLE_AGENT, 0)
	agent := c.Client(n, joinToken)
	req := &captainv1.RegisterRequest{Hostname: "web-1", RequestId: "attempt-7f3a"}
	first, err := agent.Agent.Register(ctx(t), connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	// The agent never saw the answer (a timeout) and retries the same request.
	again, err := agent.Agent.Register(ctx(t), connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	if again.Msg.GetHostId() != first.Msg.GetHostId() {
		t.Fatalf("retry registered %s, first %s: want the same host", again.Msg.GetHostId(), first.Msg.GetHostId())
	}
	other, err := agent.Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: "web-2", RequestId: "attempt-9c01"}))
	if err != nil || other.Msg.GetHostId() == first.Msg.GetHostId() {
		t.Fatalf("another request ID gave %v, %v; want a new host", other, err)
	}
	hosts, err := admin.Host.ListHosts(ctx(t), connect.NewRequest(&captainv1.ListHostsRequest{}))
	if err != nil || len(hosts.Msg.GetHosts()) != 2 {
		t.Fatalf("hosts = %v, %v; want exactly 2", hosts, err)
	}
	// Only the newest secret works: the retry replaced the one the agent never received.
	if _, err := hostClients(c, n, first.Msg.GetHostId(), again.Msg.GetHostSecret()).Agent.Heartbeat(ctx(t),
		connect.NewRequest(&captainv1.HeartbeatRequest{HostId: first.Msg.GetHostId()})); err != nil {
		t.Fatalf("heartbeat with the retry's secret: %v", err)
	}
}

func TestConcurrentReportsShareRaftEntries(t *testing.T) {
	c := clustertest.New(t, 1)
	n := c.Leader(5 * time.Second)
	admin := c.Client(n, "")
	joinToken := newToken(t, admin, "fleet", captainv1.Role_ROLE_AGENT, 0)
	const hosts = 40
	type cred struct{ id, secret string }
	creds := make([]cred, hosts)
	for i := range creds {
		reg, err := c.Client(n, joinToken).Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: fmt.Sprint("h", i)}))
		if err != nil {
			t.Fatal(err)
		}
		creds[i] = cred{reg.Msg.GetHostId(), reg.Msg.GetHostSecret()}
	}
	before := n.State().Index()
	var wg sync.WaitGroup
	acked := make([]uint64, hosts)
	errs := make([]error, hosts)
	for i, cr := range creds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := hostClients(c, n, cr.id, cr.secret).Agent.Report(ctx(t), connect.NewRequest(&captainv1.ReportRequest{HostId: cr.id, Events: []*captainv1.HostEvent{
				{Seq: 1, Pipeline: "web", Message: "one"}, {Seq: 2, Pipeline: "web", Message: "two"},
			}}))
			if err == nil {
				acked[i] = res.Msg.GetAckedSeq()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i := range creds {
		if errs[i] != nil || acked[i] != 2 {
			t.Fatalf("host %d: acked %d, err %v; want 2", i, acked[i], errs[i])
		}
	}
	entries := n.State().Index() - before
	if entries >= hosts/2 {
		t.Fatalf("%d concurrent reports took %d Raft entries; want them batched into far fewer", hosts, entries)
	}
	t.Logf("%d concurrent reports in %d Raft entries", hosts, entries)
}
