package coordcmd

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// NewPromotionsCommand returns `captain promotions enable|disable`.
func NewPromotionsCommand(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "promotions",
		Short: "Block or unblock promotions into and out of a stage",
		Long: `A block stops releases entering a stage (--in), leaving it (--out), or both (the default).
An automatic rollback and 'captain rollback' set both; 'captain promotions enable' lifts them,
and the newest release waiting at the door then goes through.`,
		Example: `  captain promotions disable --pipeline web --stage use1-az1 --reason "investigating INC-4711"
  captain promotions enable --pipeline web --stage use1-az1
  captain promotions enable --pipeline web --stage use1-az1 --out`,
	}
	cmd.AddCommand(promotionsSet(cfg, true), promotionsSet(cfg, false))
	return cmd
}

func promotionsSet(cfg *clientcfg.Config, enable bool) *cobra.Command {
	var pipeline, stage, reason string
	var in, out bool
	use, short, example := "enable --pipeline P --stage S [--in|--out] [--reason R]", "Lift a stage's promotion block",
		"  captain promotions enable --pipeline web --stage use1-az1 --reason \"fixed in #43\""
	if !enable {
		use, short, example = "disable --pipeline P --stage S [--in|--out] --reason R", "Block promotions into and/or out of a stage, saying why",
			"  captain promotions disable --pipeline web --stage use1-az1 --in --reason \"freeze for the sale\""
	}
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			if pipeline == "" || stage == "" {
				return errors.New("--pipeline and --stage are required")
			}
			dir := captainv1.PromotionDirection_PROMOTION_DIRECTION_BOTH
			switch {
			case in && !out:
				dir = captainv1.PromotionDirection_PROMOTION_DIRECTION_IN
			case out && !in:
				dir = captainv1.PromotionDirection_PROMOTION_DIRECTION_OUT
			}
			// An empty reason on disable goes to the server on purpose: it is the one place
			// that decides what a valid request is, and it says why in its refusal.
			res, err := c.operator.SetPromotions(cmd.Context(), connect.NewRequest(&captainv1.SetPromotionsRequest{
				Pipeline: pipeline, Stage: stage, Direction: dir, Enabled: enable, Reason: reason,
			}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			w := cmd.OutOrStdout()
			return printBlock(w, res.Msg.GetStage(), statuscmd.StyleFor(w), time.Now())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&pipeline, "pipeline", "", "pipeline name")
	f.StringVar(&stage, "stage", "", "stage name")
	f.BoolVar(&in, "in", false, "only promotions into the stage")
	f.BoolVar(&out, "out", false, "only promotions out of the stage")
	f.StringVar(&reason, "reason", "", "why, shown to everyone who looks at the stage and kept in the audit log")
	return cmd
}

// printBlock says where a stage's promotions stand after a change.
func printBlock(w io.Writer, st *captainv1.StageState, style statuscmd.Style, now time.Time) error {
	name := fmt.Sprintf("stage %s of pipeline %s", st.GetStage(), st.GetPipeline())
	bl := st.GetBlock()
	if !bl.GetIn() && !bl.GetOut() {
		_, err := fmt.Fprintf(w, "%s: promotions %s in and out\n", name, style.Good("enabled"))
		return err
	}
	sides := "in and out"
	open := ""
	switch {
	case bl.GetIn() && !bl.GetOut():
		sides, open = "in", " (promotions out are enabled)"
	case bl.GetOut() && !bl.GetIn():
		sides, open = "out", " (promotions in are enabled)"
	}
	_, err := fmt.Fprintf(w, "%s: promotions %s %s by %s %s: %s%s\n", name, style.Bad("blocked"), sides,
		orDash(bl.GetActor()), ago(bl.GetAt(), now), orDash(bl.GetReason()), open)
	if err == nil && st.GetApprovedRelease() != 0 {
		_, err = fmt.Fprintf(w, "release #%d is approved and waits for promotions out\n", st.GetApprovedRelease())
	}
	return err
}

// NewApproveCommand returns `captain approve`.
func NewApproveCommand(cfg *clientcfg.Config) *cobra.Command {
	var pipeline, stage, comment string
	var release uint64
	cmd := &cobra.Command{
		Use:   "approve --pipeline P --stage S --release N [--comment C]",
		Short: "Give a stage's manual approval for the release it verifies",
		Long: `Give the manual approval step of a stage for one release. The release must be the one the
stage verifies now, so an approval meant for #41 can never let #42 through.`,
		Example: `  captain approve --pipeline web --stage prod-eu --release 42 --comment "checked the dashboards"`,
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			if pipeline == "" || stage == "" || release == 0 {
				return errors.New("--pipeline, --stage and --release are required")
			}
			res, err := c.operator.Approve(cmd.Context(), connect.NewRequest(&captainv1.ApproveRequest{
				Pipeline: pipeline, Stage: stage, Release: release, Comment: comment,
			}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			st := res.Msg.GetStage()
			var steps []string
			for _, a := range st.GetApprovals() {
				steps = append(steps, a.GetStep()+" "+approvalWord(a.GetState()))
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "approved release #%d in stage %s of pipeline %s\n", release, stage, pipeline)
			if len(steps) > 0 {
				fmt.Fprintf(w, "approval steps: %s\n", strings.Join(steps, ", "))
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&pipeline, "pipeline", "", "pipeline name")
	f.StringVar(&stage, "stage", "", "stage name")
	f.Uint64Var(&release, "release", 0, "release number the approval is for")
	f.StringVar(&comment, "comment", "", "recorded with the approval")
	return cmd
}

func approvalWord(s captainv1.ApprovalStepState) string {
	switch s {
	case captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED:
		return "passed"
	case captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED:
		return "failed"
	}
	return "pending"
}
