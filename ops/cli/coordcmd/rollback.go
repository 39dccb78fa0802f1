package coordcmd

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

type rollbackOpts struct {
	pipeline, reason, requestID string
	stages, envs                []string
	allStages, force, preview   bool
	yes                         bool
	to                          uint64
}

func (o *rollbackOpts) target() (*captainv1.RollbackTarget, error) {
	if o.pipeline == "" {
		return nil, errors.New("--pipeline is required")
	}
	chosen := 0
	for _, b := range []bool{len(o.stages) > 0, len(o.envs) > 0, o.allStages} {
		if b {
			chosen++
		}
	}
	if chosen != 1 {
		return nil, errors.New("say what to roll back with exactly one of --stage S[,S...], --env E[,E...] or --all-stages")
	}
	return &captainv1.RollbackTarget{
		Pipeline: o.pipeline, Stages: o.stages, Environments: o.envs, AllStages: o.allStages, ToRelease: o.to, Force: o.force,
	}, nil
}

// NewRollbackCommand returns `captain rollback`.
func NewRollbackCommand(cfg *clientcfg.Config) *cobra.Command {
	o := &rollbackOpts{}
	cmd := &cobra.Command{
		Use:   "rollback --pipeline P (--stage S[,S...] | --env E[,E...] | --all-stages) [--to N] [--preview] [--yes]",
		Short: "Roll environments back to their last good release or --to N, preview first",
		Long: `Roll environments back: every environment of the named stages, the named environments, or
the whole pipeline. Each returns to its last good release (the newest it ran to approval), or
to --to N; --force allows a release the environment never ran to approval.

The preview comes first, always: per environment the release it runs and the one it returns to,
the hosts redeployed, the deployment in progress it cancels, the approval steps a rollback skips,
the commits that go away and the artifact files it restores, removes or changes (from the
manifests, when captaind runs with --s3-endpoint or --s3-region; otherwise it says why they
are missing). --preview stops there. Otherwise captain asks before it acts, or
needs --yes when stdin is not a terminal (scripts, CI).

Starting a rollback blocks promotions into and out of the affected stages; lift the block with
'captain promotions enable' once the cause is fixed. A retry with the same --request-id returns
the first answer instead of starting a second rollback.`,
		Example: `  captain rollback --pipeline web --stage use1-az1 --preview
  captain rollback --pipeline web --env use1-az1,use1-az2 --reason "INC-4711 checkout errors"
  captain rollback --pipeline web --all-stages --to 41 --force --yes --reason "bad schema change"`,
		Args: cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			t, err := o.target()
			if err != nil {
				return err
			}
			return rollback(cmd, cfg, c, o, t)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.pipeline, "pipeline", "", "pipeline name")
	f.StringSliceVar(&o.stages, "stage", nil, "stages to roll back, every environment of each (comma-separated or repeated)")
	f.StringSliceVar(&o.envs, "env", nil, "environments to roll back (comma-separated or repeated)")
	f.BoolVar(&o.allStages, "all-stages", false, "roll back every stage of the pipeline")
	f.Uint64Var(&o.to, "to", 0, "release to return to (default: each environment's last good release)")
	f.BoolVar(&o.force, "force", false, "allow a --to release the environment never ran to approval")
	f.BoolVar(&o.preview, "preview", false, "show what would happen and stop")
	f.StringVar(&o.reason, "reason", "", "why; recorded on the deployments, the block and in the audit log")
	f.BoolVarP(&o.yes, "yes", "y", false, "do not ask for confirmation (needed when stdin is not a terminal)")
	f.StringVar(&o.requestID, "request-id", "", "idempotency key; a retry with the same key starts nothing new (default: random)")
	return cmd
}

func rollback(cmd *cobra.Command, cfg *clientcfg.Config, c *clients, o *rollbackOpts, t *captainv1.RollbackTarget) error {
	ctx := cmd.Context()
	pre, err := c.operator.PreviewRollback(ctx, connect.NewRequest(&captainv1.PreviewRollbackRequest{Target: t}))
	if err != nil {
		return fmt.Errorf("preview: %w", err)
	}
	plan := pre.Msg.GetPlan()
	if err := commitsGoingAway(cmd, c, o.pipeline, plan); err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if cfg.JSON() {
		if o.preview {
			return clientcfg.PrintJSON(out, pre.Msg)
		}
		// Standard output is kept for the one JSON document of the result.
		out = cmd.ErrOrStderr()
	}
	if err := printRollbackPlan(out, o.pipeline, plan, pre.Msg.GetFileChangesUnavailable(), statuscmd.StyleFor(out)); err != nil {
		return err
	}
	moving := 0
	for _, e := range plan {
		if !e.GetAlreadyThere() {
			moving++
		}
	}
	if o.preview {
		return nil
	}
	if moving == 0 {
		if o.requestID == "" {
			_, err := fmt.Fprintln(out, "nothing to roll back: every environment already runs its target release")
			return err
		}
		// A retry of a rollback that did start looks like this (its environments already move
		// to the target): the same request ID gets the first answer back.
		fmt.Fprintf(out, "every environment already runs its target; asking for the outcome of request %s\n", o.requestID)
	}
	in := cmd.InOrStdin()
	ok, err := confirm(in, isTerminal(in), cmd.ErrOrStderr(), moving, o.yes)
	if err != nil || !ok {
		if err == nil {
			_, err = fmt.Fprintln(out, "not rolled back")
		}
		return err
	}
	id := o.requestID
	if id == "" {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("request ID: %w", err)
		}
		id = "rollback-" + hex.EncodeToString(b)
	}
	res, err := c.operator.Rollback(ctx, connect.NewRequest(&captainv1.RollbackRequest{Target: t, Reason: o.reason, RequestId: id}))
	if err != nil {
		// The outcome of a timed-out call is unknown; the same ID makes the retry safe.
		return fmt.Errorf("%w (retry with --request-id %s: it cannot start a second rollback)", err, id)
	}
	if cfg.JSON() {
		return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
	}
	return printRollbackStarted(out, o.pipeline, id, res.Msg)
}

// commitsGoingAway fills each environment's commits_removed from ReleaseService.DiffReleases,
// the same answer `captain release diff` gives, so the preview and the diff never disagree.
func commitsGoingAway(cmd *cobra.Command, c *clients, pipeline string, plan []*captainv1.EnvironmentRollback) error {
	type pair struct{ from, to uint64 }
	seen := map[pair][]*captainv1.Commit{}
	for _, e := range plan {
		if e.GetAlreadyThere() || e.GetFromRelease() == 0 || e.GetToRelease() == 0 || e.GetToRelease() >= e.GetFromRelease() {
			continue
		}
		p := pair{e.GetFromRelease(), e.GetToRelease()}
		commits, ok := seen[p]
		if !ok {
			res, err := c.release.DiffReleases(cmd.Context(), connect.NewRequest(&captainv1.DiffReleasesRequest{
				Pipeline: pipeline, From: e.GetToRelease(), To: e.GetFromRelease(),
			}))
			if err != nil {
				return fmt.Errorf("commits between releases %d and %d: %w", e.GetToRelease(), e.GetFromRelease(), err)
			}
			commits = res.Msg.GetCommits()
			seen[p] = commits
			if len(e.GetFileChanges()) == 0 {
				e.FileChanges = towardTarget(res.Msg.GetFiles())
			}
		}
		e.CommitsRemoved = commits
	}
	return nil
}

// maxListed bounds the hosts, commits and file changes listed per environment: a stage of a
// thousand hosts must not bury the question. The counts are always printed; -o json has all.
const maxListed = 20

// printRollbackPlan prints the preview; filesUnavailable is the server's reason for leaving
// the artifact file changes out.
func printRollbackPlan(w io.Writer, pipeline string, plan []*captainv1.EnvironmentRollback, filesUnavailable string, style statuscmd.Style) error {
	var b strings.Builder
	fmt.Fprintf(&b, "rollback preview, pipeline %s:\n", pipeline)
	if len(plan) == 0 {
		b.WriteString("  no environments selected\n")
	}
	for _, e := range plan {
		fmt.Fprintf(&b, "\nstage %s, environment %s: ", e.GetStage(), e.GetEnvironment())
		if e.GetAlreadyThere() {
			fmt.Fprintf(&b, "already there (runs %s), nothing to do\n", rel(e.GetToRelease()))
			continue
		}
		fmt.Fprintf(&b, "%s -> %s\n", rel(e.GetFromRelease()), style.Bold(rel(e.GetToRelease())))
		fmt.Fprintf(&b, "  hosts affected: %d", len(e.GetHosts()))
		if hs := e.GetHosts(); len(hs) > maxListed {
			fmt.Fprintf(&b, " (%s, ... and %d more)", strings.Join(hs[:maxListed], ", "), len(hs)-maxListed)
		} else if len(hs) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(hs, ", "))
		}
		b.WriteByte('\n')
		if id := e.GetCancelsDeploymentId(); id != "" {
			fmt.Fprintf(&b, "  cancels deployment %s (in progress)\n", style.Busy(id))
		}
		if len(e.GetSkippedSteps()) > 0 {
			fmt.Fprintf(&b, "  skips: %s\n", strings.Join(e.GetSkippedSteps(), ", "))
		}
		fmt.Fprintf(&b, "  commits that go away: %d\n", len(e.GetCommitsRemoved()))
		for i, cm := range e.GetCommitsRemoved() {
			if i == maxListed {
				fmt.Fprintf(&b, "    ... and %d more\n", len(e.GetCommitsRemoved())-maxListed)
				break
			}
			author := ""
			if cm.GetAuthor() != "" {
				author = "  (" + cm.GetAuthor() + ")"
			}
			fmt.Fprintf(&b, "    %s  %s%s\n", shortSHA(cm.GetSha()), cm.GetMessage(), author)
		}
		switch fc := e.GetFileChanges(); {
		case len(fc) == 0 && filesUnavailable != "":
			b.WriteString("  artifact file changes: unavailable (see below)\n")
		case len(fc) == 0:
			b.WriteString("  artifact file changes: none\n")
		default:
			fmt.Fprintf(&b, "  artifact file changes: %d\n", len(fc))
			for i, f := range fc {
				if i == maxListed {
					fmt.Fprintf(&b, "    ... and %d more\n", len(fc)-maxListed)
					break
				}
				fmt.Fprintf(&b, "    %-8s %s\n", fileChangeWord(f), f.GetPath())
			}
		}
	}
	if filesUnavailable != "" {
		fmt.Fprintf(&b, "\nartifact file changes unavailable: %s\n", filesUnavailable)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// towardTarget turns DiffReleases' file changes (older release to newer) into the plan's
// direction (running release to the rollback target): what the diff calls added, the rollback
// removes.
func towardTarget(files []*captainv1.FileChange) []*captainv1.FileChange {
	out := make([]*captainv1.FileChange, len(files))
	for i, f := range files {
		g := &captainv1.FileChange{Path: f.GetPath(), Kind: f.GetKind(), FromSize: f.GetToSize(), ToSize: f.GetFromSize(), Detail: f.GetDetail()}
		switch f.GetKind() {
		case captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED:
			g.Kind = captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED
		case captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED:
			g.Kind = captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED
		}
		out[i] = g
	}
	return out
}

// fileChangeWord describes a plan's file change, which goes from the running release to the
// target: an added file is one the target brings back.
func fileChangeWord(f *captainv1.FileChange) string {
	switch f.GetKind() {
	case captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED:
		return "restored"
	case captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED:
		return "removed"
	case captainv1.FileChangeKind_FILE_CHANGE_KIND_CHANGED:
		return "changed"
	}
	return "?"
}

// confirm asks before a rollback. Without a terminal there is nobody to ask, so only --yes
// lets it through: a script must say it means it.
func confirm(in io.Reader, tty bool, prompt io.Writer, n int, yes bool) (bool, error) {
	if yes {
		return true, nil
	}
	if !tty {
		return false, fmt.Errorf("refusing to roll back %d environment(s) without confirmation: stdin is not a terminal; pass --yes after checking the preview above", n)
	}
	fmt.Fprintf(prompt, "Roll back %d environment(s)? [y/N] ", n)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read the answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func printRollbackStarted(w io.Writer, pipeline, requestID string, res *captainv1.RollbackResponse) error {
	deps := res.GetDeployments()
	if len(deps) == 0 {
		_, err := fmt.Fprintf(w, "\nno rollback deployment started (request %s): every environment already runs its target\n", requestID)
		return err
	}
	fmt.Fprintf(w, "\nstarted %d rollback deployment(s) (request %s):\n", len(deps), requestID)
	rows := [][]string{}
	stages := []string{}
	for _, d := range deps {
		rows = append(rows, []string{d.GetId(), d.GetStage(), d.GetEnvironment(), rel(d.GetFromRelease()), rel(d.GetRelease())})
		if !slices.Contains(stages, d.GetStage()) {
			stages = append(stages, d.GetStage())
		}
	}
	if err := table(w, "DEPLOYMENT\tSTAGE\tENVIRONMENT\tFROM\tTO", rows); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\npromotions into and out of %s are blocked; follow with `captain history --pipeline %s --env ENV`,\nlift the block with `captain promotions enable --pipeline %s --stage STAGE` once the cause is fixed\n",
		strings.Join(stages, ", "), pipeline, pipeline)
	return err
}
