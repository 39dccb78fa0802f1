package deploy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/captain-cd/captain/agent/localstate"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// childEnv names the config file of a deployer child process; the test binary re-executed
// with it set runs one deployment (or a resume) instead of the tests.
const childEnv = "CAPTAIN_DEPLOY_TEST_CHILD"

type childConfig struct {
	StateDir  string          `json:"state_dir"`
	BucketDir string          `json:"bucket_dir"`
	PubKey    []byte          `json:"pub_key"`
	Desired   json.RawMessage `json:"desired"`
	KillAt    string          `json:"kill_at"` // boundary at which the child SIGKILLs itself
	Resume    bool            `json:"resume"`  // run Deployer.Resume instead of Deploy
}

func TestMain(m *testing.M) {
	if p := os.Getenv(childEnv); p != "" {
		os.Exit(runChild(p))
	}
	os.Exit(m.Run())
}

// runChild is the agent side of the crash tests: a fresh process that opens local state and
// deploys, as captain-agent does after a start.
func runChild(cfgPath string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	fail := func(err error) int {
		log.Error("child failed", "err", err)
		return 2
	}
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return fail(err)
	}
	var cfg childConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fail(err)
	}
	st, err := localstate.Open(cfg.StateDir)
	if err != nil {
		return fail(err)
	}
	defer st.Close()
	d := newDeployer(st, &dirBucket{root: cfg.BucketDir}, ed25519.PublicKey(cfg.PubKey), log)
	d.Boundary = func(name string) {
		if name == cfg.KillAt {
			log.Info("killing myself", "boundary", name)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if cfg.Resume {
		results, err := d.Resume(ctx)
		if err != nil {
			return fail(err)
		}
		for _, r := range results {
			log.Info("resumed deployment ended", "deployment", r.DeploymentID, "state", r.State, "message", r.Message)
		}
		return 0
	}
	want := &captainv1.DesiredApp{}
	if err := protojson.Unmarshal(cfg.Desired, want); err != nil {
		return fail(err)
	}
	res, err := d.Deploy(ctx, want)
	if err != nil {
		return fail(err)
	}
	log.Info("deployment ended", "state", res.State, "message", res.Message)
	return 0
}

// child is a deployer process started by a test.
type child struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
}

func (h *host) startChild(t *testing.T, want *captainv1.DesiredApp, killAt string, resume bool) *child {
	t.Helper()
	dj, err := protojson.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(childConfig{StateDir: h.stateDir, BucketDir: h.bucket.root, PubKey: h.pub, Desired: dj, KillAt: killAt, Resume: resume})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "child.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: exec.Command(os.Args[0], "-test.run=^$"), stderr: &bytes.Buffer{}}
	// Under -race a process sleeps 1s at exit by default; the crash tests start dozens.
	c.cmd.Env = append(os.Environ(), childEnv+"="+cfgPath, "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	c.cmd.Stderr = c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Whatever happens in the test, the child does not outlive it.
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

func (c *child) wait(t *testing.T) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		c.cmd.Process.Kill()
		<-done
		t.Fatalf("child did not finish within a minute; its log:\n%s", c.stderr)
		return nil
	}
}

func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// crashSettings deploy with a before_activate hook, an activate hook and a command health
// check, so every step has work that a crash can interrupt.
func crashSettings(h *host) *captainv1.DeploySettings {
	s := h.settings()
	s.Hooks.BeforeActivate = &captainv1.Hook{Command: []string{"sh", "-c", "test -f config/app.conf"}}
	s.HealthChecks = []*captainv1.HealthCheck{{
		Name:     "activated",
		Check:    &captainv1.HealthCheck_Command{Command: &captainv1.CommandCheck{Command: []string{"sh", "-c", `grep -q "^$CAPTAIN_RELEASE $CAPTAIN_DEPLOYMENT_ID\$" "$CAPTAIN_APP_ROOT/activations"`}}},
		Interval: durationpb.New(20 * time.Millisecond),
	}}
	s.MinHealthyTime = durationpb.New(50 * time.Millisecond)
	return s
}

// boundaries runs one deployment of release 2 over release 1 in this process and returns the
// step boundaries it passed, in order.
func boundaries(t *testing.T) []string {
	h := newHost(t)
	art1 := buildArtifact(t, h.bucket, h.key, appFiles(1))
	art2 := buildArtifact(t, h.bucket, h.key, appFiles(2))
	h.deploy(desired(1, "d-1", art1, crashSettings(h)))
	var names []string
	h.d.Boundary = func(name string) { names = append(names, name) }
	if res := h.deploy(desired(2, "d-2", art2, crashSettings(h))); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("reference deployment: %v %s", res.State, res.Message)
	}
	return names
}

func TestKill9AtEveryStepBoundaryResumesToAFinishedDeployment(t *testing.T) {
	names := boundaries(t)
	if len(names) < 12 {
		t.Fatalf("only %d boundaries: %v", len(names), names)
	}
	t.Logf("boundaries: %v", names)
	// What the restarted agent must say it did, where a boundary leaves evidence to reuse.
	wantLog := map[string]string{
		"extract:done":        "verified against the manifest",
		"extract:done+tamper": "does not match the manifest; extracting again",
		"flip:done":           "current already points at the release",
	}
	for _, name := range append(names, "extract:done+tamper") {
		b, tamper := strings.CutSuffix(name, "+tamper")
		t.Run(name, func(t *testing.T) {
			h := newHost(t)
			art1 := buildArtifact(t, h.bucket, h.key, appFiles(1))
			art2 := buildArtifact(t, h.bucket, h.key, appFiles(2))
			if res := h.deploy(desired(1, "d-1", art1, crashSettings(h))); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
				t.Fatalf("release 1: %v %s", res.State, res.Message)
			}
			h.store.Close() // the agent process below takes the state dir

			want := desired(2, "d-2", art2, crashSettings(h))
			c := h.startChild(t, want, b, false)
			if err := c.wait(t); !killedBySIGKILL(err) {
				t.Fatalf("child was to be killed at %s, ended with %v; log:\n%s", b, err, c.stderr)
			}
			cur := assertCurrentComplete(t, h.appRoot, art1.manifest, art2.manifest)
			t.Logf("killed at %s: current -> %s", b, cur)
			if tamper {
				// The directory was renamed into place but local state does not know it:
				// damage it so the restarted agent must notice and extract again.
				if err := os.WriteFile(filepath.Join(h.appRoot, ReleasesDir, "2-d-2", "config", "app.conf"), []byte("tampered"), 0o644); err != nil {
					t.Fatal(err)
				}
			}

			r := h.startChild(t, want, "", true)
			if err := r.wait(t); err != nil {
				t.Fatalf("restarted agent: %v; log:\n%s", err, r.stderr)
			}

			if w := wantLog[name]; w != "" && !strings.Contains(r.stderr.String(), w) {
				t.Errorf("restarted agent's log lacks %q:\n%s", w, r.stderr)
			}
			h.open()
			a := h.app()
			if a.Desired.M != nil || a.LastResult == nil || a.LastResult.DeploymentID != "d-2" || a.LastResult.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
				t.Fatalf("after restart: desired %v, last result %+v; log:\n%s", a.Desired.M, a.LastResult, r.stderr)
			}
			if got := assertCurrentComplete(t, h.appRoot, art2.manifest); got != "releases/2-d-2" {
				t.Errorf("current -> %s, want releases/2-d-2", got)
			}
			if a.CurrentRelease != 2 || a.LastGoodRelease != 2 {
				t.Errorf("state current %d last good %d", a.CurrentRelease, a.LastGoodRelease)
			}
			for _, d := range h.releaseDirs() {
				if strings.HasSuffix(d, ".partial") {
					t.Errorf("%s left behind", d)
				}
			}
			if links, _ := filepath.Glob(filepath.Join(h.appRoot, tmpLinkPrefix+"*")); len(links) != 0 {
				t.Errorf("temporary links left: %v", links)
			}
		})
	}
}

// writeBigTree returns files for an artifact big enough that extraction takes a while:
// n incompressible files of size bytes each.
func bigFiles(t *testing.T, n, size int) map[string]string {
	files := appFiles(2)
	buf := make([]byte, size)
	for i := range n {
		if _, err := rand.Read(buf); err != nil {
			t.Fatal(err)
		}
		files[fmt.Sprintf("data/%03d.bin", i)] = string(buf)
	}
	return files
}

func TestKill9DuringExtractionRemovesThePartialDirAndRedoesIt(t *testing.T) {
	h := newHost(t)
	art1 := buildArtifact(t, h.bucket, h.key, appFiles(1))
	art2 := buildArtifact(t, h.bucket, h.key, bigFiles(t, 200, 128<<10))
	if res := h.deploy(desired(1, "d-1", art1, crashSettings(h))); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("release 1: %v %s", res.State, res.Message)
	}
	h.store.Close()
	want := desired(2, "d-2", art2, crashSettings(h))
	partial := filepath.Join(h.appRoot, ReleasesDir, "2-d-2.partial")

	c := h.startChild(t, want, "", false)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(partial); err == nil {
			break
		}
		if time.Now().After(deadline) || c.cmd.ProcessState != nil {
			t.Fatalf("never saw %s", partial)
		}
		time.Sleep(time.Millisecond)
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	if err := c.wait(t); !killedBySIGKILL(err) {
		t.Skipf("extraction finished before the kill landed (%v); the machine is too fast for this artifact", err)
	}
	if _, err := os.Stat(partial); err != nil {
		t.Fatalf("expected the kill to leave %s: %v", partial, err)
	}
	if got := assertCurrentComplete(t, h.appRoot, art1.manifest); got != "releases/1-d-1" {
		t.Fatalf("current -> %s during the interrupted extraction", got)
	}

	r := h.startChild(t, want, "", true)
	if err := r.wait(t); err != nil {
		t.Fatalf("restarted agent: %v; log:\n%s", err, r.stderr)
	}
	if got := assertCurrentComplete(t, h.appRoot, art2.manifest); got != "releases/2-d-2" {
		t.Errorf("current -> %s", got)
	}
	if _, err := os.Stat(partial); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after the resumed deployment", partial)
	}
	h.open()
	if a := h.app(); a.LastResult == nil || a.LastResult.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY || a.Desired.M != nil {
		t.Errorf("after resume: %+v", a.LastResult)
	}
}
