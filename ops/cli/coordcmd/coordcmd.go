// Package coordcmd holds the `captain` commands that talk to the coordinator about its
// cluster, pipelines, releases, tokens and audit log.
package coordcmd

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// NewCommands returns the top-level commands: cluster, pipeline, release, token, audit, and the
// operator commands status, promotions, approve, alarm, hosts, host, history, deployment,
// where and rollback.
func NewCommands(cfg *clientcfg.Config) []*cobra.Command {
	return []*cobra.Command{
		NewClusterCommand(cfg),
		NewPipelineCommand(cfg),
		NewReleaseCommand(cfg),
		NewTokenCommand(cfg),
		NewAuditCommand(cfg),
		NewStatusCommand(cfg),
		NewPromotionsCommand(cfg),
		NewApproveCommand(cfg),
		NewAlarmCommand(cfg),
		NewHostsCommand(cfg),
		NewHostCommand(cfg),
		NewHistoryCommand(cfg),
		NewDeploymentCommand(cfg),
		NewWhereCommand(cfg),
		NewRollbackCommand(cfg),
	}
}

type clients struct {
	cluster  captainv1connect.ClusterServiceClient
	pipeline captainv1connect.PipelineServiceClient
	release  captainv1connect.ReleaseServiceClient
	token    captainv1connect.TokenServiceClient
	audit    captainv1connect.AuditServiceClient

	deployment captainv1connect.DeploymentServiceClient
	operator   captainv1connect.OperatorServiceClient
	alarm      captainv1connect.AlarmServiceClient
	host       captainv1connect.HostServiceClient
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

		deployment: captainv1connect.NewDeploymentServiceClient(hc, base, opts...),
		operator:   captainv1connect.NewOperatorServiceClient(hc, base, opts...),
		alarm:      captainv1connect.NewAlarmServiceClient(hc, base, opts...),
		host:       captainv1connect.NewHostServiceClient(hc, base, opts...),
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

// table aligns columns two spaces apart like text/tabwriter would, but measures cells without
// their ANSI colour codes, so a coloured cell does not push its column out of line.
func table(w io.Writer, header string, rows [][]string) error {
	all := append([][]string{strings.Split(header, "\t")}, rows...)
	var widths []int
	for _, r := range all {
		for i, cell := range r {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], visibleWidth(cell))
		}
	}
	var b strings.Builder
	for _, r := range all {
		for i, cell := range r {
			b.WriteString(cell)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-visibleWidth(cell)+2))
			}
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// visibleWidth counts the runes a terminal shows: SGR sequences (ESC [ ... m) take no room.
func visibleWidth(s string) int {
	n, inEscape := 0, false
	for _, r := range s {
		switch {
		case inEscape:
			inEscape = r != 'm'
		case r == '\x1b':
			inEscape = true
		default:
			n++
		}
	}
	return n
}

func ts(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

// ago is a table's relative time: "3m ago", "in 2m", "-".
func ago(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return "-"
	}
	return statuscmd.Ago(t.AsTime(), now)
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
