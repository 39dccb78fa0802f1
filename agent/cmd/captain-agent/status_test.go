package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captain-cd/captain/agent/deploy"
	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/buildinfo"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd(&out, &errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// hostWithState lays out a host the way the deployer leaves it: two release directories,
// current on release 2 that failed its health check, last good on 1, an unknown leftover
// directory, and a deployment of release 3 stopped at the flip.
func hostWithState(t *testing.T) (stateDir, appRoot string) {
	stateDir = t.TempDir()
	appRoot = filepath.Join(t.TempDir(), "web")
	for _, d := range []string{"1-d-1", "2-d-2", "9-old"} {
		if err := os.MkdirAll(filepath.Join(appRoot, deploy.ReleasesDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := deploy.Flip(appRoot, "releases/2-d-2"); err != nil {
		t.Fatal(err)
	}
	s, err := localstate.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	err = s.Update(func(st *localstate.State) error {
		a := st.App("web")
		a.Environment, a.AppRoot = "use1-az1", appRoot
		a.CurrentRelease, a.CurrentDeploymentID, a.CurrentDir = 2, "d-2", "2-d-2"
		a.LastGoodRelease, a.LastGoodDeploymentID, a.LastGoodDir = 1, "d-1", "1-d-1"
		a.Health = captainv1.HealthState_HEALTH_STATE_UNHEALTHY
		a.Releases = []localstate.Release{{Release: 1, DeploymentID: "d-1", Dir: "1-d-1"}, {Release: 2, DeploymentID: "d-2", Dir: "2-d-2"}}
		a.Desired.M = &captainv1.DesiredApp{Pipeline: "web", Release: 3, DeploymentId: "d-3"}
		a.Step, a.StepStarted = localstate.StepFlip, at
		a.LastResult = &localstate.Result{DeploymentID: "d-2", Release: 2, State: captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, Message: "not healthy within 5m0s: failing checks [http]", At: at,
			Outputs: []localstate.Proto[*captainv1.StepOutput]{{M: &captainv1.StepOutput{Name: "http", ExitCode: 503, Output: "GET http://127.0.0.1:8080/healthz: 503"}}}}
		st.Enqueue(&captainv1.HostEvent{Pipeline: "web"})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return stateDir, appRoot
}

func TestStatusPrintsFromLocalStateAlone(t *testing.T) {
	stateDir, _ := hostWithState(t)
	out, _, err := run(t, "status", "--state-dir", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{
		"PIPELINE web environment use1-az1",
		"current releases/2-d-2 (release 2, deployment d-2, health unhealthy)",
		"last good release 1 (deployment d-1, 1-d-1)",
		"in progress release 3 (deployment d-3) at step flip since 2026-11-25T10:00:00Z",
		"last result failed: release 2 (deployment d-2) at 2026-11-25T10:00:00Z not healthy within 5m0s: failing checks [http] http FAILED (exit 503)",
		"releases on disk 1-d-1 (last good) 2-d-2 (current) 9-old (not in local state)",
		"1 event(s) not yet acknowledged",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	stateDir, appRoot := hostWithState(t)
	out, _, err := run(t, "status", "--state-dir", stateDir, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(rep.Apps) != 1 {
		t.Fatalf("apps %d", len(rep.Apps))
	}
	a := rep.Apps[0]
	if a.CurrentTarget != "releases/2-d-2" || a.AppRoot != appRoot || a.LastGood.Release != 1 || a.LastResult.State != "failed" || a.InProgress.Step != "flip" || len(a.Releases) != 3 || !a.Releases[2].Unknown || rep.PendingEvents != 1 {
		t.Errorf("report %+v", a)
	}
}

func TestStatusErrors(t *testing.T) {
	corrupt := t.TempDir()
	if err := os.WriteFile(filepath.Join(corrupt, localstate.FileName), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"corrupt state names the file", []string{"status", "--state-dir", corrupt}, filepath.Join(corrupt, localstate.FileName)},
		{"unknown output format", []string{"status", "--state-dir", corrupt, "-o", "yaml"}, `--output "yaml"`},
		{"bad log level", []string{"status", "--log-level", "loud"}, `--log-level "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestStatusOnAFreshHostAndVersion(t *testing.T) {
	out, _, err := run(t, "status", "--state-dir", filepath.Join(t.TempDir(), "none"))
	if err != nil || !strings.Contains(out, "No deployments recorded") {
		t.Errorf("fresh host: %q %v", out, err)
	}
	out, _, err = run(t, "--version")
	if err != nil || out != "captain-agent "+buildinfo.Version()+"\n" {
		t.Errorf("--version: %q %v", out, err)
	}
}
