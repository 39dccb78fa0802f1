// Command captain-agent runs on every host: it puts releases on the host and reports how
// they run. This file holds the root command; each subcommand lives in its own file.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "captain-agent:", err)
		stop()
		os.Exit(1)
	}
}

// globalOptions are the flags every subcommand shares.
type globalOptions struct {
	logLevel string
	stderr   io.Writer
	// log is set before any subcommand runs.
	log *slog.Logger
}

// setup builds the logger: key=value lines on stderr, where journald picks them up.
func (g *globalOptions) setup() error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	g.log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lvl}))
	return nil
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalOptions{stderr: stderr}
	root := &cobra.Command{
		Use:   "captain-agent",
		Short: "Captain's host agent: deploys releases on this host and reports their health",
		Long: `captain-agent runs on every host Captain deploys to. It fetches signed artifacts,
unpacks each deployment into a new directory under <app root>/releases, flips the
<app root>/current symlink atomically, restarts the app's systemd unit, runs its health
checks and reports the result to the coordinators.

Its state lives in the state directory (default /var/lib/captain): the deployment in
progress and the step it reached, what runs now, the last good release, the artifact
cache and the events not yet reported. A killed agent resumes from there.`,
		Example: `  # Make this host a Captain host (as root):
  captain-agent install --coordinator http://10.0.0.1:7400 --join-token-file /tmp/join-token \
    --labels region=us-east-1,az=use1-az1 --trusted-key /tmp/release.pub

  # What does this host run, from local state alone?
  captain-agent status
  captain-agent status -o json

  # Which build is installed?
  captain-agent --version`,
		Version: buildinfo.Version(),
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return g.setup()
		},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("captain-agent {{.Version}}\n")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(newStatusCmd(g), newRunCmd(g), newInstallCmd(g), newUninstallCmd(g))
	return root
}
