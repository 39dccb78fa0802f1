// Package deploy puts one release of one pipeline on this host: fetch the artifact into the
// cache, extract it into a new release directory, run the before_activate hook, flip the
// current symlink, restart the unit (or run the activate hook), wait for health, report and
// prune. Every step is recorded in local state before it starts, so an agent killed at any
// point resumes where it was; `current` always points at a complete directory.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/agent/health"
	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/store"
	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// ErrBusy means a deployment of the same pipeline is already running in this process.
var ErrBusy = errors.New("a deployment of this pipeline is already running")

// fetcher brings a verified artifact into the local cache (artifacts/fetch.Fetcher); when
// the artifact is cached and verifies, it downloads nothing.
type fetcher interface {
	Fetch(ctx context.Context, ref store.Ref) (*fetch.Artifact, error)
}

// restarter restarts a systemd unit and waits for the job's result (hostsystemd.Restarter).
type restarter interface {
	Restart(ctx context.Context, unit string) error
}

// Deployer runs deployments on this host. One Deployer serves every pipeline; deployments of
// different pipelines may run at the same time, two of the same pipeline may not.
type Deployer struct {
	State   *localstate.Store
	Fetcher fetcher
	// Restarter restarts deploy.systemd_unit; nil makes a pipeline with a unit fail clearly.
	Restarter restarter
	Limits    extract.Limits
	Logger    *slog.Logger
	// OnEvent is called with every event after it is durable in the local queue.
	OnEvent func(*captainv1.HostEvent)
	// Boundary, when set, is called at every step boundary with its name ("fetch",
	// "fetch:done", ...), after the state for it is durable. Tests stop the process there.
	Boundary func(name string)
	// CacheDir is the fetcher's artifact cache. When set, artifacts that no release
	// directory of any pipeline was made from, and no deployment in progress needs, are
	// removed from it after each deployment: a rollback target is always on disk.
	CacheDir string
	// HealthClock is the clock health checks run on; nil is the real one.
	HealthClock health.Clock

	mu   sync.Mutex
	busy map[string]bool
}

// Result is how a deployment ended on this host.
type Result struct {
	Pipeline     string
	DeploymentID string
	Release      uint64
	State        captainv1.HostDeployState // HEALTHY or FAILED
	Message      string
	Outputs      []*captainv1.StepOutput
	ReleaseDir   string // absolute path
	// Resumed is true when the deployment was found half done in local state.
	Resumed bool
}

var deploymentIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// releaseDirRE matches directory names this package creates under releases/.
var releaseDirRE = regexp.MustCompile(`^([0-9]+)-([A-Za-z0-9][A-Za-z0-9._-]*?)(\.partial)?$`)

func validate(want *captainv1.DesiredApp) error {
	var errs []error
	if want.GetPipeline() == "" {
		errs = append(errs, errors.New("pipeline is empty"))
	}
	if want.GetRelease() == 0 {
		errs = append(errs, errors.New("release must be 1 or more"))
	}
	if !deploymentIDRE.MatchString(want.GetDeploymentId()) {
		errs = append(errs, fmt.Errorf("deployment_id %q must be 1-128 characters of A-Z a-z 0-9 . _ - (it names a directory)", want.GetDeploymentId()))
	}
	if root := want.GetDeploy().GetAppRoot(); !filepath.IsAbs(root) || filepath.Clean(root) != root || root == "/" {
		errs = append(errs, fmt.Errorf("deploy.app_root %q must be a clean absolute path other than /", root))
	}
	if _, err := artifactRef(want); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func artifactRef(want *captainv1.DesiredApp) (store.Ref, error) {
	a := want.GetArtifact()
	ref := store.Ref{Bucket: a.GetBucket(), Pipeline: want.GetPipeline(), SHA256: a.GetSha256()}
	if err := ref.Validate(); err != nil {
		return ref, fmt.Errorf("artifact: %w", err)
	}
	if k := a.GetKey(); k != "" && k != ref.ArchiveKey() {
		return ref, fmt.Errorf("artifact key %q is not %q: artifacts live under their pipeline and sha256", k, ref.ArchiveKey())
	}
	return ref, nil
}

// ReleaseDirName is the directory a deployment extracts into under releases/.
func ReleaseDirName(release uint64, deploymentID string) string {
	return strconv.FormatUint(release, 10) + "-" + deploymentID
}

func (d *Deployer) log() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (d *Deployer) boundary(name string) {
	if d.Boundary != nil {
		d.Boundary(name)
	}
}

// Resume finishes every deployment that local state shows in progress, for an agent that
// restarts after a crash; it returns their results.
func (d *Deployer) Resume(ctx context.Context) ([]*Result, error) {
	var pending []*captainv1.DesiredApp
	d.State.View(func(st *localstate.State) {
		for _, name := range st.Pipelines() {
			if a := st.Apps[name]; a.Desired.M != nil {
				pending = append(pending, a.Desired.M)
			}
		}
	})
	var out []*Result
	for _, want := range pending {
		res, err := d.Deploy(ctx, want)
		if err != nil {
			return out, err
		}
		out = append(out, res)
	}
	return out, nil
}

// Deploy brings want onto the host and returns how it ended. A failure of the deployment
// itself (bad artifact, hook, restart, health) is a Result with state FAILED; an error
// means the deployment was interrupted (ctx cancelled, state not writable) and stays in
// local state to be resumed by a later Deploy of the same deployment ID or by Resume.
func (d *Deployer) Deploy(ctx context.Context, want *captainv1.DesiredApp) (*Result, error) {
	pipeline := want.GetPipeline()
	d.mu.Lock()
	if d.busy[pipeline] {
		d.mu.Unlock()
		return nil, fmt.Errorf("deploy %s: %w", pipeline, ErrBusy)
	}
	if d.busy == nil {
		d.busy = map[string]bool{}
	}
	d.busy[pipeline] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.busy, pipeline)
		d.mu.Unlock()
	}()

	r := &run{d: d, want: proto.CloneOf(want), log: d.log().With("pipeline", pipeline, "release", want.GetRelease(), "deployment", want.GetDeploymentId())}
	if err := validate(want); err != nil {
		return r.finishFailed(fmt.Sprintf("invalid desired state, nothing was changed: %v", err))
	}
	r.appRoot = want.GetDeploy().GetAppRoot()
	r.dirName = ReleaseDirName(want.GetRelease(), want.GetDeploymentId())
	r.dest = filepath.Join(r.appRoot, ReleasesDir, r.dirName)
	r.ref, _ = artifactRef(want)

	var app *localstate.App
	d.State.View(func(st *localstate.State) { app = st.Apps[pipeline] })
	step := localstate.StepFetch
	switch {
	case app != nil && app.Desired.M != nil && app.Desired.M.GetDeploymentId() == want.GetDeploymentId():
		step = app.Step
		r.resumed = true
		r.log.Info("resuming deployment after restart", "step", step)
	case app != nil && app.Desired.M == nil && app.LastResult != nil && app.LastResult.DeploymentID == want.GetDeploymentId():
		// Already done: a resent desired state must not redeploy.
		return resultFrom(app, r.dest), nil
	default:
		if app != nil && app.Desired.M != nil {
			r.log.Warn("abandoning unfinished deployment for a newer one", "abandoned", app.Desired.M.GetDeploymentId(), "step", app.Step)
		}
		err := d.State.Update(func(st *localstate.State) error {
			a := st.App(pipeline)
			a.AppRoot = r.appRoot
			a.Environment = r.want.GetEnvironment()
			a.Desired.M = r.want
			a.Step = localstate.StepFetch
			a.StepStarted = time.Now().UTC()
			a.ReleaseDir = r.dirName
			r.enqueue(st, a, captainv1.HostDeployState_HOST_DEPLOY_STATE_FETCHING, fmt.Sprintf("fetching artifact %s", r.ref.SHA256))
			return nil
		})
		if err != nil {
			return nil, err
		}
		r.flushEvents()
		r.log.Info("deployment started", "artifact", r.ref.String(), "release_dir", r.dest)
	}
	return r.steps(ctx, step)
}

// run is one deployment in progress.
type run struct {
	d       *Deployer
	want    *captainv1.DesiredApp
	log     *slog.Logger
	appRoot string
	dirName string
	dest    string
	ref     store.Ref
	resumed bool

	artifact *fetch.Artifact
	outputs  []*captainv1.StepOutput
	healthy  *health.Result
	events   []*captainv1.HostEvent
}

// stepFunc does one step's work and returns what to record in local state with the next
// step, so the work's result and the progress become durable in one write.
type stepFunc func(ctx context.Context) (mutate func(a *localstate.App), err error)

type stepDef struct {
	step localstate.Step
	fn   stepFunc
}

// stepEvent is the event recorded when a step starts, if the step starts a new phase
// (flip and restart are part of ACTIVATING, which before_activate began).
func stepEvent(s localstate.Step) (captainv1.HostDeployState, bool) {
	switch s {
	case localstate.StepFetch:
		return captainv1.HostDeployState_HOST_DEPLOY_STATE_FETCHING, true
	case localstate.StepExtract:
		return captainv1.HostDeployState_HOST_DEPLOY_STATE_EXTRACTING, true
	case localstate.StepBeforeActivate:
		return captainv1.HostDeployState_HOST_DEPLOY_STATE_ACTIVATING, true
	case localstate.StepHealth:
		return captainv1.HostDeployState_HOST_DEPLOY_STATE_CHECKING_HEALTH, true
	}
	return captainv1.HostDeployState_HOST_DEPLOY_STATE_UNSPECIFIED, false
}

func (r *run) steps(ctx context.Context, from localstate.Step) (*Result, error) {
	order := []stepDef{
		{localstate.StepFetch, r.fetch},
		{localstate.StepExtract, r.extract},
		{localstate.StepBeforeActivate, r.beforeActivate},
		{localstate.StepFlip, r.flip},
		{localstate.StepRestart, r.restart},
		{localstate.StepHealth, r.health},
	}
	i := slices.IndexFunc(order, func(s stepDef) bool { return s.step == from })
	if from == localstate.StepDone {
		i = len(order)
	}
	if i < 0 {
		return r.finishFailed(fmt.Sprintf("local state names unknown step %q; the deployment must be started again", from))
	}
	for ; i < len(order); i++ {
		s := order[i]
		r.d.boundary(string(s.step))
		start := time.Now()
		r.log.Info("step started", "step", s.step)
		mutate, err := s.fn(ctx)
		if err != nil {
			if ctx.Err() != nil {
				r.log.Warn("deployment interrupted; it resumes from this step", "step", s.step, "err", err)
				return nil, fmt.Errorf("deploy %s %s: step %s interrupted: %w", r.want.GetPipeline(), r.want.GetDeploymentId(), s.step, ctx.Err())
			}
			r.log.Error("step failed", "step", s.step, "err", err)
			return r.finishFailed(fmt.Sprintf("%s: %v", s.step, err))
		}
		r.log.Info("step done", "step", s.step, "took", time.Since(start).Round(time.Millisecond))
		r.d.boundary(string(s.step) + ":done")
		next := localstate.StepDone
		if i+1 < len(order) {
			next = order[i+1].step
		}
		err = r.d.State.Update(func(st *localstate.State) error {
			a := st.App(r.want.GetPipeline())
			if mutate != nil {
				mutate(a)
			}
			a.Step = next
			a.StepStarted = time.Now().UTC()
			if ev, ok := stepEvent(next); ok {
				r.enqueue(st, a, ev, stepMessage(next, r))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		r.flushEvents()
	}
	return r.finish()
}

func stepMessage(s localstate.Step, r *run) string {
	switch s {
	case localstate.StepExtract:
		return "extracting into " + r.dest
	case localstate.StepBeforeActivate:
		return "activating " + r.dirName
	case localstate.StepHealth:
		return "checking health"
	}
	return string(s)
}

// loadArtifact makes sure the artifact is in the cache and verified. After a restart it is
// called again by the steps that need it; a cached artifact costs a hash, not a download.
func (r *run) loadArtifact(ctx context.Context) (*fetch.Artifact, error) {
	if r.artifact != nil {
		return r.artifact, nil
	}
	if r.d.Fetcher == nil {
		return nil, errors.New("no artifact fetcher configured")
	}
	a, err := r.d.Fetcher.Fetch(ctx, r.ref)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", r.ref, err)
	}
	r.artifact = a
	return a, nil
}

func (r *run) fetch(ctx context.Context) (func(*localstate.App), error) {
	a, err := r.loadArtifact(ctx)
	if err != nil {
		return nil, err
	}
	r.log.Info("artifact ready", "path", a.ArchivePath, "from_cache", a.FromCache, "commit", a.Manifest.Commit)
	return nil, nil
}

func (r *run) extract(ctx context.Context) (func(*localstate.App), error) {
	a, err := r.loadArtifact(ctx)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(r.appRoot, ReleasesDir), 0o755); err != nil {
		return nil, fmt.Errorf("create releases dir: %w", err)
	}
	if _, err := os.Lstat(r.dest); err == nil {
		// A crash after the rename but before the state recorded it: keep the directory
		// only if it is exactly what the artifact produces.
		verr := verifyTree(r.dest, a.Manifest)
		if verr == nil {
			r.log.Info("release directory from before the restart verified against the manifest", "dir", r.dest)
			return r.recordRelease(), nil
		}
		r.log.Warn("release directory from before the restart does not match the manifest; extracting again", "dir", r.dest, "err", verr)
		if err := removeTree(r.dest); err != nil {
			return nil, fmt.Errorf("remove unverified %s: %w", r.dest, err)
		}
	}
	if err := a.Extract(ctx, r.dest, r.d.Limits); err != nil {
		return nil, fmt.Errorf("extract into %s: %w", r.dest, err)
	}
	return r.recordRelease(), nil
}

func (r *run) recordRelease() func(*localstate.App) {
	rel := localstate.Release{Release: r.want.GetRelease(), DeploymentID: r.want.GetDeploymentId(), Dir: r.dirName, SHA256: r.ref.SHA256, CreatedAt: time.Now().UTC()}
	return func(a *localstate.App) {
		if _, ok := a.FindRelease(rel.Dir); !ok {
			a.Releases = append(a.Releases, rel)
		}
	}
}

func (r *run) env() []string {
	return []string{
		"CAPTAIN_PIPELINE=" + r.want.GetPipeline(),
		"CAPTAIN_ENVIRONMENT=" + r.want.GetEnvironment(),
		"CAPTAIN_RELEASE=" + strconv.FormatUint(r.want.GetRelease(), 10),
		"CAPTAIN_DEPLOYMENT_ID=" + r.want.GetDeploymentId(),
		"CAPTAIN_RELEASE_DIR=" + r.dest,
		"CAPTAIN_APP_ROOT=" + r.appRoot,
	}
}

// hook runs a hook in the release directory; a nil or empty hook passes.
func (r *run) hook(ctx context.Context, name string, h *captainv1.Hook) (*captainv1.StepOutput, error) {
	if len(h.GetCommand()) == 0 {
		return nil, nil
	}
	timeout := h.GetTimeout().AsDuration()
	if timeout <= 0 {
		timeout = pipelinespec.DefaultHookTimeout
	}
	out := health.Exec(ctx, health.Command{Name: name, Argv: h.GetCommand(), Dir: r.dest, Env: r.env(), Timeout: timeout})
	r.outputs = append(r.outputs, out)
	r.log.Info("hook finished", "hook", name, "exit_code", out.GetExitCode(), "passed", out.GetPassed(), "truncated", out.GetTruncated())
	if ctx.Err() != nil {
		return out, ctx.Err()
	}
	if !out.GetPassed() {
		return out, fmt.Errorf("%s hook %v exited %d; see its output", name, h.GetCommand(), out.GetExitCode())
	}
	return out, nil
}

func (r *run) beforeActivate(ctx context.Context) (func(*localstate.App), error) {
	_, err := r.hook(ctx, "before_activate", r.want.GetDeploy().GetHooks().GetBeforeActivate())
	if err != nil && ctx.Err() == nil {
		// This directory never became current and never will: drop it now rather than let
		// it take a keep_releases slot.
		if rmErr := r.dropRelease(); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
	}
	return nil, err
}

func (r *run) dropRelease() error {
	if err := r.d.State.Update(func(st *localstate.State) error {
		a := st.App(r.want.GetPipeline())
		a.Releases = slices.DeleteFunc(a.Releases, func(x localstate.Release) bool { return x.Dir == r.dirName })
		return nil
	}); err != nil {
		return err
	}
	if err := removeTree(r.dest); err != nil {
		return fmt.Errorf("remove %s: %w", r.dest, err)
	}
	return nil
}

func (r *run) flip(ctx context.Context) (func(*localstate.App), error) {
	target := filepath.Join(ReleasesDir, r.dirName)
	removeTempLinks(r.appRoot)
	if fi, err := os.Stat(r.dest); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("release directory %s is missing; refusing to point current at it", r.dest)
	}
	cur, err := ReadCurrent(r.appRoot)
	if err != nil {
		return nil, err
	}
	if cur == target {
		r.log.Info("current already points at the release (flip done before the restart)", "target", target)
	} else {
		if err := Flip(r.appRoot, target); err != nil {
			return nil, err
		}
		r.log.Info("flipped current", "from", cur, "to", target)
	}
	return func(a *localstate.App) {
		a.CurrentRelease = r.want.GetRelease()
		a.CurrentDeploymentID = r.want.GetDeploymentId()
		a.CurrentDir = r.dirName
		a.Health = captainv1.HealthState_HEALTH_STATE_UNSPECIFIED
		a.HealthChecks = nil
	}, nil
}

func (r *run) restart(ctx context.Context) (func(*localstate.App), error) {
	deploy := r.want.GetDeploy()
	if unit := deploy.GetSystemdUnit(); unit != "" {
		if r.d.Restarter == nil {
			return nil, fmt.Errorf("pipeline wants systemd unit %s restarted but this agent has no systemd connection", unit)
		}
		rctx, cancel := context.WithTimeout(ctx, pipelinespec.DefaultHookTimeout)
		defer cancel()
		start := time.Now()
		err := r.d.Restarter.Restart(rctx, unit)
		out := &captainv1.StepOutput{Name: "restart " + unit, ExitCode: 0, Passed: err == nil, At: timestamppb.Now()}
		if err != nil {
			out.ExitCode, out.Output = -1, err.Error()
		} else {
			out.Output = fmt.Sprintf("restarted %s in %s", unit, time.Since(start).Round(time.Millisecond))
		}
		r.outputs = append(r.outputs, out)
		return nil, err
	}
	_, err := r.hook(ctx, "activate", deploy.GetHooks().GetActivate())
	return nil, err
}

func (r *run) health(ctx context.Context) (func(*localstate.App), error) {
	deploy := r.want.GetDeploy()
	deadline := deploy.GetHealthDeadline().AsDuration()
	if deadline <= 0 {
		deadline = pipelinespec.DefaultHealthDeadline
	}
	c := &health.Checker{Dir: r.dest, Env: r.env(), Clock: r.d.HealthClock, Logger: r.log}
	res, err := c.Wait(ctx, deploy.GetHealthChecks(), deploy.GetMinHealthyTime().AsDuration(), deadline)
	if err != nil {
		return nil, err
	}
	r.healthy = &res
	r.log.Info("health result", "healthy", res.Healthy, "message", res.Message)
	r.outputs = append(r.outputs, res.Outputs...)
	checks := make([]localstate.Proto[*captainv1.StepOutput], 0, len(res.Outputs))
	for _, o := range res.Outputs {
		if o != nil {
			checks = append(checks, localstate.Proto[*captainv1.StepOutput]{M: o})
		}
	}
	if !res.Healthy {
		return func(a *localstate.App) {
			a.Health = captainv1.HealthState_HEALTH_STATE_UNHEALTHY
			a.HealthChecks = checks
		}, nil
	}
	// after_healthy cannot undo anything: a failure is reported, the release stays healthy.
	if _, err := r.hook(ctx, "after_healthy", deploy.GetHooks().GetAfterHealthy()); err != nil && ctx.Err() != nil {
		return nil, err
	}
	return func(a *localstate.App) {
		a.Health = captainv1.HealthState_HEALTH_STATE_HEALTHY
		a.HealthChecks = checks
		a.LastGoodRelease = r.want.GetRelease()
		a.LastGoodDeploymentID = r.want.GetDeploymentId()
		a.LastGoodDir = r.dirName
	}, nil
}

// finish records the outcome after the last step.
func (r *run) finish() (*Result, error) {
	r.d.boundary("finish")
	if r.healthy == nil {
		// Resumed at done: the outcome was recorded with the health step, nothing reruns.
		var app *localstate.App
		r.d.State.View(func(st *localstate.State) { app = st.Apps[r.want.GetPipeline()] })
		if app.Health == captainv1.HealthState_HEALTH_STATE_HEALTHY {
			return r.record(captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, "healthy on release "+strconv.FormatUint(r.want.GetRelease(), 10))
		}
		return r.record(captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, "health checks failed")
	}
	if !r.healthy.Healthy {
		return r.record(captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, r.healthy.Message)
	}
	msg := fmt.Sprintf("healthy on release %d: %s", r.want.GetRelease(), r.healthy.Message)
	for _, o := range r.outputs {
		if o.GetName() == "after_healthy" && !o.GetPassed() {
			msg += "; the after_healthy hook failed (see its output), the release stays"
		}
	}
	return r.record(captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, msg)
}

func (r *run) finishFailed(msg string) (*Result, error) {
	return r.record(captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, msg)
}

// record ends the deployment in local state with its event, then prunes.
func (r *run) record(state captainv1.HostDeployState, msg string) (*Result, error) {
	pipeline := r.want.GetPipeline()
	res := &Result{Pipeline: pipeline, DeploymentID: r.want.GetDeploymentId(), Release: r.want.GetRelease(), State: state, Message: msg, Outputs: r.outputs, ReleaseDir: r.dest, Resumed: r.resumed}
	if pipeline == "" {
		// Nothing to record against; the caller sent an empty desired state.
		return res, nil
	}
	err := r.d.State.Update(func(st *localstate.State) error {
		a := st.App(pipeline)
		if a.Desired.M.GetDeploymentId() == r.want.GetDeploymentId() {
			a.Desired.M = nil
			a.Step = ""
			a.ReleaseDir = ""
			a.StepStarted = time.Time{}
		}
		lr := &localstate.Result{DeploymentID: res.DeploymentID, Release: res.Release, State: state, Message: msg, At: time.Now().UTC()}
		for _, o := range r.outputs {
			lr.Outputs = append(lr.Outputs, localstate.Proto[*captainv1.StepOutput]{M: o})
		}
		a.LastResult = lr
		r.enqueue(st, a, state, msg)
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.flushEvents()
	if state == captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		r.log.Info("deployment healthy", "message", msg)
	} else {
		r.log.Error("deployment failed", "message", msg)
	}
	r.d.boundary("done")
	if r.appRoot != "" {
		if err := r.d.prune(pipeline, r.want.GetKeepReleases(), r.want.GetDeploy().GetKeepReleases()); err != nil {
			// A failed prune costs disk, not correctness; the next deployment tries again.
			r.log.Warn("pruning old releases failed", "err", err)
		}
		if err := r.d.pruneCache(); err != nil {
			r.log.Warn("pruning the artifact cache failed", "err", err)
		}
	}
	return res, nil
}

func resultFrom(a *localstate.App, dest string) *Result {
	lr := a.LastResult
	res := &Result{Pipeline: a.Pipeline, DeploymentID: lr.DeploymentID, Release: lr.Release, State: lr.State, Message: lr.Message, ReleaseDir: dest}
	for _, o := range lr.Outputs {
		res.Outputs = append(res.Outputs, o.M)
	}
	return res
}

// enqueue adds an event to the durable queue inside the same state write that records the
// step, so a crash loses neither or both; OnEvent hears of it after the write.
func (r *run) enqueue(st *localstate.State, a *localstate.App, state captainv1.HostDeployState, msg string) {
	ev := &captainv1.HostEvent{
		Pipeline:     r.want.GetPipeline(),
		DeploymentId: r.want.GetDeploymentId(),
		Release:      r.want.GetRelease(),
		State:        state,
		Message:      msg,
		At:           timestamppb.Now(),
		App:          HostApp(a),
	}
	if state == captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY || state == captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
		ev.Outputs = r.outputs
	}
	st.Enqueue(ev)
	r.events = append(r.events, proto.CloneOf(ev))
}

func (r *run) flushEvents() {
	evs := r.events
	r.events = nil
	if r.d.OnEvent == nil {
		return
	}
	for _, ev := range evs {
		r.d.OnEvent(ev)
	}
}

// HostApp is the host's view of an app as reported to the coordinator.
func HostApp(a *localstate.App) *captainv1.HostApp {
	h := &captainv1.HostApp{
		Pipeline:            a.Pipeline,
		Environment:         a.Environment,
		CurrentRelease:      a.CurrentRelease,
		CurrentDeploymentId: a.CurrentDeploymentID,
		Health:              a.Health,
		ReportedAt:          timestamppb.Now(),
	}
	if a.CurrentDir != "" {
		h.CurrentTarget = filepath.Join(ReleasesDir, a.CurrentDir)
	}
	for _, rel := range a.Releases {
		h.ReleasesOnDisk = append(h.ReleasesOnDisk, &captainv1.ReleaseOnDisk{Release: rel.Release, DeploymentId: rel.DeploymentID, Dir: filepath.Join(a.AppRoot, ReleasesDir, rel.Dir)})
	}
	if lr := a.LastResult; lr != nil {
		h.LastResult = lr.Message
	}
	for _, o := range a.HealthChecks {
		h.HealthChecks = append(h.HealthChecks, o.M)
	}
	return h
}
