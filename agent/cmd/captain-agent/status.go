package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/agent/deploy"
	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/agent/loop"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

type statusOptions struct {
	stateDir string
	output   string
}

func newStatusCmd(g *globalOptions) *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what this host runs, from local state alone (no coordinator needed)",
		Long: `status prints, for every pipeline this host has deployed, where the current symlink
points, the release directories on disk, the last good release, the last deployment
result and any deployment in progress with the step it reached.

It reads the state file without taking the agent's lock, so it works while the agent runs
and when no coordinator is reachable. The current symlink is read from disk, not from
the state file.`,
		Example: `  captain-agent status
  captain-agent status --state-dir /var/lib/captain -o json | jq '.apps[].current_target'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.output != "text" && o.output != "json" {
				return fmt.Errorf("--output %q: use text or json", o.output)
			}
			st, err := localstate.Load(o.stateDir)
			if err != nil {
				return err
			}
			rep := buildStatus(o.stateDir, st)
			if id, ok, err := loop.LoadIdentity(o.stateDir); err != nil {
				g.log.Warn("host identity unreadable", "err", err)
			} else if ok {
				rep.HostID = id.HostID
			}
			g.log.Debug("status read", "state_file", filepath.Join(o.stateDir, localstate.FileName), "apps", len(rep.Apps))
			if o.output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return printStatus(cmd.OutOrStdout(), rep)
		},
	}
	cmd.Flags().StringVar(&o.stateDir, "state-dir", localstate.DefaultDir, "agent state directory")
	cmd.Flags().StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	return cmd
}

// statusReport is the JSON shape of `status -o json`; field names are part of the CLI's
// contract, keep them stable.
type statusReport struct {
	StateDir string `json:"state_dir"`
	// HostID is the identity the coordinator gave this host; empty before registration.
	HostID        string      `json:"host_id,omitempty"`
	PendingEvents int         `json:"pending_events"`
	Apps          []appStatus `json:"apps"`
}

type appStatus struct {
	Pipeline      string        `json:"pipeline"`
	Environment   string        `json:"environment,omitempty"`
	AppRoot       string        `json:"app_root"`
	CurrentTarget string        `json:"current_target"`
	CurrentError  string        `json:"current_error,omitempty"`
	Current       *releaseRef   `json:"current,omitempty"`
	LastGood      *releaseRef   `json:"last_good,omitempty"`
	Health        string        `json:"health"`
	InProgress    *inProgress   `json:"in_progress,omitempty"`
	LastResult    *lastResult   `json:"last_result,omitempty"`
	Releases      []diskRelease `json:"releases_on_disk"`
}

type releaseRef struct {
	Release      uint64 `json:"release"`
	DeploymentID string `json:"deployment_id"`
	Dir          string `json:"dir"`
}

type inProgress struct {
	Release      uint64    `json:"release"`
	DeploymentID string    `json:"deployment_id"`
	Step         string    `json:"step"`
	Since        time.Time `json:"since"`
}

type lastResult struct {
	Release      uint64    `json:"release"`
	DeploymentID string    `json:"deployment_id"`
	State        string    `json:"state"`
	Message      string    `json:"message"`
	At           time.Time `json:"at"`
	Outputs      []output  `json:"outputs,omitempty"`
}

type output struct {
	Name     string `json:"name"`
	Passed   bool   `json:"passed"`
	ExitCode int32  `json:"exit_code"`
	Output   string `json:"output,omitempty"`
}

type diskRelease struct {
	Dir          string `json:"dir"`
	Release      uint64 `json:"release,omitempty"`
	DeploymentID string `json:"deployment_id,omitempty"`
	Current      bool   `json:"current,omitempty"`
	LastGood     bool   `json:"last_good,omitempty"`
	// Unknown marks a directory on disk that local state does not list (a leftover the next
	// prune removes, or something not made by captain).
	Unknown bool `json:"unknown,omitempty"`
}

func shortState(s captainv1.HostDeployState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "HOST_DEPLOY_STATE_"))
}

func buildStatus(dir string, st *localstate.State) statusReport {
	rep := statusReport{StateDir: dir, PendingEvents: len(st.Events), Apps: []appStatus{}}
	for _, name := range st.Pipelines() {
		a := st.Apps[name]
		as := appStatus{
			Pipeline:    a.Pipeline,
			Environment: a.Environment,
			AppRoot:     a.AppRoot,
			Health:      strings.ToLower(strings.TrimPrefix(a.Health.String(), "HEALTH_STATE_")),
			Releases:    []diskRelease{},
		}
		if a.AppRoot != "" {
			cur, err := deploy.ReadCurrent(a.AppRoot)
			as.CurrentTarget = cur
			if err != nil {
				as.CurrentError = err.Error()
			}
		}
		if a.CurrentDir != "" {
			as.Current = &releaseRef{Release: a.CurrentRelease, DeploymentID: a.CurrentDeploymentID, Dir: a.CurrentDir}
		}
		if a.LastGoodDir != "" {
			as.LastGood = &releaseRef{Release: a.LastGoodRelease, DeploymentID: a.LastGoodDeploymentID, Dir: a.LastGoodDir}
		}
		if d := a.Desired.M; d != nil {
			as.InProgress = &inProgress{Release: d.GetRelease(), DeploymentID: d.GetDeploymentId(), Step: string(a.Step), Since: a.StepStarted}
		}
		if lr := a.LastResult; lr != nil {
			l := &lastResult{Release: lr.Release, DeploymentID: lr.DeploymentID, State: shortState(lr.State), Message: lr.Message, At: lr.At}
			for _, o := range lr.Outputs {
				l.Outputs = append(l.Outputs, output{Name: o.M.GetName(), Passed: o.M.GetPassed(), ExitCode: o.M.GetExitCode(), Output: o.M.GetOutput()})
			}
			as.LastResult = l
		}
		as.Releases = diskReleases(a, filepath.Base(as.CurrentTarget))
		rep.Apps = append(rep.Apps, as)
	}
	return rep
}

// diskReleases lists releases/ as it is on disk, annotated from local state.
func diskReleases(a *localstate.App, currentDir string) []diskRelease {
	out := []diskRelease{}
	if a.AppRoot == "" {
		return out
	}
	ents, err := os.ReadDir(filepath.Join(a.AppRoot, deploy.ReleasesDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return out
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		d := diskRelease{Dir: e.Name(), Current: e.Name() == currentDir, LastGood: e.Name() == a.LastGoodDir}
		if r, ok := a.FindRelease(e.Name()); ok {
			d.Release, d.DeploymentID = r.Release, r.DeploymentID
		} else {
			d.Unknown = true
			if n, _, ok := strings.Cut(e.Name(), "-"); ok {
				d.Release, _ = strconv.ParseUint(n, 10, 64)
			}
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(x, y diskRelease) int {
		return cmp.Or(cmp.Compare(x.Release, y.Release), strings.Compare(x.Dir, y.Dir))
	})
	return out
}

func printStatus(w io.Writer, rep statusReport) error {
	if rep.HostID != "" {
		fmt.Fprintf(w, "host %s\n\n", rep.HostID)
	}
	if len(rep.Apps) == 0 {
		_, err := fmt.Fprintf(w, "No deployments recorded in %s yet.\n", rep.StateDir)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, a := range rep.Apps {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		fmt.Fprintf(tw, "PIPELINE\t%s\n", a.Pipeline)
		if a.Environment != "" {
			fmt.Fprintf(tw, "environment\t%s\n", a.Environment)
		}
		fmt.Fprintf(tw, "app root\t%s\n", a.AppRoot)
		cur := a.CurrentTarget
		switch {
		case a.CurrentError != "":
			cur = "error: " + a.CurrentError
		case cur == "":
			cur = "(none)"
		}
		if a.Current != nil {
			cur += fmt.Sprintf(" (release %d, deployment %s, health %s)", a.Current.Release, a.Current.DeploymentID, a.Health)
		}
		fmt.Fprintf(tw, "current\t%s\n", cur)
		if a.LastGood != nil {
			fmt.Fprintf(tw, "last good\trelease %d (deployment %s, %s)\n", a.LastGood.Release, a.LastGood.DeploymentID, a.LastGood.Dir)
		} else {
			fmt.Fprintf(tw, "last good\t(none)\n")
		}
		if p := a.InProgress; p != nil {
			fmt.Fprintf(tw, "in progress\trelease %d (deployment %s) at step %s since %s\n", p.Release, p.DeploymentID, p.Step, p.Since.Format(time.RFC3339))
		}
		if l := a.LastResult; l != nil {
			fmt.Fprintf(tw, "last result\t%s: release %d (deployment %s) at %s\n", l.State, l.Release, l.DeploymentID, l.At.Format(time.RFC3339))
			fmt.Fprintf(tw, "\t%s\n", l.Message)
			for _, o := range l.Outputs {
				mark := "passed"
				if !o.Passed {
					mark = "FAILED"
				}
				fmt.Fprintf(tw, "\t%s %s (exit %d)\n", o.Name, mark, o.ExitCode)
			}
		}
		key := "releases on disk"
		if len(a.Releases) == 0 {
			fmt.Fprintf(tw, "%s\t(none)\n", key)
		}
		for _, r := range a.Releases {
			var tags []string
			if r.Current {
				tags = append(tags, "current")
			}
			if r.LastGood {
				tags = append(tags, "last good")
			}
			if r.Unknown {
				tags = append(tags, "not in local state")
			}
			line := r.Dir
			if len(tags) > 0 {
				line += " (" + strings.Join(tags, ", ") + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\n", key, line)
			key = ""
		}
	}
	if rep.PendingEvents > 0 {
		fmt.Fprintf(tw, "\n%d event(s) not yet acknowledged by the coordinator\n", rep.PendingEvents)
	}
	return tw.Flush()
}
