package api_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/clustertest"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// playAgent registers a host and, like a healthy agent, reports every desired app it is given
// as deployed and healthy, until the test ends.
func playAgent(t *testing.T, c *clustertest.Cluster, joinToken string, labels map[string]string) string {
	t.Helper()
	return playAgentHolding(t, c, joinToken, labels, 0)
}

// playAgentHolding is playAgent with a hang: deployments of release hold are never reported,
// so they stay in progress.
func playAgentHolding(t *testing.T, c *clustertest.Cluster, joinToken string, labels map[string]string, hold uint64) string {
	t.Helper()
	n := c.Leader(5 * time.Second)
	reg, err := c.Client(n, joinToken).Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: "h", Labels: labels}))
	if err != nil {
		t.Fatal(err)
	}
	id := reg.Msg.GetHostId()
	host := hostClients(c, n, id, reg.Msg.GetHostSecret())
	wctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		seq := uint64(0)
		done := map[string]bool{}
		for wctx.Err() == nil {
			stream, err := host.Agent.Watch(wctx, connect.NewRequest(&captainv1.WatchRequest{HostId: id}))
			if err != nil {
				continue
			}
			for stream.Receive() {
				_, _ = host.Agent.Heartbeat(wctx, connect.NewRequest(&captainv1.HeartbeatRequest{HostId: id}))
				for _, a := range stream.Msg().GetApps() {
					if done[a.GetDeploymentId()] || (hold != 0 && a.GetRelease() == hold) {
						continue
					}
					seq++
					_, err := host.Agent.Report(wctx, connect.NewRequest(&captainv1.ReportRequest{HostId: id, Events: []*captainv1.HostEvent{{
						Seq: seq, Pipeline: a.GetPipeline(), DeploymentId: a.GetDeploymentId(), Release: a.GetRelease(),
						State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY,
						App:   &captainv1.HostApp{Pipeline: a.GetPipeline(), CurrentRelease: a.GetRelease(), Health: captainv1.HealthState_HEALTH_STATE_HEALTHY},
					}}}))
					if err == nil {
						done[a.GetDeploymentId()] = true
					}
				}
			}
		}
	}()
	return id
}

func TestRollbackOverTheAPI(t *testing.T) {
	c := clustertest.New(t, 3)
	leader := c.Leader(5 * time.Second)
	admin := c.Client(leader, "")
	mk := func(name string, role captainv1.Role) string { return newToken(t, admin, name, role, 0) }
	join, viewerTok, deployerTok := mk("fleet", captainv1.Role_ROLE_AGENT), mk("vera", captainv1.Role_ROLE_VIEWER), mk("dana", captainv1.Role_ROLE_DEPLOYER)
	applyPipeline(t, admin, `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: zone1
    environments: [{name: zone1, selector: {az: z1}}]
`)
	for i := 0; i < 2; i++ {
		playAgent(t, c, join, map[string]string{"az": "z1"})
	}
	release := func(n int) {
		sha := strings.Repeat(fmt.Sprint(n), 64)
		if _, err := admin.Release.CreateRelease(ctx(t), connect.NewRequest(&captainv1.CreateReleaseRequest{
			Pipeline: "web", HeadCommit: strings.Repeat(fmt.Sprint(n), 40),
			Artifact: &captainv1.ArtifactRef{Bucket: "b", Key: "artifacts/web/" + sha + ".tar.zst", Sha256: sha, Size: 1},
		})); err != nil {
			t.Fatal(err)
		}
		clustertest.Eventually(t, 15*time.Second, func() error {
			st, err := admin.Deployment.GetStatus(ctx(t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
			if err != nil {
				return err
			}
			if lg := st.Msg.GetStages()[0].GetEnvironments()[0].GetLastGoodRelease(); lg != uint64(n) {
				return fmt.Errorf("last good %d, want %d", lg, n)
			}
			return nil
		})
	}
	release(1)
	release(2)
	follower := c.Followers()[0]
	dana := c.Client(follower, deployerTok)
	target := &captainv1.RollbackTarget{Pipeline: "web", Environments: []string{"zone1"}, ToRelease: 1}

	cases := []struct {
		name   string
		client *clustertest.Clients
		target *captainv1.RollbackTarget
		code   connect.Code
		says   string
	}{
		{"viewer may not roll back", c.Client(follower, viewerTok), target, connect.CodePermissionDenied, "needs role deployer"},
		{"unknown environment", dana, &captainv1.RollbackTarget{Pipeline: "web", Environments: []string{"mars"}}, connect.CodeNotFound, `environment "mars"`},
		{"unknown pipeline", dana, &captainv1.RollbackTarget{Pipeline: "api", Stages: []string{"zone1"}}, connect.CodeNotFound, `pipeline "api"`},
		{"release never ran there", dana, &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1"}, ToRelease: 7}, connect.CodeInvalidArgument, "release 7 never ran to approval in environment zone1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.Operator.Rollback(ctx(t), connect.NewRequest(&captainv1.RollbackRequest{Target: tc.target, Reason: "r"}))
			if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want %s saying %q", err, tc.code, tc.says)
			}
		})
	}

	pre, err := dana.Operator.PreviewRollback(ctx(t), connect.NewRequest(&captainv1.PreviewRollbackRequest{Target: target}))
	if err != nil {
		t.Fatal(err)
	}
	if p := pre.Msg.GetPlan(); len(p) != 1 || p[0].GetFromRelease() != 2 || p[0].GetToRelease() != 1 || len(p[0].GetHosts()) != 2 {
		t.Fatalf("preview = %v", p)
	}
	// This cluster has no artifact store: the preview still answers and says so.
	if why := pre.Msg.GetFileChangesUnavailable(); !strings.Contains(why, "no artifact store configured") || !strings.Contains(why, "--s3-endpoint") {
		t.Fatalf("file_changes_unavailable = %q, want the missing store and the flag that adds it", why)
	}
	req := &captainv1.RollbackRequest{Target: target, Reason: "5xx after release 2", RequestId: "rb-1"}
	res, err := dana.Operator.Rollback(ctx(t), connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Msg.GetDeployments()) != 1 || res.Msg.GetDeployments()[0].GetTrigger().GetActor() != "dana" {
		t.Fatalf("rollback = %v", res.Msg)
	}
	again, err := dana.Operator.Rollback(ctx(t), connect.NewRequest(req))
	if err != nil || len(again.Msg.GetDeployments()) != 1 || again.Msg.GetDeployments()[0].GetId() != res.Msg.GetDeployments()[0].GetId() {
		t.Fatalf("retry with the same request ID = %v, %v; want the same deployment", again, err)
	}
	clustertest.Eventually(t, 15*time.Second, func() error {
		st, err := admin.Deployment.GetStatus(ctx(t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
		if err != nil {
			return err
		}
		s := st.Msg.GetStages()[0]
		if s.GetEnvironments()[0].GetCurrentRelease() != 1 || s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_IDLE {
			return fmt.Errorf("stage %s on release %d", s.GetPhase(), s.GetEnvironments()[0].GetCurrentRelease())
		}
		if b := s.GetBlock(); !b.GetIn() || !b.GetOut() || b.GetActor() != "dana" || !strings.Contains(b.GetReason(), "5xx after release 2") {
			return fmt.Errorf("block = %v", b)
		}
		return nil
	})
	hist, err := admin.Deployment.ListDeployments(ctx(t), connect.NewRequest(&captainv1.ListDeploymentsRequest{Pipeline: "web", Environment: "zone1"}))
	if err != nil {
		t.Fatal(err)
	}
	if d := hist.Msg.GetDeployments()[0]; d.GetKind() != captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK || d.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED {
		t.Fatalf("newest deployment = %v", d)
	}
	audit, err := admin.Audit.ListAuditEvents(ctx(t), connect.NewRequest(&captainv1.ListAuditEventsRequest{Actor: "dana"}))
	if err != nil || len(audit.Msg.GetEvents()) != 1 || audit.Msg.GetEvents()[0].GetAction() != "rollback.start" || audit.Msg.GetEvents()[0].GetReason() != "5xx after release 2" {
		t.Fatalf("audit by dana = %v, %v", audit, err)
	}
}
