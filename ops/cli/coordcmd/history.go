package coordcmd

import (
	"errors"
	"fmt"
	"io"
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

// NewHistoryCommand returns `captain history`.
func NewHistoryCommand(cfg *clientcfg.Config) *cobra.Command {
	var pipeline, env string
	var limit uint32
	cmd := &cobra.Command{
		Use:   "history --pipeline P --env E [--limit N]",
		Short: "List the deployments to one environment, newest first",
		Long: `List the deployments to one environment, newest first: deploy or rollback, the release and
the one it replaced, what started it (the pipeline, an operator, or an automatic rollback and
its alarm), when it started and finished, the result and the commits it brought.
'captain deployment ID' shows one in full.`,
		Example: `  captain history --pipeline web --env use1-az1
  captain history --pipeline web --env use1-az1 --limit 5 -o json`,
		Args: cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			if pipeline == "" || env == "" {
				return errors.New("--pipeline and --env are required")
			}
			req := &captainv1.ListDeploymentsRequest{Pipeline: pipeline, Environment: env, Limit: limit}
			res, err := leaderRead(cmd, c.deployment.ListDeployments, req, &req.Read)
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			if len(res.GetDeployments()) == 0 {
				_, err := fmt.Fprintf(w, "no deployments to %s of pipeline %s yet\n", env, pipeline)
				return err
			}
			style, now := statuscmd.StyleFor(w), time.Now()
			rows := [][]string{}
			for _, d := range res.GetDeployments() {
				started := d.GetStartedAt()
				if started == nil {
					started = d.GetCreatedAt()
				}
				rows = append(rows, []string{d.GetId(), kindWord(d.GetKind()), rel(d.GetRelease()), rel(d.GetFromRelease()),
					triggerWord(d.GetTrigger()), ago(started, now), ago(d.GetFinishedAt(), now), stateWord(d.GetState(), style),
					commitsSummary(res.GetCommitsAdded()[d.GetId()].GetCommits())})
			}
			return table(w, "DEPLOYMENT\tKIND\tRELEASE\tFROM\tTRIGGER\tSTARTED\tFINISHED\tRESULT\tCOMMITS ADDED", rows)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&pipeline, "pipeline", "", "pipeline name")
	f.StringVar(&env, "env", "", "environment name")
	f.Uint32Var(&limit, "limit", 20, "most deployments to show")
	return cmd
}

func kindWord(k captainv1.DeploymentKind) string {
	switch k {
	case captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY:
		return "deploy"
	case captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK:
		return "rollback"
	}
	return "-"
}

// triggerWord names who started a deployment: "pipeline", "operator alice", "automatic: errors".
func triggerWord(t *captainv1.Trigger) string {
	switch t.GetKind() {
	case captainv1.TriggerKind_TRIGGER_KIND_PIPELINE:
		return "pipeline"
	case captainv1.TriggerKind_TRIGGER_KIND_OPERATOR:
		return "operator " + orDash(t.GetActor())
	case captainv1.TriggerKind_TRIGGER_KIND_AUTOMATIC:
		if t.GetAlarm() != "" {
			return "automatic: " + t.GetAlarm()
		}
		return "automatic"
	}
	return "-"
}

func stateWord(s captainv1.DeploymentState, style statuscmd.Style) string {
	switch s {
	case captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING:
		return style.Busy("pending")
	case captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS:
		return style.Busy("in progress")
	case captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED:
		return style.Good("succeeded")
	case captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED:
		return style.Bad("failed")
	case captainv1.DeploymentState_DEPLOYMENT_STATE_CANCELLED:
		return style.Bad("cancelled")
	}
	return "-"
}

func hostStateWord(s captainv1.HostDeployState, style statuscmd.Style) string {
	word := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "HOST_DEPLOY_STATE_")), "_", " ")
	switch s {
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY:
		return style.Good(word)
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED:
		return style.Bad(word)
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_UNSPECIFIED:
		return "-"
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING, captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED:
		return word
	}
	return style.Busy(word)
}

// commitsSummary fits a deployment's new commits in the last column: how many, the newest
// short SHA and its subject.
func commitsSummary(cs []*captainv1.Commit) string {
	if len(cs) == 0 {
		return "-"
	}
	s := fmt.Sprintf("%d: %s %s", len(cs), shortSHA(cs[0].GetSha()), cs[0].GetMessage())
	if len(cs) > 1 {
		s += fmt.Sprintf(" (+%d more)", len(cs)-1)
	}
	return s
}

// shortSHA is the 7 digits git prints.
func shortSHA(s string) string {
	if len(s) > 7 {
		return s[:7]
	}
	return orDash(s)
}

// NewDeploymentCommand returns `captain deployment ID`.
func NewDeploymentCommand(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "deployment ID",
		Short: "Show one deployment: trigger, result, per-host states with hook and health outputs",
		Example: `  captain deployment d-000123
  captain deployment d-000123 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			req := &captainv1.GetDeploymentRequest{Id: args[0]}
			res, err := leaderRead(cmd, c.deployment.GetDeployment, req, &req.Read)
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			return printDeployment(w, res.GetDeployment(), statuscmd.StyleFor(w), time.Now())
		}),
	}
}

func printDeployment(w io.Writer, d *captainv1.Deployment, style statuscmd.Style, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "deployment %s: %s of release %s to %s (stage %s, pipeline %s), from %s\n",
		d.GetId(), kindWord(d.GetKind()), rel(d.GetRelease()), d.GetEnvironment(), d.GetStage(), d.GetPipeline(), rel(d.GetFromRelease()))
	trig := triggerWord(d.GetTrigger())
	if r := d.GetTrigger().GetReason(); r != "" {
		trig += ": " + r
	}
	fmt.Fprintf(&b, "trigger:  %s\n", trig)
	fmt.Fprintf(&b, "result:   %s", stateWord(d.GetState(), style))
	if d.GetReason() != "" {
		fmt.Fprintf(&b, ": %s", d.GetReason())
	}
	b.WriteByte('\n')
	fmt.Fprintf(&b, "times:    created %s, started %s, finished %s", ago(d.GetCreatedAt(), now), ago(d.GetStartedAt(), now), ago(d.GetFinishedAt(), now))
	if d.GetFinishedAt() == nil && d.GetDeadline() != nil {
		fmt.Fprintf(&b, ", deadline %s", ago(d.GetDeadline(), now))
	}
	b.WriteByte('\n')
	if bp := d.GetBatch(); bp != nil {
		fmt.Fprintf(&b, "batches:  max unavailable %s, min healthy %s, batch %d\n", orDash(bp.GetMaxUnavailable()), orDash(bp.GetMinHealthy()), d.GetCurrentBatch())
	}
	if len(d.GetHosts()) == 0 {
		b.WriteString("\nno hosts in the environment\n")
	} else {
		b.WriteByte('\n')
		rows := [][]string{}
		for _, h := range d.GetHosts() {
			rows = append(rows, []string{h.GetHostId(), strconv.FormatUint(uint64(h.GetBatch()), 10), hostStateWord(h.GetState(), style),
				ago(h.GetStartedAt(), now), ago(h.GetFinishedAt(), now), orDash(h.GetMessage())})
		}
		if err := table(&b, "HOST\tBATCH\tSTATE\tSTARTED\tFINISHED\tMESSAGE", rows); err != nil {
			return err
		}
		for _, h := range d.GetHosts() {
			if len(h.GetOutputs()) == 0 {
				continue
			}
			fmt.Fprintf(&b, "\n%s", h.GetHostId())
			if h.GetReleaseDir() != "" {
				fmt.Fprintf(&b, " (%s)", h.GetReleaseDir())
			}
			b.WriteString(":\n")
			writeOutputs(&b, "  ", h.GetOutputs(), style, now)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// NewWhereCommand returns `captain where COMMIT`.
func NewWhereCommand(cfg *clientcfg.Config) *cobra.Command {
	var pipeline string
	cmd := &cobra.Command{
		Use:   "where COMMIT [--pipeline P]",
		Short: "Show, per environment, whether it runs a commit and since when",
		Long: `Show per environment whether it contains a commit, has not got it yet, or was rolled back
before it, since when, the release it runs and the deployment that brought the commit, plus
the first release of each pipeline that contains it. Trunk is linear, so an environment contains
the commit when it runs that first release or a newer one. A short SHA works when it is unique.`,
		Example: `  captain where 4f2a9c1
  captain where 4f2a9c1e8d --pipeline web -o json`,
		Args: cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			res, err := c.deployment.WhereIsCommit(cmd.Context(), connect.NewRequest(&captainv1.WhereIsCommitRequest{Commit: args[0], Pipeline: pipeline}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			w := cmd.OutOrStdout()
			style, now := statuscmd.StyleFor(w), time.Now()
			first := res.Msg.GetFirstRelease()
			names := make([]string, 0, len(first))
			for p := range first {
				names = append(names, p)
			}
			slices.Sort(names)
			parts := make([]string, len(names))
			for i, p := range names {
				parts[i] = fmt.Sprintf("%s %s", p, rel(first[p]))
			}
			fmt.Fprintf(w, "commit %s, first released in %s\n\n", res.Msg.GetCommit(), orDash(strings.Join(parts, ", ")))
			rows := [][]string{}
			for _, l := range res.Msg.GetLocations() {
				since := "-"
				if l.GetPresence() != captainv1.CommitPresence_COMMIT_PRESENCE_NOT_YET {
					since = ago(l.GetSince(), now)
				}
				rows = append(rows, []string{l.GetPipeline(), l.GetStage(), l.GetEnvironment(), presenceWord(l.GetPresence(), style),
					since, rel(l.GetRelease()), orDash(l.GetDeploymentId())})
			}
			return table(w, "PIPELINE\tSTAGE\tENVIRONMENT\tCOMMIT\tSINCE\tRUNS\tDEPLOYMENT", rows)
		}),
	}
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "only this pipeline")
	return cmd
}

func presenceWord(p captainv1.CommitPresence, style statuscmd.Style) string {
	switch p {
	case captainv1.CommitPresence_COMMIT_PRESENCE_CONTAINED:
		return style.Good("contains")
	case captainv1.CommitPresence_COMMIT_PRESENCE_NOT_YET:
		return "not yet"
	case captainv1.CommitPresence_COMMIT_PRESENCE_ROLLED_BACK:
		return style.Bad("rolled back")
	}
	return "-"
}
