// Package coordcmd holds the `captain` commands that talk to the coordinator about its
// cluster, pipelines, releases, tokens and audit log.
package coordcmd

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// NewCommands returns the top-level commands: cluster, pipeline, release, token, audit.
func NewCommands(cfg *clientcfg.Config) []*cobra.Command {
	return []*cobra.Command{
		NewClusterCommand(cfg),
		NewPipelineCommand(cfg),
		NewReleaseCommand(cfg),
		NewTokenCommand(cfg),
		NewAuditCommand(cfg),
	}
}

type clients struct {
	cluster  captainv1connect.ClusterServiceClient
	pipeline captainv1connect.PipelineServiceClient
	release  captainv1connect.ReleaseServiceClient
	token    captainv1connect.TokenServiceClient
	audit    captainv1connect.AuditServiceClient
}

func newClients(cfg *clientcfg.Config) (*clients, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hc, err := cfg.HTTPClient()
	if err != nil {
		return nil, err
	}
	return newClientsWith(hc, cfg), nil
}

func newClientsWith(hc *http.Client, cfg *clientcfg.Config) *clients {
	base, opts := cfg.BaseURL(), cfg.ClientOptions()
	return &clients{
		cluster:  captainv1connect.NewClusterServiceClient(hc, base, opts...),
		pipeline: captainv1connect.NewPipelineServiceClient(hc, base, opts...),
		release:  captainv1connect.NewReleaseServiceClient(hc, base, opts...),
		token:    captainv1connect.NewTokenServiceClient(hc, base, opts...),
		audit:    captainv1connect.NewAuditServiceClient(hc, base, opts...),
	}
}

// run wraps a command body: clients, a bounded context, and errors explained in one line.
func run(cfg *clientcfg.Config, fn func(cmd *cobra.Command, args []string, c *clients) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := newClients(cfg)
		if err != nil {
			return err
		}
		ctx, cancel := cfg.Context(cmd.Context())
		defer cancel()
		cmd.SetContext(ctx)
		if err := fn(cmd, args, c); err != nil {
			return cfg.Explain(err)
		}
		return nil
	}
}

func table(w io.Writer, header string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func ts(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func roleName(r captainv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

func parseRole(s string) (captainv1.Role, error) {
	r, ok := captainv1.Role_value["ROLE_"+strings.ToUpper(s)]
	if !ok || r == 0 {
		return 0, fmt.Errorf("--role %q: want admin, deployer, viewer or agent", s)
	}
	return captainv1.Role(r), nil
}
