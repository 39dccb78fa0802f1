package coordcmd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/artifacts/store"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// NewReleaseCommand returns `captain release`.
func NewReleaseCommand(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Create and read releases",
		Example: `  captain release create --pipeline web --artifact-file push.json --commit $(git rev-parse HEAD)
  captain release list --pipeline web
  captain release show web 42
  captain release diff web 41 42`,
	}
	cmd.AddCommand(releaseCreate(cfg), releaseList(cfg), releaseShow(cfg), releaseDiff(cfg))
	return cmd
}

type releaseOpts struct {
	pipeline, artifact, artifactFile, commit, commitsFile, requestID string
	artifactSize                                                     int64
}

// pushOutput is the JSON `captain artifact push -o json` prints; flat fields are accepted
// too, so a hand-written ref file works.
type pushOutput struct {
	Ref *struct {
		Bucket   string `json:"bucket"`
		Pipeline string `json:"pipeline"`
		SHA256   string `json:"sha256"`
	} `json:"ref"`
	Bucket       string `json:"bucket"`
	Key          string `json:"key"`
	ArchiveKey   string `json:"archive_key"`
	SHA256       string `json:"sha256"`
	Size         int64  `json:"size"`
	ManifestKey  string `json:"manifest_key"`
	SignatureKey string `json:"signature_key"`
}

func (o *releaseOpts) artifactRef() (*captainv1.ArtifactRef, error) {
	switch {
	case o.artifact != "" && o.artifactFile != "":
		return nil, errors.New("give --artifact or --artifact-file, not both")
	case o.artifactFile != "":
		data, err := os.ReadFile(o.artifactFile)
		if err != nil {
			return nil, fmt.Errorf("read --artifact-file: %w", err)
		}
		var p pushOutput
		if err := json.Unmarshal(data, &p); err != nil {
			return nil, fmt.Errorf("--artifact-file %s: not the JSON of `captain artifact push -o json`: %w", o.artifactFile, err)
		}
		a := &captainv1.ArtifactRef{Bucket: p.Bucket, Key: p.Key, Sha256: p.SHA256, Size: p.Size, ManifestKey: p.ManifestKey, SignatureKey: p.SignatureKey}
		if p.Ref != nil {
			a.Bucket, a.Sha256 = p.Ref.Bucket, p.Ref.SHA256
		}
		if a.Key == "" {
			a.Key = p.ArchiveKey
		}
		if a.Bucket == "" || a.Key == "" || a.Sha256 == "" {
			return nil, fmt.Errorf("--artifact-file %s: needs bucket, key (or archive_key) and sha256", o.artifactFile)
		}
		return a, nil
	case o.artifact != "":
		r, err := store.ParseRef(o.artifact)
		if err != nil {
			return nil, err
		}
		return &captainv1.ArtifactRef{
			Bucket: r.Bucket, Key: r.ArchiveKey(), Sha256: r.SHA256, Size: o.artifactSize,
			ManifestKey: r.ManifestKey(), SignatureKey: r.SignatureKey(),
		}, nil
	default:
		return nil, errors.New("--artifact s3://BUCKET/artifacts/PIPELINE/SHA256.tar.zst or --artifact-file FILE is required")
	}
}

// readCommits reads `git log --format='%H%x09%an <%ae>%x09%s'` (tab-separated) or
// `git log --format='%H %s'` output, newest first.
func readCommits(path string) ([]*captainv1.Commit, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read --commits-file: %w", err)
	}
	var out []*captainv1.Commit
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var c captainv1.Commit
		if parts := strings.SplitN(line, "\t", 3); len(parts) == 3 {
			c.Sha, c.Author, c.Message = parts[0], parts[1], parts[2]
		} else {
			c.Sha, c.Message, _ = strings.Cut(line, " ")
		}
		if len(c.Sha) < 7 {
			return nil, fmt.Errorf("--commits-file %s line %d: %q does not start with a commit SHA", path, n, line)
		}
		out = append(out, &c)
	}
	return out, sc.Err()
}

func releaseCreate(cfg *clientcfg.Config) *cobra.Command {
	o := &releaseOpts{}
	cmd := &cobra.Command{
		Use:   "create --pipeline P (--artifact REF | --artifact-file F) --commit SHA",
		Short: "Create the next release of a pipeline",
		Long: `Create the pipeline's next numbered release pointing at an artifact.

The request ID defaults to one derived from pipeline, artifact and commit, so re-running the
same command (a CI retry) returns the release created the first time instead of a new one.`,
		Example: `  captain artifact push -o json ... > push.json
  captain release create --pipeline web --artifact-file push.json --commit $(git rev-parse HEAD) \
    --commits-file <(git log --format='%H%x09%an <%ae>%x09%s' v41..HEAD)
  captain release create --pipeline web --commit 4f2a9c1e \
    --artifact s3://builds/artifacts/web/9b74c9897bac770ffc029102a200c5de4d2b3c1f5e6d7a8b9c0d1e2f3a4b5c6d.tar.zst --artifact-size 1048576`,
		Args: cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			if o.pipeline == "" || o.commit == "" {
				return errors.New("--pipeline and --commit are required")
			}
			art, err := o.artifactRef()
			if err != nil {
				return err
			}
			req := &captainv1.CreateReleaseRequest{Pipeline: o.pipeline, Artifact: art, HeadCommit: o.commit, RequestId: o.requestID}
			if o.commitsFile != "" {
				if req.Commits, err = readCommits(o.commitsFile); err != nil {
					return err
				}
			}
			if req.RequestId == "" {
				req.RequestId = fmt.Sprintf("release/%s/%.16s/%.12s", o.pipeline, art.GetSha256(), o.commit)
			}
			res, err := c.release.CreateRelease(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			r := res.Msg.GetRelease()
			if res.Msg.GetCreated() {
				fmt.Fprintf(cmd.OutOrStdout(), "created release %s/%d (%d commits)\n", r.GetPipeline(), r.GetNumber(), len(r.GetCommits()))
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "release %s/%d already exists for request %s\n", r.GetPipeline(), r.GetNumber(), r.GetRequestId())
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.pipeline, "pipeline", "", "pipeline name")
	f.StringVar(&o.artifact, "artifact", "", "artifact as s3://BUCKET/artifacts/PIPELINE/SHA256.tar.zst")
	f.Int64Var(&o.artifactSize, "artifact-size", 0, "archive size in bytes (with --artifact)")
	f.StringVar(&o.artifactFile, "artifact-file", "", "JSON printed by `captain artifact push -o json`")
	f.StringVar(&o.commit, "commit", "", "commit SHA the artifact was built from")
	f.StringVar(&o.commitsFile, "commits-file", "", "commits new in this release, newest first: lines of `SHA<TAB>Author<TAB>subject` or `SHA subject`")
	f.StringVar(&o.requestID, "request-id", "", "idempotency key (default: derived from pipeline, artifact and commit)")
	return cmd
}

func releaseList(cfg *clientcfg.Config) *cobra.Command {
	var pipeline string
	var limit uint32
	var before uint64
	cmd := &cobra.Command{
		Use:     "list --pipeline P",
		Short:   "List a pipeline's releases, newest first",
		Example: "  captain release list --pipeline web --limit 10",
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			if pipeline == "" {
				return errors.New("--pipeline is required")
			}
			res, err := c.release.ListReleases(cmd.Context(), connect.NewRequest(&captainv1.ListReleasesRequest{Pipeline: pipeline, Limit: limit, Before: before}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			rows := [][]string{}
			for _, r := range res.Msg.GetReleases() {
				rows = append(rows, []string{strconv.FormatUint(r.GetNumber(), 10), short(r.GetHeadCommit()), strconv.Itoa(len(r.GetCommits())),
					short(r.GetArtifact().GetSha256()), r.GetCreatedBy(), ts(r.GetCreatedAt())})
			}
			return table(cmd.OutOrStdout(), "RELEASE\tCOMMIT\tCOMMITS\tARTIFACT\tCREATED BY\tCREATED AT", rows)
		}),
	}
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "pipeline name")
	cmd.Flags().Uint32Var(&limit, "limit", 50, "most releases to show")
	cmd.Flags().Uint64Var(&before, "before", 0, "only releases numbered below this")
	return cmd
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return orDash(s)
}

func releaseShow(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "show PIPELINE NUMBER",
		Short: "Show one release: artifact, commits, where it runs and its status per stage",
		Long: `Show one release: its artifact, the commits new in it, the environments running it now,
and per stage whether it is waiting in the inbox, in progress, approved, failed, marked bad,
superseded in the inbox by a newer release, or has not reached the stage.`,
		Example: "  captain release show web 42\n  captain release show web 42 -o json",
		Args:    cobra.ExactArgs(2),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			n, err := releaseNumber(args[1])
			if err != nil {
				return err
			}
			res, err := c.release.GetRelease(cmd.Context(), connect.NewRequest(&captainv1.GetReleaseRequest{Pipeline: args[0], Number: n}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			return printRelease(cmd.OutOrStdout(), res.Msg)
		}),
	}
}

func releaseNumber(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("release number %q: want a positive integer, as `captain release list` shows", s)
	}
	return n, nil
}

func printRelease(w io.Writer, res *captainv1.GetReleaseResponse) error {
	var b strings.Builder
	r := res.GetRelease()
	a := r.GetArtifact()
	fmt.Fprintf(&b, "release %s/%d, created by %s at %s (pipeline version %d)\n", r.GetPipeline(), r.GetNumber(),
		r.GetCreatedBy(), ts(r.GetCreatedAt()), r.GetPipelineVersion())
	fmt.Fprintf(&b, "artifact s3://%s/%s (%d bytes, sha256 %s)\n", a.GetBucket(), a.GetKey(), a.GetSize(), short(a.GetSha256()))
	var running []string
	for _, s := range res.GetStages() {
		running = append(running, s.GetEnvironmentsRunning()...)
	}
	if len(running) == 0 {
		b.WriteString("deployed in: no environment runs it now\n")
	} else {
		fmt.Fprintf(&b, "deployed in: %s\n", strings.Join(running, ", "))
	}
	fmt.Fprintf(&b, "commits: %d\n", len(r.GetCommits()))
	for _, cm := range r.GetCommits() {
		author := ""
		if cm.GetAuthor() != "" {
			author = "  (" + cm.GetAuthor() + ")"
		}
		fmt.Fprintf(&b, "  %s  %s%s\n", shortSHA(cm.GetSha()), cm.GetMessage(), author)
	}
	b.WriteByte('\n')
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	rows := [][]string{}
	for _, s := range res.GetStages() {
		rows = append(rows, []string{s.GetStage(), releaseStageStatus(s.GetStatus()), ts(s.GetSince()),
			orDash(strings.Join(s.GetEnvironmentsRunning(), ",")), orDash(s.GetDetail())})
	}
	return table(w, "STAGE\tSTATUS\tSINCE\tRUNNING IN\tDETAIL", rows)
}

func releaseStageStatus(s captainv1.ReleaseStageStatus) string {
	switch s {
	case captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_UNSPECIFIED:
		return "not reached"
	case captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_IN_PROGRESS:
		return "in progress"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "RELEASE_STAGE_STATUS_"))
}

func releaseDiff(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "diff PIPELINE A B",
		Short: "Show the commits and artifact file changes between two releases",
		Long: `Show what differs between releases A and B of a pipeline: the commits in the newer one that
the older lacks, and the artifact file changes from the older artifact to the newer one (from
the manifests, which the coordinator reads from the artifact store when captaind runs with
--s3-endpoint or --s3-region; otherwise the output says why they are missing).`,
		Example: "  captain release diff web 41 42\n  captain release diff web 41 42 -o json",
		Args:    cobra.ExactArgs(3),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			a, err := releaseNumber(args[1])
			if err != nil {
				return err
			}
			b, err := releaseNumber(args[2])
			if err != nil {
				return err
			}
			res, err := c.release.DiffReleases(cmd.Context(), connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: args[0], From: a, To: b}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			return printReleaseDiff(cmd.OutOrStdout(), args[0], min(a, b), max(a, b), res.Msg)
		}),
	}
}

func printReleaseDiff(w io.Writer, pipeline string, older, newer uint64, d *captainv1.DiffReleasesResponse) error {
	if _, err := fmt.Fprintf(w, "release %s #%d -> #%d\n\ncommits: %d\n", pipeline, older, newer, len(d.GetCommits())); err != nil {
		return err
	}
	if len(d.GetCommits()) > 0 {
		rows := [][]string{}
		for _, cm := range d.GetCommits() {
			rows = append(rows, []string{shortSHA(cm.GetSha()), orDash(cm.GetAuthor()), cm.GetMessage()})
		}
		if err := table(w, "COMMIT\tAUTHOR\tMESSAGE", rows); err != nil {
			return err
		}
	}
	if why := d.GetFilesUnavailable(); why != "" {
		_, err := fmt.Fprintf(w, "\nfile changes: unavailable: %s\n", why)
		return err
	}
	if _, err := fmt.Fprintf(w, "\nfile changes: %d\n", len(d.GetFiles())); err != nil {
		return err
	}
	if len(d.GetFiles()) == 0 {
		return nil
	}
	rows := [][]string{}
	for _, f := range d.GetFiles() {
		kind := strings.ToLower(strings.TrimPrefix(f.GetKind().String(), "FILE_CHANGE_KIND_"))
		size := ""
		switch {
		case f.GetDetail() == "directory" || f.GetDetail() == "symlink" || f.GetDetail() == "type":
			size = "-"
		case f.GetKind() == captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED:
			size = strconv.FormatInt(f.GetToSize(), 10)
		case f.GetKind() == captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED:
			size = strconv.FormatInt(f.GetFromSize(), 10)
		default:
			size = fmt.Sprintf("%d -> %d", f.GetFromSize(), f.GetToSize())
		}
		rows = append(rows, []string{kind, f.GetPath(), size, orDash(f.GetDetail())})
	}
	return table(w, "CHANGE\tPATH\tSIZE\tWHAT", rows)
}
