// Package cli builds the `captain` operator command line.
package cli

import (
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/buildinfo"
	"github.com/captain-cd/captain/ops/cli/artifactcmd"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/coordcmd"
	"github.com/captain-cd/captain/ops/cli/devcmd"
)

// NewRootCommand returns the `captain` command with every subcommand attached.
func NewRootCommand() *cobra.Command {
	cfg := &clientcfg.Config{}
	root := &cobra.Command{
		Use:   "captain",
		Short: "Operate Captain: pipelines, artifacts, releases, rollbacks and the coordinator cluster",
		Long: `captain is the operator command line of Captain, a deployment system that moves every
release of trunk through waves of stages with no human in the loop.

It talks to any coordinator node over the Connect API. Set the address and token once:

  export CAPTAIN_ADDR=127.0.0.1:7400 CAPTAIN_TOKEN=cpt_...

Commands that only read files (pipeline validate, keygen) need neither.`,
		Version:       buildinfo.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return cfg.Validate()
		},
	}
	cfg.BindFlags(root.PersistentFlags())
	root.SetVersionTemplate("captain {{.Version}}\n")

	for _, c := range coordcmd.NewCommands(cfg) {
		if c.Name() == "pipeline" {
			c.AddCommand(newPipelineValidateCommand(cfg))
		}
		root.AddCommand(c)
	}
	root.AddCommand(artifactcmd.NewArtifactCommand(cfg), artifactcmd.NewKeygenCommand())
	root.AddCommand(devcmd.NewDevCommand(cfg))
	return root
}
