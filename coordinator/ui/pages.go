package ui

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// consistent reads through the leader, so a page shows every acknowledged write and the
// leader's liveness; when no leader answers it falls back to this node's copy.
func consistent[Req, Res any](ctx context.Context, call func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
	req *Req, read **captainv1.ReadOptions) (*Res, error) {
	*read = &captainv1.ReadOptions{Consistent: true}
	res, err := call(ctx, connect.NewRequest(req))
	if err == nil {
		return res.Msg, nil
	}
	if connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
		return nil, err
	}
	*read = nil
	stale, serr := call(ctx, connect.NewRequest(req))
	if serr != nil {
		return nil, err
	}
	return stale.Msg, nil
}

type pipelineRow struct {
	Name, Description string
	Version           uint64
	Stages            int
}

func (h *Handler) index(ctx context.Context, _ *http.Request, s *session, v *view) (string, error) {
	res, err := s.c.pipeline.ListPipelines(ctx, connect.NewRequest(&captainv1.ListPipelinesRequest{}))
	if err != nil {
		return "", err
	}
	var rows []pipelineRow
	for _, p := range res.Msg.GetPipelines() {
		rows = append(rows, pipelineRow{Name: p.GetSpec().GetName(), Description: p.GetSpec().GetDescription(), Version: p.GetVersion(), Stages: len(p.GetSpec().GetStages())})
	}
	v.Title, v.Data = "Pipelines", rows
	return "index", nil
}

func (h *Handler) status(ctx context.Context, s *session, pipeline string) (*captainv1.GetStatusResponse, error) {
	req := &captainv1.GetStatusRequest{Pipeline: pipeline}
	return consistent(ctx, s.c.deploy.GetStatus, req, &req.Read)
}

func (h *Handler) pipeline(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	st, err := h.status(ctx, s, r.PathValue("pipeline"))
	if err != nil {
		return "", err
	}
	b := newBoard(st, h.now(), v.CanAct(), v.CSRF)
	v.Title, v.Data = "Pipeline "+b.Pipeline, b
	return "pipeline", nil
}

// live answers the pipeline page's poll with the board alone, once the state moved past the
// index the page shows or after liveWait. The page stops asking when it is closed.
func (h *Handler) live(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), liveWait+callTimeout)
	defer cancel()
	s, err := h.sessionFrom(ctx, r)
	if err != nil || s == nil {
		// The page reloads itself into the sign-in page on 401.
		http.Error(w, "not signed in", http.StatusUnauthorized)
		return
	}
	index, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	req := &captainv1.GetStatusRequest{Pipeline: r.PathValue("pipeline")}
	if index > 0 {
		req.Read = &captainv1.ReadOptions{MinIndex: index, MaxWait: durationpb.New(liveWait)}
	}
	res, err := s.c.deploy.GetStatus(ctx, connect.NewRequest(req))
	if err != nil {
		if r.Context().Err() == nil {
			http.Error(w, "status: "+err.Error(), http.StatusBadGateway)
		}
		return
	}
	b := newBoard(res.Msg, h.now(), s.CanAct(), CSRFToken(s.token))
	t := h.pages["board-fragment"]
	var out strings.Builder
	if err := t.ExecuteTemplate(&out, "board", b); err != nil {
		h.log.Error("ui: render board", "err", err)
		http.Error(w, "render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Captain-Index", strconv.FormatUint(res.Msg.GetIndex(), 10))
	_, _ = w.Write([]byte(out.String()))
}

type stagePage struct {
	Stage  stageView
	CanAct bool
	CSRF   string
}

func (h *Handler) stage(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	st, err := h.status(ctx, s, r.PathValue("pipeline"))
	if err != nil {
		return "", err
	}
	name := r.PathValue("stage")
	for _, sg := range st.GetStages() {
		if sg.GetStage() == name {
			v.Title = "Stage " + name
			sv := newStage(r.PathValue("pipeline"), sg, h.now())
			sv.CanAct, sv.CSRF = v.CanAct(), v.CSRF
			v.Data = stagePage{Stage: sv, CanAct: v.CanAct(), CSRF: v.CSRF}
			v.Flash = doneNote(r.URL.Query())
			return "stage", nil
		}
	}
	return "", connect.NewError(connect.CodeNotFound, errors.New("pipeline "+r.PathValue("pipeline")+" has no stage "+name))
}

type deploymentRow struct {
	ID, Kind, Trigger, TriggerReason, State, StateClass, Reason string
	Stage, Env                                                  string
	Release, From                                               uint64
	Started, Finished                                           when
	Commits                                                     []*captainv1.Commit
}

type hostRow struct {
	ID, Hostname, Liveness, LivenessClass, Health, HealthClass, Target, LastResult string
	Heartbeat                                                                      when
	Release                                                                        uint64
	Checks                                                                         []outputView
}

type outputView struct {
	Name, Output string
	Passed       bool
	Exit         int32
	Truncated    bool
	At           when
}

type envPage struct {
	Pipeline, Env string
	Deployments   []deploymentRow
	Hosts         []hostRow
	CanAct        bool
}

func (h *Handler) environment(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	pipeline, env := r.PathValue("pipeline"), r.PathValue("env")
	now := h.now()
	dreq := &captainv1.ListDeploymentsRequest{Pipeline: pipeline, Environment: env, Limit: 30}
	deps, err := consistent(ctx, s.c.deploy.ListDeployments, dreq, &dreq.Read)
	if err != nil {
		return "", err
	}
	hreq := &captainv1.ListHostsRequest{Pipeline: pipeline, Environment: env}
	hosts, err := consistent(ctx, s.c.host.ListHosts, hreq, &hreq.Read)
	if err != nil {
		return "", err
	}
	p := envPage{Pipeline: pipeline, Env: env, CanAct: v.CanAct()}
	for _, d := range deps.GetDeployments() {
		p.Deployments = append(p.Deployments, newDeploymentRow(d, deps.GetCommitsAdded()[d.GetId()].GetCommits(), now))
	}
	for _, host := range hosts.GetHosts() {
		row := hostRow{ID: host.GetId(), Hostname: host.GetHostname(), Heartbeat: at(host.GetLastHeartbeatAt(), now)}
		row.Liveness, row.LivenessClass = "unknown", "muted"
		switch host.GetLiveness() {
		case captainv1.Liveness_LIVENESS_UP:
			row.Liveness, row.LivenessClass = "up", "good"
		case captainv1.Liveness_LIVENESS_DOWN:
			row.Liveness, row.LivenessClass = "down", "bad"
		}
		for _, app := range host.GetApps() {
			if app.GetPipeline() != pipeline {
				continue
			}
			row.Release, row.Target, row.LastResult = app.GetCurrentRelease(), app.GetCurrentTarget(), app.GetLastResult()
			row.Health, row.HealthClass = "unknown", "muted"
			switch app.GetHealth() {
			case captainv1.HealthState_HEALTH_STATE_HEALTHY:
				row.Health, row.HealthClass = "healthy", "good"
			case captainv1.HealthState_HEALTH_STATE_UNHEALTHY:
				row.Health, row.HealthClass = "unhealthy", "bad"
			}
			row.Checks = outputs(app.GetHealthChecks(), now)
		}
		p.Hosts = append(p.Hosts, row)
	}
	v.Title, v.Data = "Environment "+env, p
	return "environment", nil
}

func newDeploymentRow(d *captainv1.Deployment, commits []*captainv1.Commit, now time.Time) deploymentRow {
	started := d.GetStartedAt()
	if started == nil {
		started = d.GetCreatedAt()
	}
	row := deploymentRow{
		ID: d.GetId(), Kind: enumWord(d.GetKind(), "DEPLOYMENT_KIND_"), Stage: d.GetStage(), Env: d.GetEnvironment(), Release: d.GetRelease(), From: d.GetFromRelease(),
		Trigger: triggerWord(d.GetTrigger()), TriggerReason: d.GetTrigger().GetReason(), Reason: d.GetReason(),
		Started: at(started, now), Finished: at(d.GetFinishedAt(), now), Commits: commits,
	}
	row.State, row.StateClass = deploymentState(d.GetState())
	return row
}

func deploymentState(s captainv1.DeploymentState) (string, string) {
	switch s {
	case captainv1.DeploymentState_DEPLOYMENT_STATE_PENDING:
		return "pending", "busy"
	case captainv1.DeploymentState_DEPLOYMENT_STATE_IN_PROGRESS:
		return "in progress", "busy"
	case captainv1.DeploymentState_DEPLOYMENT_STATE_SUCCEEDED:
		return "succeeded", "good"
	case captainv1.DeploymentState_DEPLOYMENT_STATE_FAILED:
		return "failed", "bad"
	case captainv1.DeploymentState_DEPLOYMENT_STATE_CANCELLED:
		return "cancelled", "bad"
	}
	return "-", "muted"
}

// triggerWord names who started a deployment, as `captain history` does.
func triggerWord(t *captainv1.Trigger) string {
	switch t.GetKind() {
	case captainv1.TriggerKind_TRIGGER_KIND_PIPELINE:
		return "pipeline"
	case captainv1.TriggerKind_TRIGGER_KIND_OPERATOR:
		return "operator " + orDash(t.GetActor())
	case captainv1.TriggerKind_TRIGGER_KIND_AUTOMATIC:
		if t.GetAlarm() != "" {
			return "automatic: " + t.GetAlarm()
		}
		return "automatic"
	}
	return "-"
}

func outputs(in []*captainv1.StepOutput, now time.Time) []outputView {
	var out []outputView
	for _, o := range in {
		out = append(out, outputView{Name: o.GetName(), Output: o.GetOutput(), Passed: o.GetPassed(), Exit: o.GetExitCode(), Truncated: o.GetTruncated(), At: at(o.GetAt(), now)})
	}
	return out
}

type deploymentPage struct {
	Row         deploymentRow
	Pipeline    string
	Stage, Env  string
	Batch       string
	Deadline    when
	HasDeadline bool
	Hosts       []hostResultView
}

type hostResultView struct {
	ID, State, StateClass, Message, ReleaseDir string
	Batch                                      uint32
	Started, Finished                          when
	Outputs                                    []outputView
}

func (h *Handler) deployment(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	req := &captainv1.GetDeploymentRequest{Id: r.PathValue("id")}
	res, err := consistent(ctx, s.c.deploy.GetDeployment, req, &req.Read)
	if err != nil {
		return "", err
	}
	now := h.now()
	d := res.GetDeployment()
	p := deploymentPage{Row: newDeploymentRow(d, nil, now), Pipeline: d.GetPipeline(), Stage: d.GetStage(), Env: d.GetEnvironment(),
		Deadline: at(d.GetDeadline(), now), HasDeadline: d.GetFinishedAt() == nil && d.GetDeadline() != nil}
	if bp := d.GetBatch(); bp != nil {
		p.Batch = "max unavailable " + orDash(bp.GetMaxUnavailable()) + ", min healthy " + orDash(bp.GetMinHealthy()) + ", batch " + strconv.FormatUint(uint64(d.GetCurrentBatch()), 10)
	}
	for _, hr := range d.GetHosts() {
		hv := hostResultView{ID: hr.GetHostId(), State: enumWord(hr.GetState(), "HOST_DEPLOY_STATE_"), Message: hr.GetMessage(), ReleaseDir: hr.GetReleaseDir(),
			Batch: hr.GetBatch(), Started: at(hr.GetStartedAt(), now), Finished: at(hr.GetFinishedAt(), now), Outputs: outputs(hr.GetOutputs(), now)}
		switch hr.GetState() {
		case captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY:
			hv.StateClass = "good"
		case captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED:
			hv.StateClass = "bad"
		case captainv1.HostDeployState_HOST_DEPLOY_STATE_PENDING, captainv1.HostDeployState_HOST_DEPLOY_STATE_SKIPPED, captainv1.HostDeployState_HOST_DEPLOY_STATE_UNSPECIFIED:
			hv.StateClass = "muted"
		default:
			hv.StateClass = "busy"
		}
		p.Hosts = append(p.Hosts, hv)
	}
	v.Pipeline = d.GetPipeline()
	v.Title, v.Data = "Deployment "+d.GetId(), p
	return "deployment", nil
}

type releaseRow struct {
	Number    uint64
	Head      string
	Message   string
	CreatedBy string
	Created   when
	Commits   int
}

func (h *Handler) releases(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	req := &captainv1.ListReleasesRequest{Pipeline: r.PathValue("pipeline"), Limit: 50}
	res, err := consistent(ctx, s.c.release.ListReleases, req, &req.Read)
	if err != nil {
		return "", err
	}
	now := h.now()
	var rows []releaseRow
	for _, rl := range res.GetReleases() {
		row := releaseRow{Number: rl.GetNumber(), Head: rl.GetHeadCommit(), CreatedBy: rl.GetCreatedBy(), Created: at(rl.GetCreatedAt(), now), Commits: len(rl.GetCommits())}
		if len(rl.GetCommits()) > 0 {
			row.Message = rl.GetCommits()[0].GetMessage()
		}
		rows = append(rows, row)
	}
	v.Title, v.Data = "Releases of "+r.PathValue("pipeline"), rows
	return "releases", nil
}

type releasePage struct {
	Pipeline string
	Release  *captainv1.Release
	Created  when
	Stages   []releaseStageView
	DiffWith uint64
	Diff     *diffView
}

type releaseStageView struct {
	Stage, Status, Class, Detail string
	Since                        when
	Running                      []string
}

type diffView struct {
	From, To         uint64
	Commits          []*captainv1.Commit
	Files            []fileView
	FilesUnavailable string
}

type fileView struct {
	Path, Change, Detail string
	FromSize, ToSize     int64
}

func (h *Handler) release(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	pipeline := r.PathValue("pipeline")
	n, err := strconv.ParseUint(r.PathValue("number"), 10, 64)
	if err != nil || n == 0 {
		return "", badInput("release %q is not a release number", r.PathValue("number"))
	}
	req := &captainv1.GetReleaseRequest{Pipeline: pipeline, Number: n}
	res, err := consistent(ctx, s.c.release.GetRelease, req, &req.Read)
	if err != nil {
		return "", err
	}
	now := h.now()
	p := releasePage{Pipeline: pipeline, Release: res.GetRelease(), Created: at(res.GetRelease().GetCreatedAt(), now)}
	for _, sg := range res.GetStages() {
		rv := releaseStageView{Stage: sg.GetStage(), Status: enumWord(sg.GetStatus(), "RELEASE_STAGE_STATUS_"), Detail: sg.GetDetail(),
			Since: at(sg.GetSince(), now), Running: sg.GetEnvironmentsRunning()}
		switch sg.GetStatus() {
		case captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED:
			rv.Class = "good"
		case captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_FAILED, captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_BAD:
			rv.Class = "bad"
		case captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_IN_PROGRESS, captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_WAITING:
			rv.Class = "busy"
		case captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_UNSPECIFIED:
			rv.Status, rv.Class = "not reached", "muted"
		default:
			rv.Class = "muted"
		}
		p.Stages = append(p.Stages, rv)
	}
	if q := r.URL.Query().Get("diff"); q != "" {
		other, err := strconv.ParseUint(strings.TrimPrefix(q, "#"), 10, 64)
		if err != nil || other == 0 {
			return "", badInput("compare with %q: not a release number", q)
		}
		from, to := min(other, n), max(other, n)
		d, err := s.c.release.DiffReleases(ctx, connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: pipeline, From: from, To: to}))
		if err != nil {
			return "", err
		}
		dv := &diffView{From: from, To: to, Commits: d.Msg.GetCommits(), FilesUnavailable: d.Msg.GetFilesUnavailable()}
		for _, f := range d.Msg.GetFiles() {
			dv.Files = append(dv.Files, fileView{Path: f.GetPath(), Change: enumWord(f.GetKind(), "FILE_CHANGE_KIND_"), Detail: f.GetDetail(), FromSize: f.GetFromSize(), ToSize: f.GetToSize()})
		}
		p.DiffWith, p.Diff = other, dv
	} else if n > 1 {
		p.DiffWith = n - 1
	}
	v.Title, v.Data = "Release "+rel(n)+" of "+pipeline, p
	return "release", nil
}

type commitPage struct {
	Query     string
	Commit    string
	First     []string
	Pipelines []commitPipeline
	Missing   string
}

type commitPipeline struct {
	Name   string
	Stages []commitStage
}

type commitStage struct {
	Name  string
	Class string
	Envs  []commitEnv
}

type commitEnv struct {
	Name, Presence, Class, DeploymentID string
	Since                               when
	Release                             uint64
}

// commit answers `captain where`: per environment whether it contains a commit and since
// when, drawn as each pipeline's row of stages.
func (h *Handler) commit(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	q := strings.TrimSpace(r.URL.Query().Get("sha"))
	p := commitPage{Query: q}
	v.Title, v.Data = "Where is a commit", &p
	if q == "" {
		return "commit", nil
	}
	res, err := s.c.deploy.WhereIsCommit(ctx, connect.NewRequest(&captainv1.WhereIsCommitRequest{Commit: q, Pipeline: r.URL.Query().Get("pipeline")}))
	switch connect.CodeOf(err) {
	case connect.CodeNotFound, connect.CodeInvalidArgument:
		var ce *connect.Error
		errors.As(err, &ce)
		p.Missing = ce.Message()
		return "commit", nil
	}
	if err != nil {
		return "", err
	}
	now := h.now()
	p.Commit = res.Msg.GetCommit()
	for name, n := range res.Msg.GetFirstRelease() {
		p.First = append(p.First, name+" "+rel(n))
	}
	slices.Sort(p.First)
	for _, l := range res.Msg.GetLocations() {
		if len(p.Pipelines) == 0 || p.Pipelines[len(p.Pipelines)-1].Name != l.GetPipeline() {
			p.Pipelines = append(p.Pipelines, commitPipeline{Name: l.GetPipeline()})
		}
		cp := &p.Pipelines[len(p.Pipelines)-1]
		if len(cp.Stages) == 0 || cp.Stages[len(cp.Stages)-1].Name != l.GetStage() {
			cp.Stages = append(cp.Stages, commitStage{Name: l.GetStage()})
		}
		cs := &cp.Stages[len(cp.Stages)-1]
		e := commitEnv{Name: l.GetEnvironment(), Release: l.GetRelease(), DeploymentID: l.GetDeploymentId()}
		switch l.GetPresence() {
		case captainv1.CommitPresence_COMMIT_PRESENCE_CONTAINED:
			e.Presence, e.Class, e.Since = "contains", "contained", at(l.GetSince(), now)
		case captainv1.CommitPresence_COMMIT_PRESENCE_ROLLED_BACK:
			e.Presence, e.Class, e.Since = "rolled back", "rolled-back", at(l.GetSince(), now)
		default:
			e.Presence, e.Class, e.Since = "not yet", "not-yet", when{Rel: "-"}
		}
		cs.Envs = append(cs.Envs, e)
	}
	// A stage is coloured by its environments: rolled back wins, then not yet, else contained.
	for i := range p.Pipelines {
		for j := range p.Pipelines[i].Stages {
			cs := &p.Pipelines[i].Stages[j]
			cs.Class = "contained"
			for _, e := range cs.Envs {
				if e.Class == "rolled-back" {
					cs.Class = "rolled-back"
					break
				}
				if e.Class == "not-yet" {
					cs.Class = "not-yet"
				}
			}
		}
	}
	return "commit", nil
}

// rollbackTarget reads what to roll back from a form or query: stage=, env= (repeated) or
// all=1, plus to= and force=.
func rollbackTarget(pipeline string, form url.Values) (*captainv1.RollbackTarget, error) {
	t := &captainv1.RollbackTarget{Pipeline: pipeline, AllStages: form.Get("all") == "1", Force: form.Get("force") == "1"}
	for _, s := range form["stage"] {
		if s = strings.TrimSpace(s); s != "" {
			t.Stages = append(t.Stages, s)
		}
	}
	for _, e := range form["env"] {
		if e = strings.TrimSpace(e); e != "" {
			t.Environments = append(t.Environments, e)
		}
	}
	chosen := 0
	for _, b := range []bool{len(t.Stages) > 0, len(t.Environments) > 0, t.AllStages} {
		if b {
			chosen++
		}
	}
	if chosen != 1 {
		return nil, badInput("say what to roll back: stages, environments, or the whole pipeline (exactly one)")
	}
	if to := strings.TrimPrefix(strings.TrimSpace(form.Get("to")), "#"); to != "" {
		n, err := strconv.ParseUint(to, 10, 64)
		if err != nil {
			return nil, badInput("release to return to: %q is not a release number", to)
		}
		t.ToRelease = n
	}
	return t, nil
}

// targetQuery writes a target back as form values for the next step.
func targetQuery(t *captainv1.RollbackTarget) url.Values {
	q := url.Values{}
	for _, s := range t.GetStages() {
		q.Add("stage", s)
	}
	for _, e := range t.GetEnvironments() {
		q.Add("env", e)
	}
	if t.GetAllStages() {
		q.Set("all", "1")
	}
	if t.GetToRelease() != 0 {
		q.Set("to", strconv.FormatUint(t.GetToRelease(), 10))
	}
	if t.GetForce() {
		q.Set("force", "1")
	}
	return q
}

type rollbackFormPage struct {
	Pipeline string
	What     string
	Hidden   []hiddenField
	Reason   string
}

type hiddenField struct{ Name, Value string }

func hidden(q url.Values) []hiddenField {
	var out []hiddenField
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range q[k] {
			out = append(out, hiddenField{Name: k, Value: v})
		}
	}
	return out
}

func targetWords(t *captainv1.RollbackTarget) string {
	switch {
	case t.GetAllStages():
		return "every stage of pipeline " + t.GetPipeline()
	case len(t.GetStages()) > 0:
		return "stage " + strings.Join(t.GetStages(), ", ")
	}
	return "environment " + strings.Join(t.GetEnvironments(), ", ")
}

func (h *Handler) rollbackForm(_ context.Context, r *http.Request, _ *session, v *view) (string, error) {
	q := r.URL.Query()
	t, err := rollbackTarget(r.PathValue("pipeline"), q)
	if err != nil {
		return "", err
	}
	scope := url.Values{}
	for _, k := range []string{"stage", "env", "all"} {
		if vals, ok := q[k]; ok {
			scope[k] = vals
		}
	}
	v.Title = "Roll back " + targetWords(t)
	v.Data = rollbackFormPage{Pipeline: t.GetPipeline(), What: targetWords(t), Hidden: hidden(scope), Reason: q.Get("reason")}
	return "rollback_form", nil
}

type rollbackPreviewPage struct {
	Pipeline, What, Reason, RequestID string
	Plan                              []planView
	FilesUnavailable                  string
	Moving                            int
	Hidden                            []hiddenField
	CanAct                            bool
	CSRF                              string
}

type planView struct {
	Stage, Env       string
	From, To         uint64
	AlreadyThere     bool
	Hosts            []string
	Cancels          string
	Skips            []string
	Commits          []*captainv1.Commit
	Files            []fileView
	FilesUnavailable bool
}

// rollbackPreview shows what `captain rollback --preview` shows: per environment the release
// it runs and the one it returns to, the hosts, the deployment it cancels, the skipped steps,
// the commits that go away and the artifact file changes; then asks for the confirm.
func (h *Handler) rollbackPreview(ctx context.Context, r *http.Request, s *session, v *view) (string, error) {
	q := r.URL.Query()
	t, err := rollbackTarget(r.PathValue("pipeline"), q)
	if err != nil {
		return "", err
	}
	pre, err := s.c.operator.PreviewRollback(ctx, connect.NewRequest(&captainv1.PreviewRollbackRequest{Target: t}))
	if err != nil {
		return "", err
	}
	plan := pre.Msg.GetPlan()
	if err := h.commitsGoingAway(ctx, s, t.GetPipeline(), plan); err != nil {
		return "", err
	}
	id, err := requestID("ui-rollback-")
	if err != nil {
		return "", err
	}
	p := rollbackPreviewPage{Pipeline: t.GetPipeline(), What: targetWords(t), Reason: strings.TrimSpace(q.Get("reason")), RequestID: id,
		FilesUnavailable: pre.Msg.GetFileChangesUnavailable(), Hidden: hidden(targetQuery(t)), CanAct: v.CanAct(), CSRF: v.CSRF}
	for _, e := range plan {
		pv := planView{Stage: e.GetStage(), Env: e.GetEnvironment(), From: e.GetFromRelease(), To: e.GetToRelease(), AlreadyThere: e.GetAlreadyThere(),
			Hosts: e.GetHosts(), Cancels: e.GetCancelsDeploymentId(), Skips: e.GetSkippedSteps(), Commits: e.GetCommitsRemoved(),
			FilesUnavailable: len(e.GetFileChanges()) == 0 && p.FilesUnavailable != ""}
		for _, f := range e.GetFileChanges() {
			pv.Files = append(pv.Files, fileView{Path: f.GetPath(), Change: planFileWord(f), Detail: f.GetDetail(), FromSize: f.GetFromSize(), ToSize: f.GetToSize()})
		}
		if !e.GetAlreadyThere() {
			p.Moving++
		}
		p.Plan = append(p.Plan, pv)
	}
	v.Title, v.Data = "Rollback preview", p
	return "rollback_preview", nil
}

// commitsGoingAway fills commits_removed (and missing file changes) from DiffReleases, the
// same source the CLI's preview uses, so the two never disagree.
func (h *Handler) commitsGoingAway(ctx context.Context, s *session, pipeline string, plan []*captainv1.EnvironmentRollback) error {
	type pair struct{ from, to uint64 }
	seen := map[pair]*captainv1.DiffReleasesResponse{}
	for _, e := range plan {
		if e.GetAlreadyThere() || e.GetFromRelease() == 0 || e.GetToRelease() == 0 || e.GetToRelease() >= e.GetFromRelease() {
			continue
		}
		p := pair{e.GetFromRelease(), e.GetToRelease()}
		d, ok := seen[p]
		if !ok {
			res, err := s.c.release.DiffReleases(ctx, connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: pipeline, From: e.GetToRelease(), To: e.GetFromRelease()}))
			if err != nil {
				return err
			}
			d = res.Msg
			seen[p] = d
		}
		e.CommitsRemoved = d.GetCommits()
		if len(e.GetFileChanges()) == 0 {
			e.FileChanges = towardTarget(d.GetFiles())
		}
	}
	return nil
}

// towardTarget turns a diff's file changes (older to newer) into the rollback's direction
// (running release to target): what the diff added, the rollback removes.
func towardTarget(files []*captainv1.FileChange) []*captainv1.FileChange {
	out := make([]*captainv1.FileChange, len(files))
	for i, f := range files {
		g := &captainv1.FileChange{Path: f.GetPath(), Kind: f.GetKind(), FromSize: f.GetToSize(), ToSize: f.GetFromSize(), Detail: f.GetDetail()}
		switch f.GetKind() {
		case captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED:
			g.Kind = captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED
		case captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED:
			g.Kind = captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED
		}
		out[i] = g
	}
	return out
}

func planFileWord(f *captainv1.FileChange) string {
	switch f.GetKind() {
	case captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED:
		return "restored"
	case captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED:
		return "removed"
	case captainv1.FileChangeKind_FILE_CHANGE_KIND_CHANGED:
		return "changed"
	}
	return "?"
}

type rollbackDonePage struct {
	Pipeline, RequestID string
	Deployments         []deploymentRow
	Envs                []string
	Stages              []string
}

func (h *Handler) rollback(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session, v *view) (string, error) {
	t, err := rollbackTarget(r.PathValue("pipeline"), r.PostForm)
	if err != nil {
		return "", err
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	id := r.PostFormValue("request_id")
	if !strings.HasPrefix(id, "ui-rollback-") {
		return "", badInput("the confirm form lacks its request ID; start again from the preview")
	}
	res, err := s.c.operator.Rollback(ctx, connect.NewRequest(&captainv1.RollbackRequest{Target: t, Reason: reason, RequestId: id}))
	if err != nil {
		return "", err
	}
	now := h.now()
	p := rollbackDonePage{Pipeline: t.GetPipeline(), RequestID: id}
	for _, d := range res.Msg.GetDeployments() {
		p.Deployments = append(p.Deployments, newDeploymentRow(d, nil, now))
		if !slices.Contains(p.Envs, d.GetEnvironment()) {
			p.Envs = append(p.Envs, d.GetEnvironment())
		}
		if !slices.Contains(p.Stages, d.GetStage()) {
			p.Stages = append(p.Stages, d.GetStage())
		}
	}
	h.log.Info("ui: rollback started", "pipeline", t.GetPipeline(), "request_id", id, "deployments", len(p.Deployments), "by", s.who.GetName())
	v.Title, v.Data = "Rollback started", p
	h.render(w, http.StatusOK, "rollback_done", v)
	return "", nil
}

func (h *Handler) promotions(ctx context.Context, _ http.ResponseWriter, r *http.Request, s *session, _ *view) (string, error) {
	pipeline, stage := r.PathValue("pipeline"), r.PostFormValue("stage")
	enabled := r.PostFormValue("enabled") == "1"
	dir := captainv1.PromotionDirection_PROMOTION_DIRECTION_BOTH
	switch r.PostFormValue("direction") {
	case "in":
		dir = captainv1.PromotionDirection_PROMOTION_DIRECTION_IN
	case "out":
		dir = captainv1.PromotionDirection_PROMOTION_DIRECTION_OUT
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	if !enabled && reason == "" {
		return "", badInput("say why promotions are disabled: the reason is shown to everyone waiting on the stage")
	}
	_, err := s.c.operator.SetPromotions(ctx, connect.NewRequest(&captainv1.SetPromotionsRequest{Pipeline: pipeline, Stage: stage, Direction: dir, Enabled: enabled, Reason: reason}))
	if err != nil {
		return "", err
	}
	done := "disabled"
	if enabled {
		done = "enabled"
	}
	return "/ui/p/" + url.PathEscape(pipeline) + "/s/" + url.PathEscape(stage) + "?done=" + done, nil
}

func (h *Handler) approve(ctx context.Context, _ http.ResponseWriter, r *http.Request, s *session, _ *view) (string, error) {
	pipeline, stage := r.PathValue("pipeline"), r.PostFormValue("stage")
	n, err := strconv.ParseUint(r.PostFormValue("release"), 10, 64)
	if err != nil || n == 0 {
		return "", badInput("approve which release? %q is not a release number", r.PostFormValue("release"))
	}
	_, err = s.c.operator.Approve(ctx, connect.NewRequest(&captainv1.ApproveRequest{Pipeline: pipeline, Stage: stage, Release: n, Comment: strings.TrimSpace(r.PostFormValue("comment"))}))
	if err != nil {
		return "", err
	}
	return "/ui/p/" + url.PathEscape(pipeline) + "/s/" + url.PathEscape(stage) + "?done=approved&release=" + strconv.FormatUint(n, 10), nil
}

// doneNote says what an action on the stage page did, from a fixed set: a link cannot make
// the page say anything else.
func doneNote(q url.Values) string {
	switch q.Get("done") {
	case "disabled":
		return "Promotions disabled."
	case "enabled":
		return "Promotions enabled: the newest waiting release goes through."
	case "approved":
		if n, err := strconv.ParseUint(q.Get("release"), 10, 64); err == nil {
			return "Approved release " + rel(n) + "."
		}
	}
	return ""
}
