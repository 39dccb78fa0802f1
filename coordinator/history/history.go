// Package history answers the operator's questions from replicated state: what was deployed to
// an environment and which commits each deployment added, where a commit is, and what a pipeline
// looks like right now.
//
// Trunk is linear, so an environment contains commit C exactly when the release it runs is at
// least the first release that contains C.
package history

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/coordinator/engine"
	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Sentinel errors; the API maps them to connect codes.
var (
	ErrNotFound  = errors.New("not found")
	ErrAmbiguous = errors.New("ambiguous")
	ErrInvalid   = errors.New("invalid")
)

// reader is the part of the state these answers read.
type reader interface {
	Pipelines() ([]*captainv1.Pipeline, error)
	Releases(pipeline string, before uint64, limit int) ([]*captainv1.Release, error)
	Deployments(pipeline, environment string) ([]*captainv1.Deployment, error)
	Stages(pipeline string) ([]*captainv1.StageState, error)
	Alarms() ([]*captainv1.Alarm, error)
}

// EnvironmentDeployments returns an environment's deployments, newest first (at most limit when
// limit > 0), and the commits each deploy added over the release the environment ran before.
func EnvironmentDeployments(r reader, p *captainv1.Pipeline, env string, limit int) ([]*captainv1.Deployment, map[string]*captainv1.CommitList, error) {
	name := p.GetSpec().GetName()
	if !hasEnvironment(p.GetSpec(), env) {
		return nil, nil, fmt.Errorf("environment %q in pipeline %q: %w", env, name, ErrNotFound)
	}
	deps, err := r.Deployments(name, env)
	if err != nil {
		return nil, nil, err
	}
	newestFirst(deps)
	if limit > 0 && len(deps) > limit {
		deps = deps[:limit]
	}
	rels, err := r.Releases(name, 0, 0)
	if err != nil {
		return nil, nil, err
	}
	added := map[string]*captainv1.CommitList{}
	for _, d := range deps {
		if d.GetKind() != captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY || d.GetRelease() <= d.GetFromRelease() {
			continue
		}
		added[d.GetId()] = &captainv1.CommitList{Commits: CommitsBetween(rels, d.GetFromRelease(), d.GetRelease())}
	}
	return deps, added, nil
}

// CommitsBetween lists the commits of releases (from, to], newest first; rels may be in any order.
func CommitsBetween(rels []*captainv1.Release, from, to uint64) []*captainv1.Commit {
	lo, hi := min(from, to), max(from, to)
	sorted := slices.Clone(rels)
	slices.SortFunc(sorted, func(a, b *captainv1.Release) int { return cmp.Compare(b.GetNumber(), a.GetNumber()) })
	var out []*captainv1.Commit
	for _, rel := range sorted {
		if rel.GetNumber() > lo && rel.GetNumber() <= hi {
			out = append(out, releaseCommits(rel)...)
		}
	}
	return out
}

// releaseCommits are the release's commits, with its head commit when the list lacks it.
func releaseCommits(rel *captainv1.Release) []*captainv1.Commit {
	cs := rel.GetCommits()
	if rel.GetHeadCommit() != "" && !slices.ContainsFunc(cs, func(c *captainv1.Commit) bool { return c.GetSha() == rel.GetHeadCommit() }) {
		cs = append([]*captainv1.Commit{{Sha: rel.GetHeadCommit()}}, cs...)
	}
	return cs
}

func newestFirst(deps []*captainv1.Deployment) {
	slices.SortFunc(deps, func(a, b *captainv1.Deployment) int {
		if c := b.GetCreatedAt().AsTime().Compare(a.GetCreatedAt().AsTime()); c != 0 {
			return c
		}
		return cmp.Compare(b.GetId(), a.GetId())
	})
}

func hasEnvironment(spec *captainv1.PipelineSpec, env string) bool {
	for _, st := range spec.GetStages() {
		for _, e := range st.GetEnvironments() {
			if e.GetName() == env {
				return true
			}
		}
	}
	return false
}

// minShort is the shortest commit prefix accepted.
const minShort = 4

// WhereIsCommit resolves a full or short SHA and answers per environment of every pipeline (or
// only the named one) whether it contains the commit, since when, and through which deployment.
func WhereIsCommit(r reader, commit, only string) (*captainv1.WhereIsCommitResponse, error) {
	commit = strings.ToLower(strings.TrimSpace(commit))
	if len(commit) < minShort || strings.Trim(commit, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("commit %q: expected at least %d hex digits: %w", commit, minShort, ErrInvalid)
	}
	pipelines, err := r.Pipelines()
	if err != nil {
		return nil, err
	}
	if only != "" {
		pipelines = slices.DeleteFunc(pipelines, func(p *captainv1.Pipeline) bool { return p.GetSpec().GetName() != only })
		if len(pipelines) == 0 {
			return nil, fmt.Errorf("pipeline %q: %w", only, ErrNotFound)
		}
	}
	full := map[string]bool{}
	first := map[string]uint64{}
	releases := map[string][]*captainv1.Release{}
	for _, p := range pipelines {
		name := p.GetSpec().GetName()
		rels, err := r.Releases(name, 0, 0)
		if err != nil {
			return nil, err
		}
		releases[name] = rels
		for _, rel := range rels {
			for _, c := range releaseCommits(rel) {
				if strings.HasPrefix(strings.ToLower(c.GetSha()), commit) {
					full[strings.ToLower(c.GetSha())] = true
				}
			}
		}
	}
	switch len(full) {
	case 0:
		return nil, fmt.Errorf("commit %q is in no release: %w", commit, ErrNotFound)
	case 1:
	default:
		var shas []string
		for s := range full {
			shas = append(shas, s)
		}
		slices.Sort(shas)
		return nil, fmt.Errorf("commit %q matches %d commits (%s): give more digits: %w", commit, len(shas), strings.Join(shas, ", "), ErrAmbiguous)
	}
	var sha string
	for s := range full {
		sha = s
	}
	resp := &captainv1.WhereIsCommitResponse{Commit: sha, FirstRelease: map[string]uint64{}}
	for _, p := range pipelines {
		name := p.GetSpec().GetName()
		for _, rel := range releases[name] {
			if slices.ContainsFunc(releaseCommits(rel), func(c *captainv1.Commit) bool { return strings.EqualFold(c.GetSha(), sha) }) {
				if f := first[name]; f == 0 || rel.GetNumber() < f {
					first[name] = rel.GetNumber()
				}
			}
		}
		if first[name] == 0 {
			continue
		}
		resp.FirstRelease[name] = first[name]
		stages, err := r.Stages(name)
		if err != nil {
			return nil, err
		}
		byStage := map[string]*captainv1.StageState{}
		for _, s := range stages {
			byStage[s.GetStage()] = s
		}
		for _, st := range p.GetSpec().GetStages() {
			for _, env := range st.GetEnvironments() {
				loc, err := locate(r, name, st.GetName(), env.GetName(), byStage[st.GetName()], first[name])
				if err != nil {
					return nil, err
				}
				resp.Locations = append(resp.Locations, loc)
			}
		}
	}
	return resp, nil
}

// locate answers for one environment. The commit arrived with the oldest deployment of the
// current unbroken run of deployments at or above the first release containing it.
func locate(r reader, pipeline, stage, env string, s *captainv1.StageState, first uint64) (*captainv1.CommitLocation, error) {
	loc := &captainv1.CommitLocation{Pipeline: pipeline, Stage: stage, Environment: env, Presence: captainv1.CommitPresence_COMMIT_PRESENCE_NOT_YET}
	deps, err := r.Deployments(pipeline, env)
	if err != nil {
		return nil, err
	}
	newestFirst(deps)
	var current uint64
	for _, e := range s.GetEnvironments() {
		if e.GetEnvironment() == env {
			current = e.GetCurrentRelease()
		}
	}
	loc.Release = current
	if current >= first {
		// Newest first: the deployments at or above first before the first one below it form the
		// run that still holds the commit; its oldest brought it.
		loc.Presence = captainv1.CommitPresence_COMMIT_PRESENCE_CONTAINED
		for _, d := range deps {
			if d.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED {
				continue
			}
			if d.GetRelease() < first {
				break
			}
			loc.Since, loc.DeploymentId = d.GetFinishedAt(), d.GetId()
		}
		return loc, nil
	}
	// Not there now; if any deployment ever put a release with the commit on hosts here, it was
	// rolled back.
	for _, d := range deps {
		if d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY && d.GetRelease() >= first &&
			d.GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING && slices.ContainsFunc(d.GetHosts(), func(h *captainv1.HostResult) bool {
			return h.GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING && h.GetState() != captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED
		}) {
			loc.Presence, loc.DeploymentId = captainv1.CommitPresence_COMMIT_PRESENCE_ROLLED_BACK, d.GetId()
			break
		}
	}
	return loc, nil
}

// Status assembles the live picture of a pipeline: every stage in spec order (a stage the engine
// has not written yet shows idle), with the states of the alarms it watches.
func Status(r reader, p *captainv1.Pipeline, index uint64) (*captainv1.GetStatusResponse, error) {
	name := p.GetSpec().GetName()
	stages, err := r.Stages(name)
	if err != nil {
		return nil, err
	}
	rows := map[string]*captainv1.StageState{}
	for _, s := range stages {
		rows[s.GetStage()] = s
	}
	rels, err := r.Releases(name, 0, 1)
	if err != nil {
		return nil, err
	}
	alarms, err := r.Alarms()
	if err != nil {
		return nil, err
	}
	byName := map[string]*captainv1.Alarm{}
	for _, a := range alarms {
		byName[a.GetName()] = a
	}
	resp := &captainv1.GetStatusResponse{Pipeline: p, Index: index}
	if len(rels) > 0 {
		resp.LatestRelease = rels[0].GetNumber()
	}
	for _, st := range p.GetSpec().GetStages() {
		row := rows[st.GetName()]
		if row != nil {
			row = proto.CloneOf(row) // rows in the store are shared and immutable
		} else {
			row = &captainv1.StageState{Pipeline: name, Stage: st.GetName(), Wave: st.GetWave(), Phase: captainv1.StagePhase_STAGE_PHASE_IDLE}
			for _, e := range st.GetEnvironments() {
				row.Environments = append(row.Environments, &captainv1.EnvironmentState{Environment: e.GetName()})
			}
		}
		row.Alarms = watchedAlarms(st, name, byName)
		resp.Stages = append(resp.Stages, row)
	}
	return resp, nil
}

func watchedAlarms(st *captainv1.Stage, pipeline string, byName map[string]*captainv1.Alarm) []*captainv1.Alarm {
	var names []string
	add := func(n, env string) {
		if n == pipelinespec.HostHealthAlarm {
			n = engine.HostHealthAlarmName(pipeline, env)
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for _, env := range st.GetEnvironments() {
		for _, n := range st.GetApproval().GetAlarms().GetNames() {
			add(n, env.GetName())
		}
		for _, n := range env.GetAlarms() {
			add(n, env.GetName())
		}
	}
	var out []*captainv1.Alarm
	for _, n := range names {
		if a := byName[n]; a != nil {
			out = append(out, a)
		} else if strings.HasPrefix(n, pipelinespec.HostHealthAlarm+"/") {
			continue // judged from the environment's hosts, shown through their health counts
		} else {
			out = append(out, &captainv1.Alarm{Name: n, State: captainv1.AlarmState_ALARM_STATE_INSUFFICIENT_DATA, Reason: "never reported"})
		}
	}
	return out
}
