package engine

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Rollback refusals, wrapped with the details; the API maps them to connect codes.
var (
	ErrUnknownTarget = errors.New("unknown rollback target")
	ErrBadTarget     = errors.New("invalid rollback target")
)

// RanTo lists, per environment, the releases that ran there to completion (from the
// environment's deployment history); PlanRollback checks --to against it.
type RanTo map[string][]uint64

// SkippedByRollback are the approval steps a rollback does not run.
var SkippedByRollback = []string{"bake", "tests", "manual approval", "time windows"}

// PlanRollback decides an operator's rollback: per selected environment, from which release to
// which, the hosts affected and the deployment it cancels. Unless preview, it also returns the
// update that starts it: in-progress deployments of the affected stages are cancelled, every
// environment not already on its target gets a rollback deployment, and the stages are blocked
// in and out so nothing moves until an operator enables promotions again.
func (p Planner) PlanRollback(v View, ran RanTo, t *captainv1.RollbackTarget, now time.Time, actor, reason string, preview bool) ([]*captainv1.EnvironmentRollback, *Update, error) {
	spec := v.Pipeline.GetSpec()
	type pick struct {
		st  *captainv1.Stage
		env *captainv1.Environment
	}
	var picks []pick
	selectors := 0
	for _, b := range []bool{len(t.GetStages()) > 0, len(t.GetEnvironments()) > 0, t.GetAllStages()} {
		if b {
			selectors++
		}
	}
	if selectors != 1 {
		return nil, nil, fmt.Errorf("%w: give exactly one of stages, environments or all_stages", ErrBadTarget)
	}
	for _, name := range t.GetStages() {
		if !slices.ContainsFunc(spec.GetStages(), func(st *captainv1.Stage) bool { return st.GetName() == name }) {
			return nil, nil, fmt.Errorf("%w: stage %q is not in pipeline %q", ErrUnknownTarget, name, spec.GetName())
		}
	}
	for _, name := range t.GetEnvironments() {
		if !slices.ContainsFunc(spec.GetStages(), func(st *captainv1.Stage) bool {
			return slices.ContainsFunc(st.GetEnvironments(), func(e *captainv1.Environment) bool { return e.GetName() == name })
		}) {
			return nil, nil, fmt.Errorf("%w: environment %q is not in pipeline %q", ErrUnknownTarget, name, spec.GetName())
		}
	}
	for _, st := range spec.GetStages() {
		var stagePicks []pick
		for _, env := range st.GetEnvironments() {
			if t.GetAllStages() || slices.Contains(t.GetStages(), st.GetName()) || slices.Contains(t.GetEnvironments(), env.GetName()) {
				stagePicks = append(stagePicks, pick{st, env})
			}
		}
		// A stage with a deployment in flight is rolled back whole: its release is abandoned in
		// every environment, not left half deployed next to the one rolled back.
		if len(stagePicks) > 0 && len(stagePicks) < len(st.GetEnvironments()) && stageInFlight(v, st) {
			stagePicks = stagePicks[:0]
			for _, env := range st.GetEnvironments() {
				stagePicks = append(stagePicks, pick{st, env})
			}
		}
		picks = append(picks, stagePicks...)
	}

	pl := &plan{
		v: v, now: now, ts: timestamppb.New(now), spec: spec, newID: p.NewID,
		stages: map[string]*captainv1.StageState{}, deps: map[string]*captainv1.Deployment{},
		dirtyS: map[string]bool{}, dirtyD: map[string]bool{},
	}
	pl.members, pl.hostByID = Membership(spec, v.Hosts)
	for _, st := range spec.GetStages() {
		if row := v.Stages[st.GetName()]; row != nil {
			pl.stages[st.GetName()] = proto.CloneOf(row)
		} else {
			pl.stages[st.GetName()] = pl.newStage(st)
		}
	}
	for id, d := range v.Deployments {
		pl.deps[id] = proto.CloneOf(d)
	}

	var out []*captainv1.EnvironmentRollback
	var errs []string
	for _, pk := range picks {
		s := pl.stages[pk.st.GetName()]
		es := envState(s, pk.env.GetName())
		from, to := es.GetCurrentRelease(), t.GetToRelease()
		if to == 0 {
			to = es.GetLastGoodRelease()
			if to == 0 {
				errs = append(errs, fmt.Sprintf("environment %s has no last good release: name one with --to", pk.env.GetName()))
				continue
			}
		} else if !t.GetForce() {
			approved := slices.Contains(ran[pk.env.GetName()], to) && to <= es.GetLastGoodRelease() && !slices.Contains(s.GetBadReleases(), to)
			if !approved {
				errs = append(errs, fmt.Sprintf("release %d never ran to approval in environment %s (it ran %s); use --force to roll back to it anyway",
					to, pk.env.GetName(), releaseList(ran[pk.env.GetName()])))
				continue
			}
		}
		er := &captainv1.EnvironmentRollback{
			Stage: pk.st.GetName(), Environment: pk.env.GetName(), FromRelease: from, ToRelease: to,
			AlreadyThere: from == to, SkippedSteps: SkippedByRollback,
		}
		for _, h := range pl.members[pk.env.GetName()] {
			if hostApp(h, spec.GetName()).GetCurrentRelease() != to {
				er.Hosts = append(er.Hosts, h.GetId())
			}
		}
		if d := pl.deps[es.GetDeploymentId()]; d != nil && inProgress(d) {
			er.CancelsDeploymentId = d.GetId()
		}
		out = append(out, er)
	}
	if len(errs) > 0 {
		return nil, nil, fmt.Errorf("%w: %s", ErrBadTarget, strings.Join(errs, "; "))
	}
	if preview {
		return out, nil, nil
	}

	why := fmt.Sprintf("rollback by %s", actor)
	if reason != "" {
		why += ": " + reason
	}
	blocked := map[string]bool{}
	for _, er := range out {
		s := pl.stages[er.GetStage()]
		if !blocked[s.GetStage()] {
			blocked[s.GetStage()] = true
			// Whatever the stage was deploying stops: a rollback replaces it.
			for _, es := range s.GetEnvironments() {
				if d := pl.deps[es.GetDeploymentId()]; d != nil && inProgress(d) {
					pl.endDeployment(d, captainv1.DeploymentState_DEPLOYMENT_STATE_CANCELLED, "replaced by a "+why)
				}
			}
			s.Block = &captainv1.Block{In: true, Out: true, Reason: why, Actor: actor, At: pl.ts}
			s.ApprovedRelease = 0
			s.Approvals = nil
			s.BakeEndsAt = nil
			pl.setPhase(s, captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK)
		}
		if er.GetAlreadyThere() {
			continue
		}
		var st *captainv1.Stage
		var env *captainv1.Environment
		for _, pk := range picks {
			if pk.env.GetName() == er.GetEnvironment() {
				st, env = pk.st, pk.env
			}
		}
		to := er.GetToRelease()
		trig := &captainv1.Trigger{Kind: captainv1.TriggerKind_TRIGGER_KIND_OPERATOR, Actor: actor, Reason: reason}
		d := pl.newDeployment(st, env, captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK, to, er.GetFromRelease(), trig,
			func(h *captainv1.Host) bool { return hostApp(h, spec.GetName()).GetCurrentRelease() == to })
		es := envState(s, env.GetName())
		es.CurrentRelease, es.DeploymentId = to, d.GetId()
		// The operator judged the release rolled back from as not good here: the next default
		// target must not be it.
		if to < es.GetLastGoodRelease() {
			es.LastGoodRelease = to
		}
		pl.advanceDeployment(st, d)
		pl.record("rollback.start", s, to, fmt.Sprintf("%s rolls environment %s back from release %d to %d", actor, env.GetName(), er.GetFromRelease(), to),
			map[string]string{"from": strconv.FormatUint(er.GetFromRelease(), 10), "deployment": d.GetId()})
		pl.audit[len(pl.audit)-1].Actor = actor
	}
	return out, pl.result(), nil
}

func stageInFlight(v View, st *captainv1.Stage) bool {
	for _, es := range v.Stages[st.GetName()].GetEnvironments() {
		if d := v.Deployments[es.GetDeploymentId()]; d != nil && inProgress(d) {
			return true
		}
	}
	return false
}

func inProgress(d *captainv1.Deployment) bool {
	return d.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS || d.GetState() == captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING
}

func releaseList(rs []uint64) string {
	if len(rs) == 0 {
		return "no release yet"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.FormatUint(r, 10)
	}
	return "releases " + strings.Join(parts, ", ")
}
