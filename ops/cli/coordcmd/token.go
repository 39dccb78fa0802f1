package coordcmd

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// NewTokenCommand returns `captain token`.
func NewTokenCommand(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke bearer tokens",
		Example: `  captain token create --role deployer --name ci --ttl 720h
  captain token revoke 3f9a01c2b7de`,
	}
	cmd.AddCommand(tokenCreate(cfg), tokenList(cfg), tokenRevoke(cfg))
	return cmd
}

func tokenCreate(cfg *clientcfg.Config) *cobra.Command {
	var role, name string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "create --role ROLE --name NAME [--ttl DURATION]",
		Short: "Create a token; its secret is shown once",
		Long: `Create a bearer token. Roles: admin (everything), deployer (pipelines, releases, approvals,
rollbacks, alarms), viewer (read only), agent (host registration only).
The secret is printed once and stored only as a hash.`,
		Example: `  captain token create --role deployer --name ci --ttl 720h
  captain token create --role viewer --name dashboards -o json`,
		Args: cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			r, err := parseRole(role)
			if err != nil {
				return err
			}
			if name == "" {
				return errors.New("--name is required: who or what uses the token (recorded in the audit log)")
			}
			req := &captainv1.CreateTokenRequest{Name: name, Role: r}
			if ttl != 0 {
				req.Ttl = durationpb.New(ttl)
			}
			res, err := c.token.CreateToken(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			t := res.Msg.GetToken()
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s (%s, role %s) created; the secret below is shown only now:\n", t.GetId(), t.GetName(), roleName(t.GetRole()))
			fmt.Fprintln(cmd.OutOrStdout(), res.Msg.GetSecret())
			return nil
		}),
	}
	cmd.Flags().StringVar(&role, "role", "", "admin, deployer, viewer or agent")
	cmd.Flags().StringVar(&name, "name", "", "who or what uses it")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "lifetime, e.g. 720h (default: never expires)")
	return cmd
}

func tokenState(t *captainv1.Token, now time.Time) string {
	switch {
	case t.GetRevokedAt() != nil:
		return "revoked " + ts(t.GetRevokedAt())
	case t.GetExpiresAt() != nil && !now.Before(t.GetExpiresAt().AsTime()):
		return "expired " + ts(t.GetExpiresAt())
	case t.GetExpiresAt() != nil:
		return "valid until " + ts(t.GetExpiresAt())
	default:
		return "valid"
	}
}

func tokenList(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List tokens (never their secrets)",
		Example: "  captain token list",
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			res, err := c.token.ListTokens(cmd.Context(), connect.NewRequest(&captainv1.ListTokensRequest{}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			now := time.Now()
			rows := [][]string{}
			for _, t := range res.Msg.GetTokens() {
				rows = append(rows, []string{t.GetId(), t.GetName(), roleName(t.GetRole()), t.GetCreatedBy(), ts(t.GetCreatedAt()), tokenState(t, now)})
			}
			return table(cmd.OutOrStdout(), "ID\tNAME\tROLE\tCREATED BY\tCREATED AT\tSTATE", rows)
		}),
	}
}

func tokenRevoke(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Short:   "Revoke a token at once on every node",
		Example: "  captain token revoke 3f9a01c2b7de",
		Args:    cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			res, err := c.token.RevokeToken(cmd.Context(), connect.NewRequest(&captainv1.RevokeTokenRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s (%s) revoked at %s\n", res.Msg.GetToken().GetId(), res.Msg.GetToken().GetName(), ts(res.Msg.GetToken().GetRevokedAt()))
			return nil
		}),
	}
}

// NewAuditCommand returns `captain audit`.
func NewAuditCommand(cfg *clientcfg.Config) *cobra.Command {
	var since, actor, pipeline string
	var limit uint32
	cmd := &cobra.Command{
		Use:   "audit [--since T] [--actor A] [--pipeline P]",
		Short: "Show the audit log: who did what, when and why, newest first",
		Example: `  captain audit --since 24h
  captain audit --actor ci --pipeline web --since 2026-11-01T00:00:00Z -o json`,
		Args: cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			req := &captainv1.ListAuditEventsRequest{Actor: actor, Pipeline: pipeline, Limit: limit}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			res, err := c.audit.ListAuditEvents(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			rows := [][]string{}
			for _, e := range res.Msg.GetEvents() {
				rows = append(rows, []string{ts(e.GetAt()), e.GetActor(), e.GetAction(), e.GetTarget(), orDash(e.GetReason()), strconv.FormatUint(e.GetIndex(), 10)})
			}
			return table(cmd.OutOrStdout(), "AT\tACTOR\tACTION\tTARGET\tREASON\tINDEX", rows)
		}),
	}
	cmd.Flags().StringVar(&since, "since", "", "only events after this: RFC 3339 time or a duration ago (e.g. 24h)")
	cmd.Flags().StringVar(&actor, "actor", "", "only events by this actor (token name, host:<id> or captain)")
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "only events about this pipeline")
	cmd.Flags().Uint32Var(&limit, "limit", 100, "most events to show")
	return cmd
}

func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time (2026-11-25T10:00:00Z) or a duration ago (24h)", s)
}
