// Package engine is the release captain: the leader-only pipeline engine that moves releases
// through stages, runs approvals, promotes, supersedes and rolls back.
//
// The heart is Plan, a pure function from the replicated state of one pipeline and the time to
// the rows that should change. It does no I/O and reads no clock, so the same inputs always give
// the same decision: tests drive it with scripted state and a fake time, and after a leader
// failover the new leader resumes from persisted timestamps (a bake that ends at 10:30 still ends
// at 10:30). The Runner around it watches state, calls Plan, and writes the result through Raft.
package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Actor is the name the engine acts under in audit events, blocks and triggers.
const Actor = "captain"

// View is the replicated state Plan decides from, for one pipeline.
type View struct {
	// Pipeline is the current version of the spec.
	Pipeline *captainv1.Pipeline
	// Latest is the newest release number of the pipeline (0 when none).
	Latest uint64
	// Stages holds the persisted stage rows by stage name; missing rows start idle.
	Stages map[string]*captainv1.StageState
	// Deployments holds at least every deployment a stage row or environment refers to.
	Deployments map[string]*captainv1.Deployment
	// Hosts is every registered host.
	Hosts []*captainv1.Host
	// Alarms holds external alarms by name.
	Alarms map[string]*captainv1.Alarm
	// TestResults are finished test runs not yet recorded in their stage.
	TestResults []TestResult
}

// TestResult is the outcome of one approval test run for a stage's release.
type TestResult struct {
	Stage   string
	Release uint64
	Name    string
	Output  *captainv1.StepOutput
}

// Update is what Plan decided: rows to write in one Raft command, and when to look again even if
// nothing else changes.
type Update struct {
	Stages      []*captainv1.StageState
	Deployments []*captainv1.Deployment
	Audit       []*captainv1.AuditEvent
	// Wake is the earliest time a timer (bake end, progress deadline, window opening) needs Plan
	// to run again; zero when no timer is pending.
	Wake time.Time
}

// Empty reports whether the update changes nothing.
func (u *Update) Empty() bool {
	return len(u.Stages) == 0 && len(u.Deployments) == 0 && len(u.Audit) == 0
}

// Planner decides. NewID names new deployments; it must return IDs unique across the cluster's
// history (the Runner uses random IDs; tests use a counter).
type Planner struct {
	NewID func() string
}

// plan is the working copy of one Plan call.
type plan struct {
	v        View
	now      time.Time
	ts       *timestamppb.Timestamp
	spec     *captainv1.PipelineSpec
	newID    func() string
	stages   map[string]*captainv1.StageState
	deps     map[string]*captainv1.Deployment
	dirtyS   map[string]bool
	dirtyD   map[string]bool
	audit    []*captainv1.AuditEvent
	wake     time.Time
	members  map[string][]*captainv1.Host // environment → hosts, sorted by ID
	hostByID map[string]*captainv1.Host
	// failAlarm names the alarm behind the failure being handled, for the rollback's trigger.
	failAlarm string
}

// Plan returns the changes that bring the pipeline forward at time now. Applying the update and
// planning again at the same time returns an empty update: Plan converges.
func (p Planner) Plan(v View, now time.Time) *Update {
	pl := &plan{
		v: v, now: now, ts: timestamppb.New(now), spec: v.Pipeline.GetSpec(), newID: p.NewID,
		stages: map[string]*captainv1.StageState{}, deps: map[string]*captainv1.Deployment{},
		dirtyS: map[string]bool{}, dirtyD: map[string]bool{},
	}
	pl.members, pl.hostByID = Membership(pl.spec, v.Hosts)
	// Copies, so the caller's view is never mutated.
	for i, st := range pl.spec.GetStages() {
		if row := v.Stages[st.GetName()]; row != nil {
			pl.stages[st.GetName()] = proto.CloneOf(row)
		} else {
			pl.stages[st.GetName()] = pl.newStage(st)
			pl.dirtyS[st.GetName()] = true
		}
		pl.syncStageShape(i, st)
	}
	for id, d := range v.Deployments {
		pl.deps[id] = proto.CloneOf(d)
	}

	pl.admitNewRelease()
	for i, st := range pl.spec.GetStages() {
		pl.step(i, st)
	}
	return pl.result()
}

func (pl *plan) newStage(st *captainv1.Stage) *captainv1.StageState {
	return &captainv1.StageState{
		Pipeline: pl.spec.GetName(), Stage: st.GetName(), Wave: st.GetWave(),
		Phase: captainv1.StagePhase_STAGE_PHASE_IDLE, PhaseSince: pl.ts,
	}
}

// syncStageShape keeps the stage row's environments in step with the spec (a new spec version may
// add or remove environments) and refreshes host counts.
func (pl *plan) syncStageShape(_ int, st *captainv1.Stage) {
	s := pl.stages[st.GetName()]
	if s.Wave != st.GetWave() {
		s.Wave = st.GetWave()
		pl.dirtyS[st.GetName()] = true
	}
	old := map[string]*captainv1.EnvironmentState{}
	for _, e := range s.GetEnvironments() {
		old[e.GetEnvironment()] = e
	}
	envs := make([]*captainv1.EnvironmentState, 0, len(st.GetEnvironments()))
	for _, e := range st.GetEnvironments() {
		es := old[e.GetName()]
		if es == nil {
			es = &captainv1.EnvironmentState{Environment: e.GetName()}
			pl.dirtyS[st.GetName()] = true
		}
		total, healthy, down := pl.countHosts(e.GetName(), es.GetCurrentRelease())
		if es.HostsTotal != total || es.HostsHealthy != healthy || es.HostsDown != down {
			es.HostsTotal, es.HostsHealthy, es.HostsDown = total, healthy, down
			pl.dirtyS[st.GetName()] = true
		}
		envs = append(envs, es)
	}
	if len(envs) != len(s.GetEnvironments()) {
		pl.dirtyS[st.GetName()] = true
	}
	s.Environments = envs
}

func (pl *plan) countHosts(env string, release uint64) (total, healthy, down uint32) {
	for _, h := range pl.members[env] {
		total++
		if h.GetLiveness() == captainv1.Liveness_LIVENESS_DOWN {
			down++
			continue
		}
		if app := hostApp(h, pl.spec.GetName()); app != nil && release != 0 && app.GetCurrentRelease() == release &&
			app.GetHealth() == captainv1.HealthState_HEALTH_STATE_HEALTHY {
			healthy++
		}
	}
	return total, healthy, down
}

// admitNewRelease puts a newly created release into the first stage's inbox, superseding an
// older one waiting there.
func (pl *plan) admitNewRelease() {
	if len(pl.spec.GetStages()) == 0 || pl.v.Latest == 0 {
		return
	}
	first := pl.stages[pl.spec.GetStages()[0].GetName()]
	if pl.v.Latest <= first.GetRelease() || pl.v.Latest <= first.GetInbox().GetRelease() {
		return
	}
	pl.enterInbox(first, pl.v.Latest, "created")
}

// enterInbox puts release r into a stage's inbox, recording what it supersedes.
func (pl *plan) enterInbox(s *captainv1.StageState, r uint64, how string) {
	if slices.Contains(s.GetBadReleases(), r) {
		pl.record("release.not_promoted", s, r, fmt.Sprintf("release %d is marked bad for stage %s", r, s.GetStage()), nil)
		return
	}
	in := &captainv1.Inbox{Release: r, Since: pl.ts}
	if old := s.GetInbox().GetRelease(); old != 0 && old < r {
		in.Superseded = old
		pl.record("release.superseded", s, old, fmt.Sprintf("release %d superseded by %d in the inbox of stage %s", old, r, s.GetStage()),
			map[string]string{"by": strconv.FormatUint(r, 10)})
	}
	s.Inbox = in
	pl.dirtyS[s.GetStage()] = true
	pl.record("release.inbox", s, r, fmt.Sprintf("release %d %s, waiting for stage %s", r, how, s.GetStage()), nil)
}

// step runs one stage's state machine as far as it can go at this time.
func (pl *plan) step(i int, st *captainv1.Stage) {
	s := pl.stages[st.GetName()]
	for guard := 0; guard < 8; guard++ { // a few transitions may chain in one Plan call
		before := s.GetPhase()
		switch before {
		case captainv1.StagePhase_STAGE_PHASE_UNSPECIFIED, captainv1.StagePhase_STAGE_PHASE_IDLE:
			pl.promoteHeld(i, s)
			pl.maybeStart(st, s)
		case captainv1.StagePhase_STAGE_PHASE_DEPLOYING:
			pl.advanceDeploying(st, s)
		case captainv1.StagePhase_STAGE_PHASE_VERIFYING:
			pl.verify(st, s)
		case captainv1.StagePhase_STAGE_PHASE_APPROVED:
			pl.approve(i, st, s)
		case captainv1.StagePhase_STAGE_PHASE_FAILED:
			pl.rollBack(st, s)
		case captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
			pl.advanceRollback(st, s)
		}
		if s.GetPhase() == before {
			break
		}
	}
	if ph := s.GetPhase(); ph == captainv1.StagePhase_STAGE_PHASE_IDLE || ph == captainv1.StagePhase_STAGE_PHASE_VERIFYING {
		pl.catchUp(st, s)
	}
}

// catchUp brings hosts that are new to an environment, or back from down, to the environment's
// current release with a deployment of their own, so no new release is needed for them. A host
// that failed its catch-up is not retried for the same release: the failure stays visible in
// the environment's history and host-health alarms.
func (pl *plan) catchUp(st *captainv1.Stage, s *captainv1.StageState) {
	for _, env := range st.GetEnvironments() {
		es := envState(s, env.GetName())
		r := es.GetCurrentRelease()
		if r == 0 {
			continue
		}
		last := pl.deps[es.GetDeploymentId()]
		if last != nil && (last.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS || last.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING) {
			pl.advanceDeployment(st, last) // a catch-up in flight
			continue
		}
		inLast := map[string]captainv1.HostDeployState{}
		for _, hr := range last.GetHosts() {
			inLast[hr.GetHostId()] = hr.GetState()
		}
		var behind []string
		for _, h := range pl.members[env.GetName()] {
			if h.GetLiveness() == captainv1.Liveness_LIVENESS_DOWN || hostApp(h, pl.spec.GetName()).GetCurrentRelease() == r {
				continue
			}
			if state, ok := inLast[h.GetId()]; !ok || state == captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED {
				behind = append(behind, h.GetId())
			}
		}
		if len(behind) == 0 {
			continue
		}
		kind := captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY
		if last.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK {
			kind = captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK
		}
		isBehind := func(h *captainv1.Host) bool { return slices.Contains(behind, h.GetId()) }
		d := pl.newDeployment(st, env, kind, r, r,
			&captainv1.Trigger{Kind: captainv1.TriggerKind_TRIGGER_KIND_PIPELINE, Reason: fmt.Sprintf("catch-up: %d host(s) joined or returned", len(behind))},
			func(h *captainv1.Host) bool { return !isBehind(h) })
		// Hosts already on the release are not part of a catch-up at all.
		d.Hosts = slices.DeleteFunc(d.Hosts, func(hr *captainv1.HostResult) bool { return !slices.Contains(behind, hr.GetHostId()) })
		es.DeploymentId = d.GetId()
		pl.dirtyS[s.GetStage()] = true
		pl.record("deployment.catch_up", s, r, fmt.Sprintf("bringing %s in environment %s to release %d", strings.Join(behind, ", "), env.GetName(), r), nil)
		pl.advanceDeployment(st, d)
	}
}

func (pl *plan) setPhase(s *captainv1.StageState, ph captainv1.StagePhase) {
	s.Phase, s.PhaseSince = ph, pl.ts
	pl.dirtyS[s.GetStage()] = true
}

// maybeStart begins deploying the inbox release when the stage may take it.
func (pl *plan) maybeStart(st *captainv1.Stage, s *captainv1.StageState) {
	r := s.GetInbox().GetRelease()
	if r == 0 || s.GetBlock().GetIn() {
		return
	}
	if slices.Contains(s.GetBadReleases(), r) {
		s.Inbox = nil
		pl.dirtyS[s.GetStage()] = true
		return
	}
	windows, err := pipelinespec.CompileWindows(st.GetApproval().GetWindows())
	if err == nil && len(windows) > 0 && !pipelinespec.Open(windows, pl.now) {
		if next, ok := pipelinespec.NextOpen(windows, pl.now, pl.now.Add(400*24*time.Hour)); ok {
			pl.wakeAt(next)
		}
		return
	}
	s.Release = r
	s.Inbox = nil
	s.Approvals = nil
	s.BakeEndsAt = nil
	s.Failure = ""
	for _, env := range st.GetEnvironments() {
		es := envState(s, env.GetName())
		d := pl.newDeployment(st, env, captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY, r, es.GetCurrentRelease(),
			&captainv1.Trigger{Kind: captainv1.TriggerKind_TRIGGER_KIND_PIPELINE}, nil)
		es.CurrentRelease = r
		es.DeploymentId = d.GetId()
	}
	pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_DEPLOYING)
	pl.record("stage.deploying", s, r, fmt.Sprintf("deploying release %d to stage %s", r, s.GetStage()), nil)
	pl.advanceDeploying(st, s)
}

// newDeployment creates a deployment of release r to one environment. Hosts already running r
// (as a rollback target, say) are skipped rather than redeployed when skipOn reports so.
func (pl *plan) newDeployment(st *captainv1.Stage, env *captainv1.Environment, kind captainv1.DeploymentKind, r, from uint64,
	trig *captainv1.Trigger, skipOn func(*captainv1.Host) bool) *captainv1.Deployment {
	policy := effectiveBatch(st, env)
	hosts := pl.members[env.GetName()]
	size := BatchSize(policy, len(hosts))
	d := &captainv1.Deployment{
		Id: pl.newID(), Pipeline: pl.spec.GetName(), Stage: st.GetName(), Environment: env.GetName(),
		Kind: kind, Release: r, FromRelease: from, Trigger: trig,
		State: captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS, CreatedAt: pl.ts, StartedAt: pl.ts,
		Batch: policy, Deadline: timestamppb.New(pl.now.Add(progressDeadline(st))),
	}
	n := 0
	for _, h := range hosts {
		hr := &captainv1.HostResult{HostId: h.GetId(), State: captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING}
		if skipOn != nil && skipOn(h) {
			hr.State, hr.Message, hr.FinishedAt = captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED, fmt.Sprintf("already on release %d", r), pl.ts
		} else {
			hr.Batch = uint32(n/size) + 1
			n++
		}
		d.Hosts = append(d.Hosts, hr)
	}
	pl.deps[d.GetId()] = d
	pl.dirtyD[d.GetId()] = true
	return d
}

func effectiveBatch(st *captainv1.Stage, env *captainv1.Environment) *captainv1.BatchPolicy {
	b := &captainv1.BatchPolicy{MaxUnavailable: pipelinespec.DefaultMaxUnavailable, MinHealthy: pipelinespec.DefaultMinHealthy}
	for _, src := range []*captainv1.BatchPolicy{st.GetBatch(), env.GetBatch()} {
		if src.GetMaxUnavailable() != "" {
			b.MaxUnavailable = src.GetMaxUnavailable()
		}
		if src.GetMinHealthy() != "" {
			b.MinHealthy = src.GetMinHealthy()
		}
	}
	return b
}

// BatchSize is how many of n hosts may be updated at once: max_unavailable, lowered so that
// min_healthy hosts stay in service (a percentage of min_healthy rounds up, to stay safe), and
// never below one so a deployment always progresses.
func BatchSize(b *captainv1.BatchPolicy, n int) int {
	size := 1
	if q, err := pipelinespec.ParseQuantity(b.GetMaxUnavailable()); err == nil {
		size = q.Of(n)
	}
	if q, err := pipelinespec.ParseQuantity(b.GetMinHealthy()); err == nil && b.GetMinHealthy() != "" {
		keep := q.Value
		if q.Percent {
			keep = (n*q.Value + 99) / 100
		}
		size = min(size, n-keep)
	}
	return max(size, 1)
}

func progressDeadline(st *captainv1.Stage) time.Duration {
	if d := st.GetProgressDeadline().AsDuration(); d > 0 {
		return d
	}
	return pipelinespec.DefaultProgressDeadline
}

// advanceDeploying moves every environment's deployment forward and decides the stage.
func (pl *plan) advanceDeploying(st *captainv1.Stage, s *captainv1.StageState) {
	allDone, failure, alarm := true, "", ""
	for _, env := range st.GetEnvironments() {
		d := pl.deps[envState(s, env.GetName()).GetDeploymentId()]
		if d == nil {
			continue
		}
		pl.advanceDeployment(st, d)
		switch d.GetState() {
		case captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED:
			if failure == "" {
				failure = fmt.Sprintf("environment %s: %s", env.GetName(), d.GetReason())
			}
		case captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED:
		default:
			allDone = false
		}
	}
	if failure == "" {
		// Alarms are watched while deploying too; host-health is judged by the deployment itself.
		if name, why := pl.firingAlarm(st, s, false); name != "" {
			failure, alarm = why, name
		}
	}
	switch {
	case failure != "":
		pl.fail(st, s, failure, alarm)
	case allDone:
		pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_VERIFYING)
		pl.startVerifying(st, s)
	}
}

// advanceDeployment starts batches, skips or fails down hosts, and ends the deployment.
func (pl *plan) advanceDeployment(st *captainv1.Stage, d *captainv1.Deployment) {
	if d.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS && d.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING {
		return
	}
	changed := false
	failHost := func(hr *captainv1.HostResult, msg string) {
		hr.State, hr.Message, hr.FinishedAt = captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, msg, pl.ts
		changed = true
	}
	// A host that went down mid-deployment cannot finish; the stage's policy says what that means.
	for _, hr := range d.GetHosts() {
		if terminal(hr.GetState()) || hr.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING {
			continue
		}
		if h := pl.hostByID[hr.GetHostId()]; h == nil || h.GetLiveness() == captainv1.Liveness_LIVENESS_DOWN {
			if st.GetDownHosts() == captainv1.DownHostPolicy_DOWN_HOST_POLICY_FAIL {
				failHost(hr, "host went down during the deployment")
			} else {
				hr.State, hr.Message, hr.FinishedAt = captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED, "host went down during the deployment; it catches up when it returns", pl.ts
				changed = true
			}
		}
	}
	// Start the lowest batch that still has work, once every earlier batch is done.
	for {
		batch := uint32(0)
		for _, hr := range d.GetHosts() {
			if !terminal(hr.GetState()) && (batch == 0 || hr.GetBatch() < batch) {
				batch = hr.GetBatch()
			}
		}
		if batch == 0 || anyFailed(d) {
			break
		}
		started := false
		for _, hr := range d.GetHosts() {
			if hr.GetBatch() != batch || hr.GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING {
				continue
			}
			h := pl.hostByID[hr.GetHostId()]
			switch {
			case h == nil || h.GetLiveness() == captainv1.Liveness_LIVENESS_DOWN:
				if st.GetDownHosts() == captainv1.DownHostPolicy_DOWN_HOST_POLICY_FAIL {
					failHost(hr, "host is down")
				} else {
					hr.State, hr.Message, hr.FinishedAt = captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED, "host is down; it catches up when it returns", pl.ts
				}
			default:
				hr.State, hr.StartedAt = captainv1.HostDeployState_HOST_DEPLOY_STATE_ASSIGNED, pl.ts
			}
			started, changed = true, true
		}
		if d.GetCurrentBatch() != batch {
			d.CurrentBatch, changed = batch, true
		}
		if !started {
			break // the batch is in flight; wait for reports
		}
	}
	var failed *captainv1.HostResult
	done := true
	for _, hr := range d.GetHosts() {
		if hr.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED && failed == nil {
			failed = hr
		}
		if !terminal(hr.GetState()) {
			done = false
		}
	}
	switch {
	case failed != nil:
		pl.endDeployment(d, captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED, fmt.Sprintf("host %s failed: %s", failed.GetHostId(), failed.GetMessage()))
		return
	case done:
		pl.endDeployment(d, captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED, "")
		return
	case d.GetDeadline() != nil && !pl.now.Before(d.GetDeadline().AsTime()):
		pl.endDeployment(d, captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED, fmt.Sprintf("progress deadline of %s passed", progressDeadline(st)))
		return
	}
	if d.GetDeadline() != nil {
		pl.wakeAt(d.GetDeadline().AsTime())
	}
	if changed {
		pl.dirtyD[d.GetId()] = true
	}
}

func (pl *plan) endDeployment(d *captainv1.Deployment, state captainv1.DeploymentState, reason string) {
	d.State, d.Reason, d.FinishedAt = state, reason, pl.ts
	if state != captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED {
		for _, hr := range d.GetHosts() {
			if hr.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING {
				hr.State, hr.Message, hr.FinishedAt = captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED, "not started: the deployment ended", pl.ts
			}
		}
	}
	pl.dirtyD[d.GetId()] = true
}

func terminal(s captainv1.HostDeployState) bool {
	switch s {
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED, captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED:
		return true
	}
	return false
}

func anyFailed(d *captainv1.Deployment) bool {
	return slices.ContainsFunc(d.GetHosts(), func(hr *captainv1.HostResult) bool {
		return hr.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED
	})
}

// Approval step names as stored in StageState.approvals.
const (
	StepBake   = "bake"
	StepAlarms = "alarms"
	StepManual = "manual"
	testPrefix = "test:"
)

func (pl *plan) startVerifying(st *captainv1.Stage, s *captainv1.StageState) {
	a := st.GetApproval()
	s.BakeEndsAt = timestamppb.New(pl.now.Add(a.GetBake().GetDuration().AsDuration()))
	keepManual := findApproval(s, StepManual)
	s.Approvals = nil
	pending := func(step string) *captainv1.ApprovalStatus {
		return &captainv1.ApprovalStatus{Step: step, State: captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING, UpdatedAt: pl.ts}
	}
	if a.GetBake() != nil {
		s.Approvals = append(s.Approvals, pending(StepBake))
	}
	if len(watchedAlarms(st)) > 0 {
		s.Approvals = append(s.Approvals, pending(StepAlarms))
	}
	for _, t := range a.GetTests() {
		s.Approvals = append(s.Approvals, pending(testPrefix+t.GetName()))
	}
	if a.GetManual().GetRequired() {
		// An approval given while the release was still deploying counts.
		if keepManual != nil && keepManual.GetState() == captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED {
			s.Approvals = append(s.Approvals, keepManual)
		} else {
			s.Approvals = append(s.Approvals, pending(StepManual))
		}
	}
	pl.record("stage.verifying", s, s.GetRelease(), fmt.Sprintf("release %d deployed to stage %s; verifying", s.GetRelease(), s.GetStage()), nil)
}

func findApproval(s *captainv1.StageState, step string) *captainv1.ApprovalStatus {
	for _, a := range s.GetApprovals() {
		if a.GetStep() == step {
			return a
		}
	}
	return nil
}

func (pl *plan) setApproval(s *captainv1.StageState, step string, state captainv1.ApprovalStepState, detail string) {
	a := findApproval(s, step)
	if a == nil || (a.GetState() == state && a.GetDetail() == detail) {
		return
	}
	a.State, a.Detail, a.UpdatedAt = state, detail, pl.ts
	pl.dirtyS[s.GetStage()] = true
}

// verify judges the approval steps of a deployed release.
func (pl *plan) verify(st *captainv1.Stage, s *captainv1.StageState) {
	for _, tr := range pl.v.TestResults {
		a := findApproval(s, testPrefix+tr.Name)
		if tr.Stage != s.GetStage() || tr.Release != s.GetRelease() || a == nil || a.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING {
			continue
		}
		state, detail := captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED, "passed"
		if !tr.Output.GetPassed() {
			state, detail = captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED, firstLine(tr.Output.GetOutput())
		}
		a.Outputs = append(a.Outputs, tr.Output)
		pl.setApproval(s, a.GetStep(), state, detail)
	}
	if name, why := pl.firingAlarm(st, s, true); name != "" {
		pl.setApproval(s, StepAlarms, captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED, why)
		pl.fail(st, s, why, name)
		return
	}
	for _, a := range s.GetApprovals() {
		if strings.HasPrefix(a.GetStep(), testPrefix) && a.GetState() == captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED {
			pl.fail(st, s, fmt.Sprintf("test %s failed: %s", strings.TrimPrefix(a.GetStep(), testPrefix), a.GetDetail()), "")
			return
		}
	}
	if findApproval(s, StepAlarms) != nil {
		if ok, why := pl.alarmsOK(st, s); ok {
			pl.setApproval(s, StepAlarms, captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED, "all watched alarms ok")
		} else {
			pl.setApproval(s, StepAlarms, captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING, why)
		}
	}
	if findApproval(s, StepBake) != nil {
		end := s.GetBakeEndsAt().AsTime()
		switch ok, why := pl.bakeHealthy(st, s); {
		case pl.now.Before(end):
			pl.setApproval(s, StepBake, captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING, "baking until "+end.UTC().Format(time.RFC3339))
			pl.wakeAt(end)
		case !ok:
			pl.setApproval(s, StepBake, captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING, why)
		default:
			pl.setApproval(s, StepBake, captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED, "baked "+st.GetApproval().GetBake().GetDuration().AsDuration().String())
		}
	}
	for _, a := range s.GetApprovals() {
		if a.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED {
			return
		}
	}
	pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_APPROVED)
}

// bakeHealthy checks that enough live hosts of every environment report the release healthy, so
// a silent host cannot pass a bake.
func (pl *plan) bakeHealthy(st *captainv1.Stage, s *captainv1.StageState) (bool, string) {
	want := int(st.GetApproval().GetBake().GetMinHealthyReports())
	for _, env := range st.GetEnvironments() {
		total, healthy, down := pl.countHosts(env.GetName(), s.GetRelease())
		need := int(total - down)
		if want > 0 {
			need = want
		}
		if int(healthy) < need {
			return false, fmt.Sprintf("environment %s: %d of %d hosts report release %d healthy", env.GetName(), healthy, need, s.GetRelease())
		}
	}
	return true, ""
}

// approve records the approval, advances last good, and promotes.
func (pl *plan) approve(i int, st *captainv1.Stage, s *captainv1.StageState) {
	r := s.GetRelease()
	for _, es := range s.GetEnvironments() {
		es.LastGoodRelease = r
	}
	pl.record("stage.approved", s, r, fmt.Sprintf("release %d approved in stage %s", r, s.GetStage()), nil)
	s.ApprovedRelease = r
	pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_IDLE)
	pl.promoteHeld(i, s)
}

// promoteHeld moves the stage's approved release into the next stage's inbox unless the stage is
// blocked out; a blocked release waits here as approved_release until the block is lifted.
func (pl *plan) promoteHeld(i int, s *captainv1.StageState) {
	r := s.GetApprovedRelease()
	if r == 0 || s.GetBlock().GetOut() {
		return
	}
	s.ApprovedRelease = 0
	pl.dirtyS[s.GetStage()] = true
	stages := pl.spec.GetStages()
	if i+1 >= len(stages) {
		pl.record("release.complete", s, r, fmt.Sprintf("release %d passed the last stage %s", r, s.GetStage()), nil)
		return
	}
	next := pl.stages[stages[i+1].GetName()]
	if r <= next.GetRelease() || r <= next.GetInbox().GetRelease() {
		return // the next stage already has this or a newer release
	}
	pl.enterInbox(next, r, "promoted from stage "+s.GetStage())
}

// fail marks the stage failed; the rollback follows in the same Plan call.
func (pl *plan) fail(_ *captainv1.Stage, s *captainv1.StageState, why, alarm string) {
	s.Failure = why
	for _, es := range s.GetEnvironments() {
		if d := pl.deps[es.GetDeploymentId()]; d != nil && d.GetRelease() == s.GetRelease() &&
			(d.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS || d.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING) {
			pl.endDeployment(d, captainv1.DeploymentState_DEPLOYMENT_STATE_CANCELLED, "stage failed: "+why)
		}
	}
	details := map[string]string{}
	if alarm != "" {
		details["alarm"] = alarm
	}
	pl.record("stage.failed", s, s.GetRelease(), fmt.Sprintf("release %d failed in stage %s: %s", s.GetRelease(), s.GetStage(), why), details)
	pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_FAILED)
	pl.failAlarm = alarm
}

// rollBack rolls every environment of a failed stage back to its last good release, blocks the
// stage in and out, and marks the release bad for the stage.
func (pl *plan) rollBack(st *captainv1.Stage, s *captainv1.StageState) {
	bad := s.GetRelease()
	if !slices.Contains(s.GetBadReleases(), bad) {
		s.BadReleases = append(s.BadReleases, bad)
	}
	s.Block = &captainv1.Block{In: true, Out: true, Reason: fmt.Sprintf("release %d failed: %s", bad, s.GetFailure()), Actor: Actor, At: pl.ts}
	s.ApprovedRelease = 0
	started := false
	for _, env := range st.GetEnvironments() {
		es := envState(s, env.GetName())
		target := es.GetLastGoodRelease()
		if target == 0 || target == es.GetCurrentRelease() {
			continue // nothing to return to, or already there: no rollback, so no loop
		}
		trig := &captainv1.Trigger{Kind: captainv1.TriggerKind_TRIGGER_KIND_AUTOMATIC, Alarm: pl.failAlarm, Reason: s.GetFailure()}
		d := pl.newDeployment(st, env, captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK, target, es.GetCurrentRelease(), trig,
			func(h *captainv1.Host) bool { return hostApp(h, pl.spec.GetName()).GetCurrentRelease() == target })
		es.CurrentRelease = target
		es.DeploymentId = d.GetId()
		started = true
		pl.record("rollback.automatic", s, target, fmt.Sprintf("rolling environment %s back from release %d to %d", env.GetName(), bad, target),
			map[string]string{"from": strconv.FormatUint(bad, 10), "deployment": d.GetId()})
	}
	if started {
		pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK)
		pl.advanceRollback(st, s)
		return
	}
	pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_IDLE)
}

// advanceRollback drives rollback deployments; windows never hold them.
func (pl *plan) advanceRollback(st *captainv1.Stage, s *captainv1.StageState) {
	done := true
	for _, env := range st.GetEnvironments() {
		d := pl.deps[envState(s, env.GetName()).GetDeploymentId()]
		if d == nil || d.GetKind() != captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK {
			continue
		}
		pl.advanceDeployment(st, d)
		switch d.GetState() {
		case captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED:
			s.Failure = fmt.Sprintf("rollback of environment %s failed: %s", env.GetName(), d.GetReason())
			pl.dirtyS[s.GetStage()] = true
		case captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS, captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING:
			done = false
		}
	}
	if done {
		pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_IDLE)
		pl.record("rollback.finished", s, s.GetRelease(), "rollback of stage "+s.GetStage()+" finished; promotions stay blocked until an operator enables them", nil)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func envState(s *captainv1.StageState, env string) *captainv1.EnvironmentState {
	for _, e := range s.GetEnvironments() {
		if e.GetEnvironment() == env {
			return e
		}
	}
	e := &captainv1.EnvironmentState{Environment: env}
	s.Environments = append(s.Environments, e)
	return e
}

func hostApp(h *captainv1.Host, pipeline string) *captainv1.HostApp {
	for _, a := range h.GetApps() {
		if a.GetPipeline() == pipeline {
			return a
		}
	}
	return nil
}

func (pl *plan) wakeAt(t time.Time) {
	if !t.After(pl.now) {
		return
	}
	if pl.wake.IsZero() || t.Before(pl.wake) {
		pl.wake = t
	}
}

func (pl *plan) record(action string, s *captainv1.StageState, release uint64, reason string, details map[string]string) {
	if details == nil {
		details = map[string]string{}
	}
	details["release"] = strconv.FormatUint(release, 10)
	pl.audit = append(pl.audit, &captainv1.AuditEvent{
		At: pl.ts, Actor: Actor, Action: action, Reason: reason, Details: details,
		Target: fmt.Sprintf("pipeline/%s/stage/%s", s.GetPipeline(), s.GetStage()),
	})
}

func (pl *plan) result() *Update {
	u := &Update{Audit: pl.audit, Wake: pl.wake}
	for _, st := range pl.spec.GetStages() {
		if pl.dirtyS[st.GetName()] {
			u.Stages = append(u.Stages, pl.stages[st.GetName()])
		}
	}
	for id := range pl.dirtyD {
		u.Deployments = append(u.Deployments, pl.deps[id])
	}
	slices.SortFunc(u.Deployments, func(a, b *captainv1.Deployment) int { return cmp.Compare(a.GetId(), b.GetId()) })
	return u
}
