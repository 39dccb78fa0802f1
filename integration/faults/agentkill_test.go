package faults

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// bigFiles is an artifact with enough files that extracting it takes long enough to be
// caught in the middle.
func bigFiles(n uint64, count int) map[string]string {
	files := appFiles(n)
	for i := range count {
		files[fmt.Sprintf("data/%02d/f%05d.txt", i%50, i)] = strings.Repeat(fmt.Sprintf("release %d file %d\n", n, i), 40)
	}
	return files
}

// partials lists the .partial directories under the host's releases/.
func (a *agent) partials() []string {
	var out []string
	for _, d := range a.releaseDirs() {
		if strings.HasSuffix(d, ".partial") {
			out = append(out, d)
		}
	}
	return out
}

// localCurrent is the release `captain-agent status` reads from the host's own state.
func (a *agent) localCurrent() (uint64, error) {
	out, err := exec.Command(a.f.bins.Agent, "status", "--state-dir", a.stateDir, "-o", "json").Output()
	if err != nil {
		return 0, fmt.Errorf("captain-agent status of %s: %w", a.name, err)
	}
	var st struct {
		Apps []struct {
			Pipeline string `json:"pipeline"`
			Current  *struct {
				Release uint64 `json:"release"`
			} `json:"current"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, fmt.Errorf("captain-agent status of %s: %w\n%s", a.name, err, out)
	}
	for _, app := range st.Apps {
		if app.Pipeline == pipelineName && app.Current != nil {
			return app.Current.Release, nil
		}
	}
	return 0, fmt.Errorf("captain-agent status of %s shows no current release: %s", a.name, out)
}

// Agents SIGKILLed in the middle of extracting (two hosts), just before the flip (in
// before_activate, with the flip's temporary link left behind as a kill inside the flip would)
// and just after it (in activate): at the moment of each kill `current` points at a complete
// release, and after the agents start again every host ends on the new release,
// complete and byte for byte the artifact, with no partial directory left, and the deployment
// succeeds.
func TestAgentsKilledMidExtractAndAroundTheFlipEndOnACompleteRelease(t *testing.T) {
	f := newFleet(t, "100%", "0s", "2m")
	agents := f.startAgents("extract-1", "extract-2", "before-flip", "after-flip")
	extracting, beforeFlip, afterFlip := agents[:2], agents[2], agents[3]
	f.deployFirst()

	for _, a := range extracting {
		a.openGates(2)
	}
	beforeFlip.openGate("activate", 2)
	afterFlip.openGate("before_activate", 2)
	release2 := bigFiles(2, 3000)
	f.release(2, release2)

	// Each agent is killed at its point, checked as it lies, and started again at once, well
	// inside the heartbeat TTL, so the coordinator never counts the host down.
	killed := map[*agent]bool{}
	check := func(a *agent, release uint64, files map[string]string, why string) {
		t.Helper()
		if err := a.checkCurrentIs(release, "", files); err != nil {
			t.Errorf("right after killing %s %s: %v", a.name, why, err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(killed) < len(agents) {
		if time.Now().After(deadline) {
			t.Fatalf("not every agent reached its kill point: killed %d\n%s", len(killed), f.describe())
		}
		for _, a := range extracting {
			if !killed[a] && len(a.partials()) > 0 {
				a.Kill()
				killed[a] = true
				if len(a.partials()) == 0 {
					t.Fatalf("%s finished extracting before the kill landed; the artifact is too small to catch it mid-extract", a.name)
				}
				t.Logf("SIGKILLed %s while extracting into %v", a.name, a.partials())
				check(a, 1, appFiles(1), "mid-extract")
				a.start()
			}
		}
		if !killed[beforeFlip] && beforeFlip.reachedHook("before_activate", 2) {
			beforeFlip.Kill()
			killed[beforeFlip] = true
			t.Logf("SIGKILLed %s in before_activate, before the flip", beforeFlip.name)
			check(beforeFlip, 1, appFiles(1), "before the flip")
			// What a kill between the flip's two system calls leaves: the new link made,
			// not yet renamed over current.
			if err := plantHalfFlip(beforeFlip); err != nil {
				t.Fatal(err)
			}
			beforeFlip.openGate("before_activate", 2)
			beforeFlip.start()
		}
		if !killed[afterFlip] && afterFlip.reachedHook("activate", 2) {
			afterFlip.Kill()
			killed[afterFlip] = true
			t.Logf("SIGKILLed %s in activate, after the flip", afterFlip.name)
			check(afterFlip, 2, release2, "after the flip")
			afterFlip.openGate("activate", 2)
			afterFlip.start()
		}
		time.Sleep(2 * time.Millisecond)
	}

	d := f.onlyDeployment(captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, 2, 5*time.Second)
	d = f.waitDeployment(d.GetId(), captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED, 60*time.Second)
	f.everyHostOn(2, 10*time.Second)
	for _, h := range d.GetHosts() {
		if h.GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
			t.Errorf("deployment %s: host %s %s %q", d.GetId(), h.GetHostId(), h.GetState(), h.GetMessage())
		}
	}
	for _, a := range agents {
		if err := a.checkCurrentIs(2, d.GetId(), release2); err != nil {
			t.Error(err)
		}
		if p := a.partials(); len(p) > 0 {
			t.Errorf("%s still has partial directories %v", a.name, p)
		}
		if links, _ := filepath.Glob(filepath.Join(a.appRoot(), "current.tmp-*")); len(links) > 0 {
			t.Errorf("%s still has half-made current links %v", a.name, links)
		}
		if rel, err := a.localCurrent(); err != nil || rel != 2 {
			t.Errorf("%s local state: current %d (%v), want 2", a.name, rel, err)
		}
		// The previous release stays whole beside it, ready for a rollback.
		if prev := filepath.Join(a.appRoot(), "releases"); !hasReleaseDir(prev, 1) {
			t.Errorf("%s lost its release 1 directory: %v", a.name, a.releaseDirs())
		}
	}
}

// plantHalfFlip leaves what a flip killed after creating its temporary link and before
// renaming it over current would: a current.tmp-* link to the release being deployed.
func plantHalfFlip(a *agent) error {
	var target string
	for _, d := range a.releaseDirs() {
		if strings.HasPrefix(d, "2-") && !strings.HasSuffix(d, ".partial") {
			target = filepath.Join("releases", d)
		}
	}
	if target == "" {
		return fmt.Errorf("%s has no release 2 directory to half-flip to: %v", a.name, a.releaseDirs())
	}
	return os.Symlink(target, filepath.Join(a.appRoot(), "current.tmp-killed"))
}

func hasReleaseDir(releases string, release uint64) bool {
	entries, _ := os.ReadDir(releases)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), fmt.Sprintf("%d-", release)) && !strings.HasSuffix(e.Name(), ".partial") {
			return true
		}
	}
	return false
}
