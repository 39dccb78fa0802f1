package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/pipelinespec"
)

func newPipelineValidateCommand(cfg *clientcfg.Config) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "validate -f FILE",
		Short: "Check a pipeline.yaml without applying it",
		Long: `Check a pipeline spec file: unknown fields, duplicate stage and environment names, empty
selectors, bad durations, batch sizes out of range, unknown alarm references and time windows
that never open. Prints "ok", or every error with the path of the field, and exits 1.

Runs locally; it needs no coordinator.`,
		Example: `  captain pipeline validate -f ops/examples/pipeline.yaml
  captain pipeline validate -f pipeline.yaml -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("read spec: %w", err)
			}
			_, vs, err := pipelinespec.ParseYAML(data)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if cfg.JSON() {
				if vs == nil {
					vs = pipelinespec.Violations{}
				}
				if err := clientcfg.PrintAnyJSON(cmd.OutOrStdout(), map[string]any{"file": file, "valid": len(vs) == 0, "violations": vs}); err != nil {
					return err
				}
			} else if len(vs) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "ok")
			} else {
				for _, v := range vs {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", file, v)
				}
			}
			if n := len(vs); n > 0 {
				return fmt.Errorf("%s: %d error%s", file, n, plural(n))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "pipeline spec file (YAML or JSON)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
