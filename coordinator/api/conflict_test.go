package api_test

import (
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/clustertest"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestHostMatchingTwoEnvironmentsIsFlagged(t *testing.T) {
	c := clustertest.New(t, 1)
	n := c.Leader(5 * time.Second)
	admin := c.Client(n, "")
	applyPipeline(t, admin, `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: one
    environments: [{name: east, selector: {region: east}}]
  - name: two
    environments: [{name: frontends, selector: {tier: web}}]
`)
	joinToken := newToken(t, admin, "fleet", captainv1.Role_ROLE_AGENT, 0)
	agent := c.Client(n, joinToken)
	both, err := agent.Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: "both", Labels: map[string]string{"region": "east", "tier": "web"}}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = agent.Agent.Register(ctx(t), connect.NewRequest(&captainv1.RegisterRequest{Hostname: "one", Labels: map[string]string{"region": "east"}}))
	if err != nil {
		t.Fatal(err)
	}
	h, err := admin.Host.GetHost(ctx(t), connect.NewRequest(&captainv1.GetHostRequest{Id: both.Msg.GetHostId()}))
	if err != nil {
		t.Fatal(err)
	}
	apps := h.Msg.GetHost().GetApps()
	if len(apps) != 1 || !slices.Equal(apps[0].GetConflictingEnvironments(), []string{"east", "frontends"}) {
		t.Fatalf("apps of the conflicting host = %v, want web flagged with east and frontends", apps)
	}
	list, err := admin.Host.ListHosts(ctx(t), connect.NewRequest(&captainv1.ListHostsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range list.Msg.GetHosts() {
		flagged := len(host.GetApps()) > 0 && len(host.GetApps()[0].GetConflictingEnvironments()) > 0
		if flagged != (host.GetId() == both.Msg.GetHostId()) {
			t.Errorf("host %s flagged=%v", host.GetId(), flagged)
		}
	}

}
