package coordcmd

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// NewPipelineCommand returns `captain pipeline` with apply, get, list and versions; callers
// may AddCommand more subcommands to it.
func NewPipelineCommand(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pipeline",
		Short: "Store and read pipeline specs",
		Example: `  captain pipeline apply -f pipeline.yaml
  captain pipeline get web`,
	}
	cmd.AddCommand(pipelineApply(cfg), pipelineGet(cfg), pipelineList(cfg), pipelineVersions(cfg))
	return cmd
}

func pipelineApply(cfg *clientcfg.Config) *cobra.Command {
	var file, reason, requestID string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Store a pipeline.yaml as the pipeline's next version",
		Long: `Parse and validate a pipeline spec, then store it as the pipeline's next version.
Applying a spec identical to the current version changes nothing.`,
		Example: `  captain pipeline apply -f pipeline.yaml --reason "add wave 3"`,
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			if file == "" {
				return errors.New("-f FILE is required")
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("read pipeline spec: %w", err)
			}
			spec, vs, err := pipelinespec.ParseYAML(data)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if len(vs) > 0 {
				return fmt.Errorf("%s: %d problem(s): %s", file, len(vs), violationList(vs))
			}
			res, err := c.pipeline.ApplyPipeline(cmd.Context(), connect.NewRequest(&captainv1.ApplyPipelineRequest{
				Spec: spec, RequestId: requestID, Reason: reason,
			}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			p := res.Msg.GetPipeline()
			if res.Msg.GetChanged() {
				fmt.Fprintf(cmd.OutOrStdout(), "pipeline %s: stored version %d\n", p.GetSpec().GetName(), p.GetVersion())
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "pipeline %s: unchanged (version %d)\n", p.GetSpec().GetName(), p.GetVersion())
			}
			return nil
		}),
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "pipeline.yaml to apply")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	cmd.Flags().StringVar(&requestID, "request-id", "", "makes a retried apply safe")
	return cmd
}

func violationList(vs pipelinespec.Violations) string {
	lines := make([]string, len(vs))
	for i, v := range vs {
		lines[i] = v.String()
	}
	return strings.Join(lines, "; ")
}

func pipelineGet(cfg *clientcfg.Config) *cobra.Command {
	var version uint64
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a pipeline's current spec (or an earlier version)",
		Example: `  captain pipeline get web
  captain pipeline get web --version 3 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			res, err := c.pipeline.GetPipeline(cmd.Context(), connect.NewRequest(&captainv1.GetPipelineRequest{Name: args[0], Version: version}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			p := res.Msg.GetPipeline()
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "pipeline %s version %d, applied by %s at %s\n", p.GetSpec().GetName(), p.GetVersion(), p.GetAppliedBy(), ts(p.GetAppliedAt()))
			if d := p.GetSpec().GetDescription(); d != "" {
				fmt.Fprintln(w, d)
			}
			rows := [][]string{}
			for _, st := range p.GetSpec().GetStages() {
				var envs []string
				for _, e := range st.GetEnvironments() {
					envs = append(envs, e.GetName())
				}
				rows = append(rows, []string{strconv.FormatUint(uint64(st.GetWave()), 10), st.GetName(), strings.Join(envs, ",")})
			}
			return table(w, "WAVE\tSTAGE\tENVIRONMENTS", rows)
		}),
	}
	cmd.Flags().Uint64Var(&version, "version", 0, "version to show (default: current)")
	return cmd
}

func pipelineList(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List pipelines with their current version",
		Example: "  captain pipeline list",
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			res, err := c.pipeline.ListPipelines(cmd.Context(), connect.NewRequest(&captainv1.ListPipelinesRequest{}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			rows := [][]string{}
			for _, p := range res.Msg.GetPipelines() {
				rows = append(rows, []string{p.GetSpec().GetName(), strconv.FormatUint(p.GetVersion(), 10),
					strconv.Itoa(len(p.GetSpec().GetStages())), p.GetAppliedBy(), ts(p.GetAppliedAt())})
			}
			return table(cmd.OutOrStdout(), "NAME\tVERSION\tSTAGES\tAPPLIED BY\tAPPLIED AT", rows)
		}),
	}
}

func pipelineVersions(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:     "versions NAME",
		Short:   "List the stored versions of a pipeline's spec, newest first",
		Example: "  captain pipeline versions web",
		Args:    cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			res, err := c.pipeline.ListPipelineVersions(cmd.Context(), connect.NewRequest(&captainv1.ListPipelineVersionsRequest{Name: args[0]}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			rows := [][]string{}
			for _, p := range res.Msg.GetVersions() {
				rows = append(rows, []string{strconv.FormatUint(p.GetVersion(), 10), p.GetAppliedBy(), ts(p.GetAppliedAt()),
					strconv.FormatUint(p.GetIndex(), 10)})
			}
			return table(cmd.OutOrStdout(), "VERSION\tAPPLIED BY\tAPPLIED AT\tRAFT INDEX", rows)
		}),
	}
}
