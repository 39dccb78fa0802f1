package api_test

import (
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestHostMatchingTwoEnvironmentsIsFlagged(t *testing.T) {
	c := clustertest.New(t, 1)
	n := c.Leader(5 * time.Second)
	admin := c.Client(n, "")
	spec, vs, err := pipelinespec.ParseYAML([]byte(`
name: web
deploy: {app_root: /srv/web}
stages:
  - name: one
    environments: [{name: east, selector: {region: east}}]
  - name: two
    environments: [{name: frontends, selector: {tier: web}}]
`))
	if err != nil || len(vs) > 0 {
		t.Fatal(err, vs)
	}
	if _, err := admin.Pipeline.ApplyPipeline(ctx(t), connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: spec})); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.Token.CreateToken(ctx(t), connect.NewRequest(&captainv1.CreateTokenRequest{Name: "fleet", Role: captainv1.Role_ROLE_AGENT}))
	if err != nil {
		t.Fatal(err)
	}
	agent := c.Client(n, tok.Msg.GetSecret())
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
