package coordcmd

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// NewStatusCommand returns `captain status`.
func NewStatusCommand(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "status [PIPELINE]",
		Short: "Draw a pipeline's live state: waves, stages, releases, approvals, inboxes and blocks",
		Long: `Draw the live state of a pipeline, or of every pipeline when none is named: each stage
with its release and phase, the approval steps it waits for, the release waiting in its inbox,
promotion blocks and per-environment health.

With -o json it prints the GetStatusResponse (a JSON array of them for every pipeline).`,
		Example: `  captain status web
  captain status
  captain status web -o json | jq '.stages[] | {stage, phase}'`,
		Args: cobra.MaximumNArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			var names []string
			if len(args) == 1 {
				names = args
			} else {
				res, err := c.pipeline.ListPipelines(cmd.Context(), connect.NewRequest(&captainv1.ListPipelinesRequest{}))
				if err != nil {
					return err
				}
				for _, p := range res.Msg.GetPipelines() {
					names = append(names, p.GetSpec().GetName())
				}
			}
			var all []*captainv1.GetStatusResponse
			var msgs []proto.Message
			for _, name := range names {
				req := &captainv1.GetStatusRequest{Pipeline: name}
				res, err := leaderRead(cmd, c.deployment.GetStatus, req, &req.Read)
				if err != nil {
					return fmt.Errorf("status of pipeline %s: %w", name, err)
				}
				all = append(all, res)
				msgs = append(msgs, res)
			}
			w := cmd.OutOrStdout()
			if cfg.JSON() {
				if len(args) == 1 {
					return clientcfg.PrintJSON(w, all[0])
				}
				return printJSONList(w, msgs)
			}
			if len(all) == 0 {
				_, err := fmt.Fprintln(w, "no pipelines yet: store one with `captain pipeline apply -f pipeline.yaml`")
				return err
			}
			style, now := statuscmd.StyleFor(w), time.Now()
			for i, st := range all {
				if i > 0 {
					fmt.Fprintln(w)
				}
				if err := statuscmd.Render(w, st, now, style); err != nil {
					return err
				}
			}
			return nil
		}),
	}
}

// printJSONList prints messages as one JSON array, so `-o json` output stays a single document
// a tool like jq can read.
func printJSONList(w io.Writer, msgs []proto.Message) error {
	raw := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return err
		}
		raw = append(raw, b)
	}
	return clientcfg.PrintAnyJSON(w, raw)
}
