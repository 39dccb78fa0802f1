// Package artifactcmd holds the `captain artifact` and `captain keygen` commands.
package artifactcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/store"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
)

// s3Flags are shared by every subcommand that talks to the bucket.
type s3Flags struct {
	endpoint string
	region   string
}

func (f *s3Flags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.endpoint, "s3-endpoint", os.Getenv("CAPTAIN_S3_ENDPOINT"), "S3-compatible endpoint URL, e.g. http://127.0.0.1:7070 (default AWS S3; env CAPTAIN_S3_ENDPOINT)")
	cmd.Flags().StringVar(&f.region, "region", firstNonEmpty(os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION")), "bucket region (env AWS_REGION)")
}

func (f *s3Flags) store(bucket string) (*store.Store, error) {
	return store.New(store.Config{Endpoint: f.endpoint, Region: f.region, Bucket: bucket})
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func ctxOf(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// NewArtifactCommand returns `captain artifact` with push, fetch and diff.
// Output format comes from the global -o flag of cfg.
func NewArtifactCommand(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "artifact",
		Short: "Build, store, fetch and compare signed artifacts",
		Long: `An artifact is a directory tree archived as tar+zstd, described by a JSON manifest
(every file's path, mode, size and sha256) and signed with ed25519. It is stored in an
S3-compatible bucket under artifacts/<pipeline>/<archive sha256>.tar.zst, with the manifest
and signature beside it, and is never overwritten.

Credentials come from the standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
MINIO_ACCESS_KEY/MINIO_SECRET_KEY, ~/.aws/credentials, ~/.mc/config.json, then the
instance role.`,
		Example: `  captain keygen --out release.key
  captain artifact push ./build --pipeline web --commit $(git rev-parse HEAD) --sign-key release.key --bucket deploys
  captain artifact fetch s3://deploys/artifacts/web/<sha256>.tar.zst --out /tmp/web --trusted-key release.key.pub
  captain artifact diff REF_A REF_B --trusted-key release.key.pub`,
	}
	cmd.AddCommand(newPushCommand(cfg), newFetchCommand(cfg), newDiffCommand(cfg))
	return cmd
}

func newPushCommand(cfg *clientcfg.Config) *cobra.Command {
	var (
		s3                                s3Flags
		pipeline, commit, signKey, bucket string
		builder                           string
	)
	cmd := &cobra.Command{
		Use:   "push DIR",
		Short: "Archive DIR, sign its manifest and upload all three objects",
		Long: `Archives DIR deterministically (sorted entries, fixed times, no owners: the same tree
always gives the same sha256), writes and signs the manifest, and uploads archive,
manifest and signature with If-None-Match: *. Pushing the same tree again is a no-op;
a key that holds different bytes is never overwritten. Prints the artifact reference.`,
		Example: `  captain artifact push ./build --pipeline web --commit 4f2a9c1 --sign-key release.key --bucket deploys
  captain artifact push ./build --pipeline web --commit 4f2a9c1 --sign-key release.key \
      --bucket deploys --s3-endpoint http://127.0.0.1:7070 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := manifest.LoadPrivateKey(signKey)
			if err != nil {
				return err
			}
			st, err := s3.store(bucket)
			if err != nil {
				return err
			}
			opts := push.Options{Dir: args[0], Pipeline: pipeline, Commit: commit, Builder: builder, Key: key}
			var bar *progressBar
			if isTerminal(cmd.ErrOrStderr()) {
				opts.Progress = func(total int64) io.Reader {
					bar = newProgressBar(cmd.ErrOrStderr(), "upload", total)
					return bar
				}
			}
			res, err := push.Push(ctxOf(cmd), st, opts)
			if bar != nil {
				bar.finish()
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if cfg.JSON() {
				return writeJSON(w, res)
			}
			state := "uploaded"
			if res.Existed {
				state = fmt.Sprintf("already stored (first pushed for commit %s at %s); nothing uploaded", res.Manifest.Commit, res.Manifest.Created.Format("2006-01-02T15:04:05Z"))
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "artifact\t%s\n", res.URI)
			fmt.Fprintf(tw, "pipeline\t%s\n", res.Ref.Pipeline)
			fmt.Fprintf(tw, "sha256\t%s\n", res.Ref.SHA256)
			fmt.Fprintf(tw, "size\t%d bytes, %d entries\n", res.Size, res.Files)
			fmt.Fprintf(tw, "bucket\t%s\n", res.Ref.Bucket)
			fmt.Fprintf(tw, "keys\t%s\n\t%s\n\t%s\n", res.ArchiveKey, res.ManifestKey, res.SignatureKey)
			fmt.Fprintf(tw, "status\t%s\n", state)
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "pipeline the artifact belongs to (required)")
	cmd.Flags().StringVar(&commit, "commit", "", "commit the tree was built from (required)")
	cmd.Flags().StringVar(&signKey, "sign-key", "", "ed25519 private key from `captain keygen` (required)")
	cmd.Flags().StringVar(&bucket, "bucket", os.Getenv("CAPTAIN_BUCKET"), "bucket to upload to (env CAPTAIN_BUCKET)")
	cmd.Flags().StringVar(&builder, "builder", defaultBuilder(), "who built the artifact, recorded in the manifest")
	s3.register(cmd)
	for _, f := range []string{"pipeline", "commit", "sign-key"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func defaultBuilder() string {
	host, _ := os.Hostname()
	if u, err := user.Current(); err == nil {
		return u.Username + "@" + host
	}
	return host
}

func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "captain", "artifacts")
	}
	return filepath.Join(os.TempDir(), "captain-artifacts")
}

func newFetchCommand(cfg *clientcfg.Config) *cobra.Command {
	var (
		s3          s3Flags
		dest, cache string
		trusted     []string
	)
	cmd := &cobra.Command{
		Use:   "fetch REF",
		Short: "Download, verify and unpack an artifact into a new directory",
		Long: `Downloads the artifact into the cache (skipped when a verified copy is there), checks
the manifest signature against the trusted keys and the archive sha256, then unpacks it
into --out, which must not exist. The unpacked tree is checked entry by entry against
the manifest; anything unsafe (paths or links leaving the directory, devices, oversize
content) rejects the whole artifact and leaves nothing behind.`,
		Example: `  captain artifact fetch s3://deploys/artifacts/web/9f86d0...0a08.tar.zst \
      --out /srv/web/releases/42 --trusted-key /etc/captain/release.pub`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := store.ParseRef(args[0])
			if err != nil {
				return err
			}
			keys, err := manifest.LoadTrustedKeys(trusted...)
			if err != nil {
				return err
			}
			st, err := s3.store(ref.Bucket)
			if err != nil {
				return err
			}
			f := &fetch.Fetcher{Store: st, CacheDir: cache, Trusted: keys, Retry: fetch.DefaultRetry()}
			a, err := f.Fetch(ctxOf(cmd), ref)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(filepath.Clean(dest)), 0o755); err != nil {
				return fmt.Errorf("create parent of --out: %w", err)
			}
			if err := a.Extract(ctxOf(cmd), dest, extract.DefaultLimits()); err != nil {
				return err
			}
			res := struct {
				Ref       string `json:"ref"`
				Out       string `json:"out"`
				Pipeline  string `json:"pipeline"`
				Commit    string `json:"commit"`
				Files     int    `json:"files"`
				FromCache bool   `json:"from_cache"`
			}{ref.String(), dest, a.Manifest.Pipeline, a.Manifest.Commit, len(a.Manifest.Files), a.FromCache}
			if cfg.JSON() {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			src := "downloaded"
			if a.FromCache {
				src = "from cache"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "unpacked %s (commit %s, %d entries, %s) into %s\n", ref, a.Manifest.Commit, len(a.Manifest.Files), src, dest)
			return err
		},
	}
	cmd.Flags().StringVar(&dest, "out", "", "directory to create and unpack into (required, must not exist)")
	cmd.Flags().StringSliceVar(&trusted, "trusted-key", nil, "public key file to trust (repeatable, at least one)")
	cmd.Flags().StringVar(&cache, "cache", defaultCacheDir(), "artifact cache directory")
	s3.register(cmd)
	_ = cmd.MarkFlagRequired("out")
	_ = cmd.MarkFlagRequired("trusted-key")
	return cmd
}

func newDiffCommand(cfg *clientcfg.Config) *cobra.Command {
	var (
		s3      s3Flags
		trusted []string
	)
	cmd := &cobra.Command{
		Use:   "diff REF_A REF_B",
		Short: "List files added, removed and changed from one artifact to another",
		Long: `Compares the manifests of two artifacts (only the manifests are downloaded). With
--trusted-key the signatures are verified first; without, the manifests are only parsed.`,
		Example: `  captain artifact diff s3://deploys/artifacts/web/<sha-a>.tar.zst s3://deploys/artifacts/web/<sha-b>.tar.zst \
      --trusted-key release.key.pub`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := manifest.LoadTrustedKeys(trusted...)
			if err != nil {
				return err
			}
			var ms [2]*manifest.Manifest
			for i, a := range args {
				ref, err := store.ParseRef(a)
				if err != nil {
					return err
				}
				st, err := s3.store(ref.Bucket)
				if err != nil {
					return err
				}
				f := &fetch.Fetcher{Store: st, Trusted: keys, Retry: fetch.DefaultRetry()}
				if ms[i], err = f.Manifest(ctxOf(cmd), ref); err != nil {
					return err
				}
			}
			changes := manifest.Diff(ms[0], ms[1])
			if changes == nil {
				changes = []manifest.Change{}
			}
			w := cmd.OutOrStdout()
			if cfg.JSON() {
				return writeJSON(w, map[string]any{"from": args[0], "to": args[1], "changes": changes})
			}
			if len(changes) == 0 {
				_, err := fmt.Fprintln(w, "no differences")
				return err
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "CHANGE\tPATH\tDETAIL")
			for _, c := range changes {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", c.What, c.Path, detail(c))
			}
			fmt.Fprintf(tw, "\n%s\n", manifest.Summary(changes))
			return tw.Flush()
		},
	}
	cmd.Flags().StringSliceVar(&trusted, "trusted-key", nil, "public key file to verify signatures with (repeatable)")
	s3.register(cmd)
	return cmd
}

func detail(c manifest.Change) string {
	describe := func(e *manifest.Entry) string {
		switch e.Type {
		case manifest.TypeFile:
			return fmt.Sprintf("file %04o %d bytes %.12s", uint32(e.Mode), e.Size, e.SHA256)
		case manifest.TypeSymlink:
			return "symlink -> " + e.Target
		default:
			return fmt.Sprintf("%s %04o", e.Type, uint32(e.Mode))
		}
	}
	switch {
	case c.Old == nil:
		return describe(c.New)
	case c.New == nil:
		return describe(c.Old)
	}
	return describe(c.Old) + " => " + describe(c.New)
}

// NewKeygenCommand returns `captain keygen`.
func NewKeygenCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen --out KEY",
		Short: "Create an ed25519 key pair for signing artifacts",
		Long: `Writes a new private key to KEY (mode 0600) and its public key to KEY.pub, both PEM.
Keep KEY in your CI secret store; give KEY.pub to agents and operators as a trusted key.
Existing files are never overwritten.`,
		Example: `  captain keygen --out release.key
  # then: captain artifact push ... --sign-key release.key
  #       captain-agent ... trusts release.key.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out is required: the path of the private key to create")
			}
			if _, err := manifest.GenerateKeyFiles(out); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "wrote private key %s (keep it secret)\nwrote public key  %s.pub (distribute as a trusted key)\n", out, out)
			return err
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "path of the private key to write; the public key goes to PATH.pub")
	return cmd
}
