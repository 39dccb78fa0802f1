package coordcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// consistentRead asks for a read the leader serves: an operator who just acted must see the
// result (a follower may lag behind the write it forwarded), and only the leader knows
// heartbeats, which never go through Raft.
func consistentRead() *captainv1.ReadOptions { return &captainv1.ReadOptions{Consistent: true} }

// NewHostsCommand returns `captain hosts`.
func NewHostsCommand(cfg *clientcfg.Config) *cobra.Command {
	var pipeline, env string
	cmd := &cobra.Command{
		Use:   "hosts [--pipeline P] [--env E]",
		Short: "List hosts: liveness, last heartbeat, and per pipeline the release they run",
		Long: `List the hosts running captain-agent with their liveness and last heartbeat, and one line per
pipeline they serve: environment, release running, the directory 'current' points at, the
releases kept on disk and the last health result. 'captain host ID' shows one host in full.`,
		Example: `  captain hosts
  captain hosts --pipeline web --env use1-az1
  captain hosts -o json | jq -r '.hosts[] | select(.liveness == "LIVENESS_DOWN") | .id'`,
		Args: cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			if env != "" && pipeline == "" {
				return fmt.Errorf("--env %s needs --pipeline: environments are named within a pipeline", env)
			}
			req := &captainv1.ListHostsRequest{Pipeline: pipeline, Environment: env}
			res, err := leaderRead(cmd, c.host.ListHosts, req, &req.Read)
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			if len(res.GetHosts()) == 0 {
				_, err := fmt.Fprintln(w, "no hosts: install captain-agent with a join token (`captain token create --role agent`)")
				return err
			}
			style, now := statuscmd.StyleFor(w), time.Now()
			rows := [][]string{}
			for _, h := range res.GetHosts() {
				hostCols := []string{h.GetId(), orDash(h.GetHostname()), livenessWord(h.GetLiveness(), style), ago(h.GetLastHeartbeatAt(), now),
					orDash(h.GetAgentVersion()), labels(h.GetLabels())}
				var apps []*captainv1.HostApp
				for _, a := range h.GetApps() {
					if pipeline == "" || a.GetPipeline() == pipeline {
						apps = append(apps, a)
					}
				}
				if len(apps) == 0 {
					rows = append(rows, append(hostCols, "-", "-", "-", "-", "-", "-"))
					continue
				}
				for i, a := range apps {
					cols := hostCols
					if i > 0 {
						// Further pipelines of the same host: repeat only the ID, so the host reads
						// as one block and grep by ID still finds every line.
						cols = []string{h.GetId(), "", "", "", "", ""}
					}
					rows = append(rows, append(slices.Clone(cols), a.GetPipeline(), appEnvironment(a), rel(a.GetCurrentRelease()),
						orDash(path.Base(a.GetCurrentTarget())), onDisk(a.GetReleasesOnDisk()), healthWord(a.GetHealth(), style)))
				}
			}
			return table(w, "ID\tHOSTNAME\tLIVENESS\tHEARTBEAT\tAGENT\tLABELS\tPIPELINE\tENV\tRELEASE\tCURRENT\tON DISK\tHEALTH", rows)
		}),
	}
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "only hosts in this pipeline's environments")
	cmd.Flags().StringVar(&env, "env", "", "only hosts in this environment (needs --pipeline)")
	return cmd
}

// NewHostCommand returns `captain host ID`.
func NewHostCommand(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "host ID",
		Short: "Show one host: labels, agent, liveness, and per pipeline what it runs and its health",
		Example: `  captain host h-0123456789ab
  captain host h-0123456789ab -o json`,
		Args: cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			req := &captainv1.GetHostRequest{Id: args[0]}
			res, err := leaderRead(cmd, c.host.GetHost, req, &req.Read)
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			return printHost(w, res.GetHost(), statuscmd.StyleFor(w), time.Now())
		}),
	}
}

func printHost(w io.Writer, h *captainv1.Host, style statuscmd.Style, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "host %s (%s), agent %s, registered %s\n", h.GetId(), orDash(h.GetHostname()), orDash(h.GetAgentVersion()), ago(h.GetRegisteredAt(), now))
	fmt.Fprintf(&b, "liveness:  %s since %s, last heartbeat %s\n", livenessWord(h.GetLiveness(), style), ago(h.GetLivenessSince(), now), ago(h.GetLastHeartbeatAt(), now))
	fmt.Fprintf(&b, "labels:    %s\n", labels(h.GetLabels()))
	if len(h.GetApps()) == 0 {
		b.WriteString("\nno pipeline has deployed to this host yet\n")
	}
	for _, a := range h.GetApps() {
		fmt.Fprintf(&b, "\npipeline %s, environment %s\n", a.GetPipeline(), appEnvironment(a))
		if cs := a.GetConflictingEnvironments(); len(cs) > 1 {
			fmt.Fprintf(&b, "  %s: the host matches environments %s; it is left alone until its labels match one\n",
				style.Bad("conflict"), strings.Join(cs, ", "))
		}
		fmt.Fprintf(&b, "  release:     %s (deployment %s)\n", rel(a.GetCurrentRelease()), orDash(a.GetCurrentDeploymentId()))
		fmt.Fprintf(&b, "  current ->   %s\n", orDash(a.GetCurrentTarget()))
		fmt.Fprintf(&b, "  health:      %s", healthWord(a.GetHealth(), style))
		if a.GetReportedAt() != nil {
			fmt.Fprintf(&b, ", reported %s", ago(a.GetReportedAt(), now))
		}
		b.WriteByte('\n')
		fmt.Fprintf(&b, "  last result: %s\n", orDash(a.GetLastResult()))
		if len(a.GetReleasesOnDisk()) > 0 {
			b.WriteString("  releases on disk:\n")
			rows := [][]string{}
			for _, r := range a.GetReleasesOnDisk() {
				mark := ""
				if r.GetDir() != "" && r.GetDir() == a.GetCurrentTarget() {
					mark = "  <- current"
				}
				rows = append(rows, []string{rel(r.GetRelease()), orDash(r.GetDeploymentId()), orDash(r.GetDir()) + mark})
			}
			if err := indentedTable(&b, "    ", "RELEASE\tDEPLOYMENT\tDIRECTORY", rows); err != nil {
				return err
			}
		}
		if len(a.GetHealthChecks()) > 0 {
			b.WriteString("  health checks:\n")
			writeOutputs(&b, "    ", a.GetHealthChecks(), style, now)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// indentedTable is a table nested under a heading.
func indentedTable(w io.Writer, indent, header string, rows [][]string) error {
	var b strings.Builder
	if err := table(&b, header, rows); err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		if line != "" {
			if _, err := io.WriteString(w, indent+line); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeOutputs prints hook, check and test outputs, each output line indented under its step.
func writeOutputs(b *strings.Builder, indent string, outs []*captainv1.StepOutput, style statuscmd.Style, now time.Time) {
	for _, o := range outs {
		result := style.Good("passed")
		if !o.GetPassed() {
			result = style.Bad("failed")
		}
		fmt.Fprintf(b, "%s%s: %s, exit %d", indent, o.GetName(), result, o.GetExitCode())
		if o.GetAt() != nil {
			fmt.Fprintf(b, ", %s", ago(o.GetAt(), now))
		}
		b.WriteByte('\n')
		text := strings.TrimRight(o.GetOutput(), "\n")
		if text != "" {
			for _, line := range strings.Split(text, "\n") {
				fmt.Fprintf(b, "%s  | %s\n", indent, line)
			}
		}
		if o.GetTruncated() {
			fmt.Fprintf(b, "%s  | (output truncated)\n", indent)
		}
	}
}

func appEnvironment(a *captainv1.HostApp) string {
	if a.GetEnvironment() == "" && len(a.GetConflictingEnvironments()) > 1 {
		return "conflict: " + strings.Join(a.GetConflictingEnvironments(), ",")
	}
	return orDash(a.GetEnvironment())
}

func livenessWord(l captainv1.Liveness, style statuscmd.Style) string {
	switch l {
	case captainv1.Liveness_LIVENESS_UP:
		return style.Good("up")
	case captainv1.Liveness_LIVENESS_DOWN:
		return style.Bad("down")
	}
	return "unknown"
}

func healthWord(h captainv1.HealthState, style statuscmd.Style) string {
	switch h {
	case captainv1.HealthState_HEALTH_STATE_HEALTHY:
		return style.Good("healthy")
	case captainv1.HealthState_HEALTH_STATE_UNHEALTHY:
		return style.Bad("unhealthy")
	}
	return "-"
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func onDisk(rs []*captainv1.ReleaseOnDisk) string {
	if len(rs) == 0 {
		return "-"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.FormatUint(r.GetRelease(), 10)
	}
	return strings.Join(parts, ",")
}

func rel(n uint64) string {
	if n == 0 {
		return "-"
	}
	return "#" + strconv.FormatUint(n, 10)
}

// leaderRead makes a read the leader serves (see consistentRead). When no leader can be
// reached (lost quorum, an election that does not end) it asks the node addressed for its own
// copy and warns on stderr that it may be stale: in an outage an old picture beats none.
// read points at the request's ReadOptions field.
func leaderRead[Req, Res any](cmd *cobra.Command, call func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
	req *Req, read **captainv1.ReadOptions) (*Res, error) {
	*read = consistentRead()
	res, err := call(cmd.Context(), connect.NewRequest(req))
	if err == nil {
		return res.Msg, nil
	}
	if connect.CodeOf(err) != connect.CodeUnavailable || cmd.Context().Err() != nil {
		return nil, err
	}
	*read = nil
	stale, serr := call(cmd.Context(), connect.NewRequest(req))
	if serr != nil {
		return nil, err
	}
	var ce *connect.Error
	why := err.Error()
	if errors.As(err, &ce) {
		why = ce.Message()
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "warning: showing the addressed node's copy, which may be stale and lacks heartbeats: %s\n", why)
	return stale.Msg, nil
}
