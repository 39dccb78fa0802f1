package devcmd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// client reads the demo cluster through the Connect API.
type client struct {
	hosts   captainv1connect.HostServiceClient
	deploys captainv1connect.DeploymentServiceClient
}

func newClient(addr, token string) (*client, error) {
	cfg := &clientcfg.Config{Addr: addr, Token: token}
	hc, err := cfg.HTTPClient()
	if err != nil {
		return nil, err
	}
	hc.Timeout = 5 * time.Second
	opts := cfg.ClientOptions()
	return &client{
		hosts:   captainv1connect.NewHostServiceClient(hc, cfg.BaseURL(), opts...),
		deploys: captainv1connect.NewDeploymentServiceClient(hc, cfg.BaseURL(), opts...),
	}, nil
}

func (c *client) status(ctx context.Context) (*captainv1.GetStatusResponse, error) {
	res, err := c.deploys.GetStatus(ctx, connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: pipelineName}))
	if err != nil {
		return nil, fmt.Errorf("get status: %w", err)
	}
	return res.Msg, nil
}

func (c *client) deployments(ctx context.Context, env string) ([]*captainv1.Deployment, error) {
	res, err := c.deploys.ListDeployments(ctx, connect.NewRequest(&captainv1.ListDeploymentsRequest{Pipeline: pipelineName, Environment: env, Limit: 50}))
	if err != nil {
		return nil, fmt.Errorf("list deployments of %s: %w", env, err)
	}
	return res.Msg.GetDeployments(), nil
}

// currentReleases maps each registered host to the release `current` points at (0: none yet).
func (c *client) currentReleases(ctx context.Context) (map[string]uint64, error) {
	res, err := c.hosts.ListHosts(ctx, connect.NewRequest(&captainv1.ListHostsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	out := map[string]uint64{}
	for _, h := range res.Msg.GetHosts() {
		out[h.GetHostname()] = 0
		for _, app := range h.GetApps() {
			if app.GetPipeline() == pipelineName {
				out[h.GetHostname()] = app.GetCurrentRelease()
			}
		}
	}
	return out, nil
}

// everyHostOn holds once every host runs release n and no stage is still busy with it.
func (c *client) everyHostOn(fleet []host, n uint64) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		cur, err := c.currentReleases(ctx)
		if err != nil {
			return "", err
		}
		var off []string
		for _, h := range fleet {
			if cur[h.name] != n {
				off = append(off, fmt.Sprintf("%s on #%d", h.name, cur[h.name]))
			}
		}
		if len(off) > 0 {
			return strings.Join(off, ", "), nil
		}
		st, err := c.status(ctx)
		if err != nil {
			return "", err
		}
		for _, s := range st.GetStages() {
			if s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_IDLE {
				return fmt.Sprintf("stage %s still %s", s.GetStage(), phaseWord(s.GetPhase())), nil
			}
		}
		return "", nil
	}
}

// rolledBackAndBlocked holds once the first stage failed release bad, rolled back to good and
// blocked itself in and out.
func (c *client) rolledBackAndBlocked(bad, good uint64) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		st, err := c.status(ctx)
		if err != nil {
			return "", err
		}
		first := st.GetStages()[0]
		switch {
		case !slices.Contains(first.GetBadReleases(), bad):
			return fmt.Sprintf("%s has not marked #%d bad", first.GetStage(), bad), nil
		case !first.GetBlock().GetIn() || !first.GetBlock().GetOut():
			return fmt.Sprintf("%s is not blocked in and out", first.GetStage()), nil
		case first.GetPhase() != captainv1.StagePhase_STAGE_PHASE_IDLE:
			return fmt.Sprintf("%s still %s", first.GetStage(), phaseWord(first.GetPhase())), nil
		}
		for _, e := range first.GetEnvironments() {
			if e.GetCurrentRelease() != good || e.GetHostsHealthy() != e.GetHostsTotal() {
				return fmt.Sprintf("%s on #%d, %d/%d healthy", e.GetEnvironment(), e.GetCurrentRelease(), e.GetHostsHealthy(), e.GetHostsTotal()), nil
			}
		}
		return "", nil
	}
}
