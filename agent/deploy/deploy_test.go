package deploy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/captain-cd/captain/agent/health"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestFlipNeverShowsMissingOrPartialTarget(t *testing.T) {
	appRoot := t.TempDir()
	// Three complete releases, each with a marker file written before any flip points at it.
	var targets []string
	for i := range 3 {
		dir := filepath.Join(ReleasesDir, fmt.Sprintf("%d-d%d", i+1, i+1))
		if err := os.MkdirAll(filepath.Join(appRoot, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(appRoot, dir, "COMPLETE"), []byte("ok"), 0o644); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, dir)
	}
	if err := Flip(appRoot, targets[0]); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var reads atomic.Int64
	readerErr := make(chan error, 1)
	go func() {
		cur := filepath.Join(appRoot, CurrentLink)
		for ctx.Err() == nil {
			target, err := os.Readlink(cur)
			if err != nil {
				readerErr <- fmt.Errorf("readlink current: %w", err)
				return
			}
			if _, err := os.Stat(filepath.Join(appRoot, target, "COMPLETE")); err != nil {
				readerErr <- fmt.Errorf("current -> %s is not complete: %w", target, err)
				return
			}
			reads.Add(1)
		}
		readerErr <- nil
	}()

	const flips = 1000
	for i := range flips {
		if err := Flip(appRoot, targets[i%len(targets)]); err != nil {
			cancel()
			t.Fatalf("flip %d: %v", i, err)
		}
	}
	cancel()
	if err := <-readerErr; err != nil {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Fatal("reader never ran")
	}
	t.Logf("%d flips, %d reads, no missing or partial target", flips, reads.Load())
	if got := slices.DeleteFunc(listDir(t, appRoot), func(n string) bool { return n == CurrentLink || n == ReleasesDir }); len(got) != 0 {
		t.Errorf("temporary links left in app root: %v", got)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestDeployEndToEndWithActivateHookAndHTTPHealthCheck(t *testing.T) {
	h := newHost(t)
	art := buildArtifact(t, h.bucket, h.key, appFiles(1))
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		// Healthy only once the activate hook ran: the check must run after activation.
		if _, err := os.Stat(filepath.Join(h.appRoot, "activations")); err != nil {
			http.Error(w, "not activated", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}))
	defer srv.Close()
	s := h.settings()
	s.HealthChecks = []*captainv1.HealthCheck{{
		Name:     "http",
		Check:    &captainv1.HealthCheck_Http{Http: &captainv1.HttpCheck{Url: srv.URL + "/healthz", ExpectedStatus: 200}},
		Interval: durationpb.New(20 * time.Millisecond),
		Timeout:  durationpb.New(time.Second),
	}}
	s.MinHealthyTime = durationpb.New(100 * time.Millisecond)

	res := h.deploy(desired(1, "d-1", art, s))

	if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("state %v, message %q", res.State, res.Message)
	}
	if got := h.current(); got != "releases/1-d-1" {
		t.Errorf("current -> %q, want releases/1-d-1", got)
	}
	assertCurrentComplete(t, h.appRoot, art.manifest)
	if b, _ := os.ReadFile(filepath.Join(h.appRoot, "current", "config", "app.conf")); string(b) != "release = 1\n" {
		t.Errorf("config through current = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(h.appRoot, "activations")); string(b) != "1 d-1\n" {
		t.Errorf("activate hook env: activations = %q, want %q", b, "1 d-1\n")
	}
	if hits.Load() < 2 {
		t.Errorf("health endpoint hit %d times; min_healthy_time of 100ms at 20ms intervals needs several", hits.Load())
	}
	want := []captainv1.HostDeployState{
		captainv1.HostDeployState_HOST_DEPLOY_STATE_FETCHING,
		captainv1.HostDeployState_HOST_DEPLOY_STATE_EXTRACTING,
		captainv1.HostDeployState_HOST_DEPLOY_STATE_ACTIVATING,
		captainv1.HostDeployState_HOST_DEPLOY_STATE_CHECKING_HEALTH,
		captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY,
	}
	if got := h.states(); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	// The events are queued durably with increasing sequence numbers for the report loop.
	pending := h.store.Pending()
	if len(pending) != len(want) {
		t.Fatalf("%d queued events, want %d", len(pending), len(want))
	}
	for i, ev := range pending {
		if ev.GetSeq() != uint64(i+1) || ev.GetState() != want[i] {
			t.Errorf("queued event %d: seq %d state %v", i, ev.GetSeq(), ev.GetState())
		}
	}
	last := pending[len(pending)-1]
	if hc := last.GetApp().GetHealthChecks(); len(hc) != 1 || hc[0].GetName() != "http" || !hc[0].GetPassed() {
		t.Errorf("final event's health checks: %v", hc)
	}
	if last.GetApp().GetCurrentTarget() != "releases/1-d-1" || last.GetApp().GetHealth() != captainv1.HealthState_HEALTH_STATE_HEALTHY {
		t.Errorf("final event's host view: %v", last.GetApp())
	}
	if err := h.store.Ack(3); err != nil {
		t.Fatal(err)
	}
	if p := h.store.Pending(); len(p) != 2 || p[0].GetSeq() != 4 {
		t.Errorf("after ack 3: %d pending starting at %d", len(p), p[0].GetSeq())
	}

	a := h.app()
	if a.Desired.M != nil || a.CurrentRelease != 1 || a.CurrentDeploymentID != "d-1" || a.LastGoodRelease != 1 || a.LastResult.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Errorf("local state after success: %+v", a)
	}

	// The same desired state again (a resent watch) changes nothing.
	again := h.deploy(desired(1, "d-1", art, s))
	if again.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY || len(h.states()) != len(want) {
		t.Errorf("redeploying the same deployment: state %v, %d events", again.State, len(h.states()))
	}
}

func TestFailingHealthCheckIsReportedFailedWithItsOutput(t *testing.T) {
	h := newHost(t)
	art := buildArtifact(t, h.bucket, h.key, appFiles(1))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "database unreachable", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	s := h.settings()
	s.HealthChecks = []*captainv1.HealthCheck{
		{Name: "http", Check: &captainv1.HealthCheck_Http{Http: &captainv1.HttpCheck{Url: srv.URL}}, Interval: durationpb.New(20 * time.Millisecond)},
		{Name: "cmd", Check: &captainv1.HealthCheck_Command{Command: &captainv1.CommandCheck{Command: []string{"sh", "-c", "test -x bin/app"}}}, Interval: durationpb.New(20 * time.Millisecond)},
	}
	s.HealthDeadline = durationpb.New(time.Second)

	res := h.deploy(desired(1, "d-1", art, s))

	if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
		t.Fatalf("state %v, want FAILED", res.State)
	}
	if !strings.Contains(res.Message, "http") || strings.Contains(res.Message, "cmd") {
		t.Errorf("message %q should name the failing check only", res.Message)
	}
	var httpOut, cmdOut *captainv1.StepOutput
	for _, o := range res.Outputs {
		switch o.GetName() {
		case "http":
			httpOut = o
		case "cmd":
			cmdOut = o
		}
	}
	if httpOut == nil || httpOut.GetPassed() || httpOut.GetExitCode() != 503 || !strings.Contains(httpOut.GetOutput(), "database unreachable") {
		t.Errorf("http check output: %v", httpOut)
	}
	if cmdOut == nil || !cmdOut.GetPassed() {
		t.Errorf("command check (run in the release dir) should pass: %v", cmdOut)
	}
	if got := h.states(); got[len(got)-1] != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
		t.Errorf("last event %v", got[len(got)-1])
	}
	a := h.app()
	if a.Health != captainv1.HealthState_HEALTH_STATE_UNHEALTHY || a.LastGoodRelease != 0 || a.CurrentRelease != 1 {
		t.Errorf("state: health %v last good %d current %d", a.Health, a.LastGoodRelease, a.CurrentRelease)
	}
	if len(a.LastResult.Outputs) == 0 {
		t.Error("last result keeps no outputs")
	}
}

func TestBeforeActivateHook(t *testing.T) {
	tests := []struct {
		name          string
		command       string
		wantState     captainv1.HostDeployState
		wantCurrent   string
		wantExit      int32
		wantOutput    string
		wantTruncated bool
	}{
		{
			name:        "success sees the release env and runs in the new dir",
			command:     `test "$PWD" = "$CAPTAIN_RELEASE_DIR" && test -f config/app.conf && echo "pipeline=$CAPTAIN_PIPELINE release=$CAPTAIN_RELEASE"`,
			wantState:   captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY,
			wantCurrent: "releases/2-d-2",
			wantOutput:  "pipeline=web release=2\n",
		},
		{
			name:        "failure aborts before the flip",
			command:     `echo migration failed >&2; exit 3`,
			wantState:   captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED,
			wantCurrent: "releases/1-d-1",
			wantExit:    3,
			wantOutput:  "migration failed\n",
		},
		{
			name:          "long output is cut to 4 KiB",
			command:       `head -c 10000 /dev/zero | tr '\0' x; exit 1`,
			wantState:     captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED,
			wantCurrent:   "releases/1-d-1",
			wantExit:      1,
			wantOutput:    strings.Repeat("x", health.MaxOutput),
			wantTruncated: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t)
			art1 := buildArtifact(t, h.bucket, h.key, appFiles(1))
			art2 := buildArtifact(t, h.bucket, h.key, appFiles(2))
			if res := h.deploy(desired(1, "d-1", art1, h.settings())); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
				t.Fatalf("first deploy: %v %s", res.State, res.Message)
			}
			s := h.settings()
			s.Hooks.BeforeActivate = &captainv1.Hook{Command: []string{"sh", "-c", tt.command}, Timeout: durationpb.New(10 * time.Second)}

			res := h.deploy(desired(2, "d-2", art2, s))

			if res.State != tt.wantState {
				t.Fatalf("state %v (%s), want %v", res.State, res.Message, tt.wantState)
			}
			if got := h.current(); got != tt.wantCurrent {
				t.Errorf("current -> %q, want %q", got, tt.wantCurrent)
			}
			if len(res.Outputs) == 0 || res.Outputs[0].GetName() != "before_activate" {
				t.Fatalf("outputs %v", res.Outputs)
			}
			o := res.Outputs[0]
			if o.GetExitCode() != tt.wantExit || o.GetOutput() != tt.wantOutput || o.GetTruncated() != tt.wantTruncated {
				t.Errorf("hook output: exit %d truncated %v output %q", o.GetExitCode(), o.GetTruncated(), o.GetOutput())
			}
			if tt.wantState == captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
				if b, _ := os.ReadFile(filepath.Join(h.appRoot, "activations")); string(b) != "1 d-1\n" {
					t.Errorf("activate ran after a failed before_activate: %q", b)
				}
				if dirs := h.releaseDirs(); !slices.Equal(dirs, []string{"1-d-1"}) {
					t.Errorf("release dirs %v: the aborted release should be removed", dirs)
				}
				if a := h.app(); a.CurrentRelease != 1 || a.LastGoodRelease != 1 {
					t.Errorf("state current %d last good %d", a.CurrentRelease, a.LastGoodRelease)
				}
			}
		})
	}
}

func TestHookTimeoutKillsTheHookAndItsChildren(t *testing.T) {
	h := newHost(t)
	art := buildArtifact(t, h.bucket, h.key, appFiles(1))
	s := h.settings()
	// The background sleep keeps stdout open: only killing the process group ends it.
	s.Hooks.BeforeActivate = &captainv1.Hook{Command: []string{"sh", "-c", "echo started; sleep 60 & sleep 60"}, Timeout: durationpb.New(200 * time.Millisecond)}
	start := time.Now()
	res := h.deploy(desired(1, "d-1", art, s))
	if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
		t.Fatalf("state %v", res.State)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("deploy took %s; the hook was not killed at its timeout", took)
	}
	o := res.Outputs[0]
	if o.GetExitCode() != -1 || !strings.Contains(o.GetOutput(), "started") || !strings.Contains(o.GetOutput(), "did not finish within 200ms") {
		t.Errorf("hook output %v", o)
	}
	if cur := h.current(); cur != "" {
		t.Errorf("current -> %q after the first release failed before the flip", cur)
	}
}

func TestRollbackExtractsFromCacheWithoutDownload(t *testing.T) {
	h := newHost(t)
	art1 := buildArtifact(t, h.bucket, h.key, appFiles(1))
	art2 := buildArtifact(t, h.bucket, h.key, appFiles(2))
	for _, want := range []*captainv1.DesiredApp{desired(1, "d-1", art1, h.settings()), desired(2, "d-2", art2, h.settings())} {
		if res := h.deploy(want); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
			t.Fatalf("deploy %s: %v %s", want.GetDeploymentId(), res.State, res.Message)
		}
	}
	downloadsBefore := h.bucket.count(art1.archiveKey)
	if downloadsBefore != 1 {
		t.Fatalf("release 1 archive downloaded %d times, want 1", downloadsBefore)
	}
	// The agent restarts between deployments: the cache on disk, not memory, must serve.
	h.store.Close()
	h.open()

	res := h.deploy(desired(1, "d-3", art1, h.settings()))

	if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("rollback: %v %s", res.State, res.Message)
	}
	if got := h.bucket.count(art1.archiveKey); got != downloadsBefore {
		t.Errorf("rollback downloaded the archive again (%d gets, want %d)", got, downloadsBefore)
	}
	if got := h.current(); got != "releases/1-d-3" {
		t.Errorf("current -> %q, want a new directory releases/1-d-3", got)
	}
	assertCurrentComplete(t, h.appRoot, art1.manifest)
	if dirs := h.releaseDirs(); !slices.Equal(dirs, []string{"1-d-1", "1-d-3", "2-d-2"}) {
		t.Errorf("release dirs %v", dirs)
	}
}

func TestPruneKeepsCurrentLastGoodAndListedReleases(t *testing.T) {
	h := newHost(t)
	healthyIf := func(s *captainv1.DeploySettings, ok bool) *captainv1.DeploySettings {
		cmd := "true"
		if !ok {
			cmd = "echo unhealthy; false"
		}
		s.HealthChecks = []*captainv1.HealthCheck{{Name: "cmd", Check: &captainv1.HealthCheck_Command{Command: &captainv1.CommandCheck{Command: []string{"sh", "-c", cmd}}}, Interval: durationpb.New(20 * time.Millisecond)}}
		s.HealthDeadline = durationpb.New(200 * time.Millisecond)
		s.KeepReleases = 2
		return s
	}
	arts := make([]testArtifact, 7)
	for i := 1; i <= 6; i++ {
		arts[i] = buildArtifact(t, h.bucket, h.key, appFiles(i))
	}
	steps := []struct {
		release  uint64
		healthy  bool
		keep     []uint64 // DesiredApp.keep_releases: the coordinator's last good
		wantDirs []string
	}{
		{1, true, nil, []string{"1-d1"}},
		{2, true, nil, []string{"1-d1", "2-d2"}},
		{3, true, nil, []string{"2-d2", "3-d3"}},
		// The coordinator's last good is 2: kept although older than 3, which goes.
		{4, true, []uint64{2}, []string{"2-d2", "4-d4"}},
		// 5 fails: current is 5, last good here is 4, the coordinator keeps 2.
		{5, false, []uint64{2}, []string{"2-d2", "4-d4", "5-d5"}},
		// 6 fails too: current 6, last good still 4; 5 is neither and goes.
		{6, false, nil, []string{"4-d4", "6-d6"}},
	}
	for _, st := range steps {
		want := desired(st.release, fmt.Sprintf("d%d", st.release), arts[st.release], healthyIf(h.settings(), st.healthy))
		want.KeepReleases = st.keep
		res := h.deploy(want)
		if (res.State == captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY) != st.healthy {
			t.Fatalf("release %d: %v %s", st.release, res.State, res.Message)
		}
		if got := h.releaseDirs(); !slices.Equal(got, st.wantDirs) {
			t.Errorf("after release %d: dirs %v, want %v", st.release, got, st.wantDirs)
		}
		var listed []string
		for _, r := range h.app().Releases {
			listed = append(listed, r.Dir)
		}
		slices.Sort(listed)
		if !slices.Equal(listed, st.wantDirs) {
			t.Errorf("after release %d: state lists %v, want %v", st.release, listed, st.wantDirs)
		}
		// The cache keeps exactly the artifacts of the directories on disk: what a rollback needs.
		var wantCached []string
		for _, d := range st.wantDirs {
			n, _, _ := strings.Cut(d, "-")
			wantCached = append(wantCached, arts[atoi(t, n)].ref.GetSha256())
		}
		slices.Sort(wantCached)
		if got := h.cachedSHAs(); !slices.Equal(got, wantCached) {
			t.Errorf("after release %d: cache holds %v, want %v", st.release, got, wantCached)
		}
	}
	if a := h.app(); a.CurrentDir != "6-d6" || a.LastGoodDir != "4-d4" {
		t.Errorf("current %s last good %s", a.CurrentDir, a.LastGoodDir)
	}
}

func TestInvalidDesiredStateFailsWithoutTouchingTheHost(t *testing.T) {
	h := newHost(t)
	art := buildArtifact(t, h.bucket, h.key, appFiles(1))
	tests := []struct {
		name   string
		modify func(*captainv1.DesiredApp)
		want   string
	}{
		{"deployment id with a slash", func(d *captainv1.DesiredApp) { d.DeploymentId = "../x" }, "deployment_id"},
		{"relative app root", func(d *captainv1.DesiredApp) { d.Deploy.AppRoot = "app" }, "app_root"},
		{"artifact key elsewhere", func(d *captainv1.DesiredApp) { d.Artifact.Key = "other/key" }, "artifact key"},
		{"release zero", func(d *captainv1.DesiredApp) { d.Release = 0 }, "release"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := desired(1, "d-1", art, h.settings())
			tt.modify(want)
			res := h.deploy(want)
			if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED || !strings.Contains(res.Message, tt.want) {
				t.Errorf("state %v message %q, want FAILED naming %q", res.State, res.Message, tt.want)
			}
			if _, err := os.Lstat(h.appRoot); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("app root was created for an invalid desired state")
			}
		})
	}
}

func TestTamperedArtifactFailsVerification(t *testing.T) {
	h := newHost(t)
	art := buildArtifact(t, h.bucket, h.key, appFiles(1))
	// Flip one byte of the archive in the bucket: the signed manifest no longer matches.
	p := filepath.Join(h.bucket.root, art.archiveKey)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	res := h.deploy(desired(1, "d-1", art, h.settings()))
	if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED || !strings.Contains(res.Message, "verification failed") {
		t.Fatalf("state %v message %q", res.State, res.Message)
	}
	if _, err := os.Lstat(filepath.Join(h.appRoot, ReleasesDir, "1-d-1")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a release directory exists for an artifact that failed verification")
	}
}

func TestConcurrentDeployOfOnePipelineIsRefused(t *testing.T) {
	h := newHost(t)
	art := buildArtifact(t, h.bucket, h.key, appFiles(1))
	s := h.settings()
	release := make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	h.d.Boundary = func(name string) {
		if name == "before_activate" {
			once.Do(func() { close(entered) })
			<-release
		}
	}
	done := make(chan *Result)
	go func() { done <- h.deploy(desired(1, "d-1", art, s)) }()
	<-entered
	_, err := h.d.Deploy(context.Background(), desired(1, "d-2", art, s))
	close(release)
	if !errors.Is(err, ErrBusy) {
		t.Errorf("second deploy: %v, want ErrBusy", err)
	}
	if res := <-done; res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Errorf("first deploy: %v %s", res.State, res.Message)
	}
}

// fakeRestarter stands in for systemd, which test machines do not run.
type fakeRestarter struct {
	mu    sync.Mutex
	units []string
	err   error
}

func (f *fakeRestarter) Restart(ctx context.Context, unit string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.units = append(f.units, unit)
	return f.err
}

func TestSystemdUnitIsRestartedInsteadOfTheActivateHook(t *testing.T) {
	tests := []struct {
		name       string
		restartErr error
		restarter  bool
		wantState  captainv1.HostDeployState
		wantOutput string
	}{
		{"restart done", nil, true, captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, "restarted web.service"},
		{"restart job failed", errors.New(`restart web.service: job ended "failed"`), true, captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, `job ended "failed"`},
		{"no systemd connection", nil, false, captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t)
			art := buildArtifact(t, h.bucket, h.key, appFiles(1))
			fr := &fakeRestarter{err: tt.restartErr}
			if tt.restarter {
				h.d.Restarter = fr
			}
			s := h.settings()
			s.SystemdUnit = "web.service"

			res := h.deploy(desired(1, "d-1", art, s))

			if res.State != tt.wantState {
				t.Fatalf("state %v (%s), want %v", res.State, res.Message, tt.wantState)
			}
			if _, err := os.Stat(filepath.Join(h.appRoot, "activations")); !errors.Is(err, os.ErrNotExist) {
				t.Error("the activate hook ran although the pipeline names a systemd unit")
			}
			if !tt.restarter {
				if !strings.Contains(res.Message, "no systemd connection") {
					t.Errorf("message %q", res.Message)
				}
				return
			}
			if !slices.Equal(fr.units, []string{"web.service"}) {
				t.Errorf("restarted %v", fr.units)
			}
			if len(res.Outputs) == 0 || !strings.Contains(res.Outputs[0].GetOutput(), tt.wantOutput) {
				t.Errorf("outputs %v, want one containing %q", res.Outputs, tt.wantOutput)
			}
			if got := h.current(); got != "releases/1-d-1" {
				t.Errorf("current -> %q: the flip comes before the restart", got)
			}
		})
	}
}

func TestInterruptedDeploymentIsResumedOrAbandoned(t *testing.T) {
	h := newHost(t)
	art1 := buildArtifact(t, h.bucket, h.key, appFiles(1))
	art2 := buildArtifact(t, h.bucket, h.key, appFiles(2))
	if res := h.deploy(desired(1, "d-1", art1, h.settings())); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatal(res.Message)
	}
	interrupt := func(want *captainv1.DesiredApp, at string) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		h.d.Boundary = func(name string) {
			if name == at {
				cancel()
			}
		}
		defer func() { h.d.Boundary = nil }()
		if _, err := h.d.Deploy(ctx, want); !errors.Is(err, context.Canceled) {
			t.Fatalf("interrupted deploy returned %v, want context.Canceled", err)
		}
	}

	// Cancelled while the hook would run: the step stays recorded, current is untouched.
	s := h.settings()
	s.Hooks.BeforeActivate = &captainv1.Hook{Command: []string{"sleep", "30"}}
	want2 := desired(2, "d-2", art2, s)
	interrupt(want2, "before_activate")
	if a := h.app(); a.Step != "before_activate" || a.Desired.M.GetDeploymentId() != "d-2" || h.current() != "releases/1-d-1" {
		t.Fatalf("after interrupt: step %q desired %s current %s", a.Step, a.Desired.M.GetDeploymentId(), h.current())
	}

	// The same deployment again resumes at that step.
	want2.Deploy.Hooks.BeforeActivate = nil
	res := h.deploy(want2)
	if !res.Resumed || res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY || h.current() != "releases/2-d-2" {
		t.Fatalf("resume: resumed=%v %v %s current %s", res.Resumed, res.State, res.Message, h.current())
	}

	// A newer deployment replaces an interrupted one: its .partial and state are dropped.
	want3 := desired(1, "d-3", art1, h.settings())
	interrupt(want3, "extract")
	if err := os.Mkdir(filepath.Join(h.appRoot, ReleasesDir, "1-d-3.partial"), 0o755); err != nil {
		t.Fatal(err)
	}
	res = h.deploy(desired(2, "d-4", art2, h.settings()))
	if res.Resumed || res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY || h.current() != "releases/2-d-4" {
		t.Fatalf("newer deployment: resumed=%v %v %s current %s", res.Resumed, res.State, res.Message, h.current())
	}
	if dirs := h.releaseDirs(); !slices.Equal(dirs, []string{"1-d-1", "2-d-2", "2-d-4"}) {
		t.Errorf("release dirs %v: the abandoned .partial should be pruned", dirs)
	}
}
