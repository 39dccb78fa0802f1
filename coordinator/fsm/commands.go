package fsm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// apply runs one command inside tx and returns its main row and whether it created anything.
func apply(tx *state.Txn, cmd *raftv1.Command) (proto.Message, bool, error) {
	a := &applier{tx: tx, cmd: cmd}
	switch b := cmd.GetBody().(type) {
	case *raftv1.Command_ApplyPipeline:
		return a.applyPipeline(b.ApplyPipeline)
	case *raftv1.Command_CreateRelease:
		return a.createRelease(b.CreateRelease)
	case *raftv1.Command_CreateToken:
		return a.createToken(b.CreateToken)
	case *raftv1.Command_RevokeToken:
		return a.revokeToken(b.RevokeToken)
	case *raftv1.Command_RegisterHost:
		return a.registerHost(b.RegisterHost)
	case *raftv1.Command_SetLiveness:
		return a.setLiveness(b.SetLiveness)
	case *raftv1.Command_HostReports:
		return a.hostReports(b.HostReports)
	case *raftv1.Command_SetAlarmState:
		return a.setAlarmState(b.SetAlarmState)
	case *raftv1.Command_EngineUpdate:
		return a.engineUpdate(b.EngineUpdate)
	case *raftv1.Command_SetBlock:
		return a.setBlock(b.SetBlock)
	case *raftv1.Command_Approve:
		return a.approve(b.Approve)
	case *raftv1.Command_RemoveHost:
		return a.removeHost(b.RemoveHost)
	case *raftv1.Command_StartRollback:
		return a.startRollback(b.StartRollback)
	case *raftv1.Command_SetMember:
		return a.setMember(b.SetMember)
	case nil:
		return nil, false, fmt.Errorf("command without a body: %w", ErrInvalid)
	default:
		// An unknown body means a newer leader wrote an entry this binary cannot apply; going
		// on would diverge from replicas that can.
		panic(fmt.Sprintf("fsm: command %T not known to this captaind: upgrade it", b))
	}
}

type applier struct {
	tx  *state.Txn
	cmd *raftv1.Command
}

func (a *applier) at() *timestamppb.Timestamp { return a.cmd.GetAt() }

func (a *applier) audit(action, target string, details map[string]string) error {
	return a.tx.AddAudit(&captainv1.AuditEvent{
		At:        a.at(),
		Actor:     a.cmd.GetActor(),
		Action:    action,
		Target:    target,
		Reason:    a.cmd.GetReason(),
		RequestId: a.cmd.GetRequestId(),
		Details:   details,
	})
}

func (a *applier) remember(result string) error {
	if a.cmd.GetRequestId() == "" {
		return nil
	}
	return a.tx.PutRequest(&raftv1.RequestRecord{RequestId: a.cmd.GetRequestId(), Result: result, Index: a.tx.Index()})
}

// seenRequest reports whether the command's request ID was already applied.
func (a *applier) seenRequest() (bool, error) {
	if a.cmd.GetRequestId() == "" {
		return false, nil
	}
	_, err := a.tx.Request(a.cmd.GetRequestId())
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, state.ErrNotFound):
		return false, nil
	default:
		return false, err
	}
}

func (a *applier) applyPipeline(c *raftv1.ApplyPipeline) (proto.Message, bool, error) {
	name := c.GetSpec().GetName()
	if name == "" {
		return nil, false, fmt.Errorf("apply_pipeline without a spec name: %w", ErrInvalid)
	}
	cur, err := a.tx.Pipeline(name, 0)
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return nil, false, err
	}
	if cur != nil {
		seen, err := a.seenRequest()
		if err != nil {
			return nil, false, err
		}
		if seen || proto.Equal(cur.GetSpec(), c.GetSpec()) {
			return cur, false, nil
		}
	}
	p := &captainv1.Pipeline{
		Spec:      c.GetSpec(),
		Version:   cur.GetVersion() + 1,
		AppliedBy: a.cmd.GetActor(),
		AppliedAt: a.at(),
		Index:     a.tx.Index(),
	}
	if err := a.tx.PutPipeline(p); err != nil {
		return nil, false, err
	}
	target := "pipeline/" + name
	if err := a.remember(fmt.Sprintf("%s/version/%d", target, p.Version)); err != nil {
		return nil, false, err
	}
	return p, true, a.audit("pipeline.apply", target, map[string]string{"version": strconv.FormatUint(p.Version, 10)})
}

func (a *applier) createRelease(c *raftv1.CreateRelease) (proto.Message, bool, error) {
	if id := a.cmd.GetRequestId(); id != "" {
		rel, err := a.tx.ReleaseByRequest(id)
		if err == nil {
			return rel, false, nil
		}
		if !errors.Is(err, state.ErrNotFound) {
			return nil, false, err
		}
	}
	p, err := a.tx.Pipeline(c.GetPipeline(), 0)
	if err != nil {
		return nil, false, err
	}
	last, err := a.tx.LastReleaseNumber(c.GetPipeline())
	if err != nil {
		return nil, false, err
	}
	commits := c.GetCommits()
	if c.GetHeadCommit() != "" && (len(commits) == 0 || commits[0].GetSha() != c.GetHeadCommit()) {
		found := false
		for _, cm := range commits {
			found = found || cm.GetSha() == c.GetHeadCommit()
		}
		if !found {
			commits = append([]*captainv1.Commit{{Sha: c.GetHeadCommit()}}, commits...)
		}
	}
	rel := &captainv1.Release{
		Pipeline:        c.GetPipeline(),
		Number:          last + 1,
		Artifact:        c.GetArtifact(),
		HeadCommit:      c.GetHeadCommit(),
		Commits:         commits,
		CreatedBy:       a.cmd.GetActor(),
		CreatedAt:       a.at(),
		RequestId:       a.cmd.GetRequestId(),
		PipelineVersion: p.GetVersion(),
		Index:           a.tx.Index(),
	}
	if err := a.tx.PutRelease(rel); err != nil {
		return nil, false, err
	}
	target := fmt.Sprintf("pipeline/%s/release/%d", rel.Pipeline, rel.Number)
	if err := a.remember(target); err != nil {
		return nil, false, err
	}
	return rel, true, a.audit("release.create", target, map[string]string{
		"head_commit": rel.HeadCommit, "artifact_sha256": rel.GetArtifact().GetSha256(),
	})
}

func (a *applier) createToken(c *raftv1.CreateToken) (proto.Message, bool, error) {
	t := c.GetToken()
	if t.GetId() == "" || len(c.GetSecretHash()) == 0 {
		return nil, false, fmt.Errorf("create_token needs an ID and a secret hash: %w", ErrInvalid)
	}
	if _, err := a.tx.Token(t.GetId()); err == nil {
		return nil, false, fmt.Errorf("token %q: %w", t.GetId(), ErrAlreadyExists)
	}
	if _, err := a.tx.TokenBySecretHash(c.GetSecretHash()); err == nil {
		return nil, false, fmt.Errorf("a token with this secret: %w", ErrAlreadyExists)
	}
	if err := a.tx.PutToken(&raftv1.StoredToken{Token: t, SecretHash: c.GetSecretHash(), Index: a.tx.Index()}); err != nil {
		return nil, false, err
	}
	return t, true, a.audit("token.create", "token/"+t.GetId(), map[string]string{"name": t.GetName(), "role": t.GetRole().String()})
}

func (a *applier) revokeToken(c *raftv1.RevokeToken) (proto.Message, bool, error) {
	st, err := a.tx.Token(c.GetId())
	if err != nil {
		return nil, false, err
	}
	if st.GetToken().GetRevokedAt() != nil {
		return st.GetToken(), false, nil
	}
	n := proto.CloneOf(st)
	n.Token.RevokedAt = a.at()
	n.Index = a.tx.Index()
	if err := a.tx.PutToken(n); err != nil {
		return nil, false, err
	}
	return n.Token, true, a.audit("token.revoke", "token/"+c.GetId(), map[string]string{"name": n.Token.GetName()})
}

func (a *applier) registerHost(c *raftv1.RegisterHost) (proto.Message, bool, error) {
	h := proto.CloneOf(c.GetHost())
	if h.GetId() == "" {
		return nil, false, fmt.Errorf("register_host without a host ID: %w", ErrInvalid)
	}
	row := &raftv1.StoredHost{Host: h, SecretHash: c.GetSecretHash()}
	if old, err := a.tx.Host(h.GetId()); err == nil {
		// Re-registration keeps what the host reported so far.
		row.AckedSeq = old.GetAckedSeq()
		h.Apps = old.GetHost().GetApps()
		h.RegisteredAt = old.GetHost().GetRegisteredAt()
	}
	if h.RegisteredAt == nil {
		h.RegisteredAt = a.at()
	}
	if h.Liveness != captainv1.Liveness_LIVENESS_UP {
		h.Liveness, h.LivenessSince = captainv1.Liveness_LIVENESS_UP, a.at()
	}
	h.Index = a.tx.Index()
	if err := a.tx.PutHost(row); err != nil {
		return nil, false, err
	}
	return h, true, a.audit("host.register", "host/"+h.GetId(), map[string]string{"hostname": h.GetHostname()})
}

func (a *applier) setLiveness(c *raftv1.SetLiveness) (proto.Message, bool, error) {
	changed := false
	for _, ch := range c.GetChanges() {
		old, err := a.tx.Host(ch.GetHostId())
		if errors.Is(err, state.ErrNotFound) {
			continue // removed meanwhile; nothing to change
		}
		if err != nil {
			return nil, false, err
		}
		if old.GetHost().GetLiveness() == ch.GetLiveness() {
			continue
		}
		n := proto.CloneOf(old)
		n.Host.Liveness, n.Host.LivenessSince, n.Host.Index = ch.GetLiveness(), a.at(), a.tx.Index()
		if err := a.tx.PutHost(n); err != nil {
			return nil, false, err
		}
		if err := a.audit("host.liveness", "host/"+ch.GetHostId(), map[string]string{"liveness": ch.GetLiveness().String()}); err != nil {
			return nil, false, err
		}
		changed = true
	}
	return nil, changed, nil
}

// hostReports stores agents' status transitions. They are not audited: they are frequent
// machine reports, not actions, and deployments keep their outcome.
func (a *applier) hostReports(c *raftv1.HostReports) (proto.Message, bool, error) {
	changed := false
	for _, r := range c.GetReports() {
		old, err := a.tx.Host(r.GetHostId())
		if errors.Is(err, state.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		n := proto.CloneOf(old)
		for _, ev := range r.GetEvents() {
			if ev.GetSeq() <= n.GetAckedSeq() {
				continue
			}
			n.AckedSeq = ev.GetSeq()
			changed = true
			if app := ev.GetApp(); app != nil {
				setHostApp(n.Host, app)
			}
			if err := a.recordHostResult(r.GetHostId(), ev); err != nil {
				return nil, false, err
			}
			if err := a.recordTestResult(r.GetHostId(), ev.GetTestResult()); err != nil {
				return nil, false, err
			}
		}
		n.Host.Index = a.tx.Index()
		if err := a.tx.PutHost(n); err != nil {
			return nil, false, err
		}
	}
	return nil, changed, nil
}

func setHostApp(h *captainv1.Host, app *captainv1.HostApp) {
	for i, cur := range h.Apps {
		if cur.GetPipeline() == app.GetPipeline() {
			h.Apps[i] = app
			return
		}
	}
	h.Apps = append(h.Apps, app)
}

// recordHostResult copies an event into the host's result on its deployment, if both exist.
func (a *applier) recordHostResult(hostID string, ev *captainv1.HostEvent) error {
	if ev.GetDeploymentId() == "" {
		return nil
	}
	d, err := a.tx.Deployment(ev.GetDeploymentId())
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	n := proto.CloneOf(d)
	var hr *captainv1.HostResult
	for _, h := range n.Hosts {
		if h.GetHostId() == hostID {
			hr = h
		}
	}
	if hr == nil {
		hr = &captainv1.HostResult{HostId: hostID}
		n.Hosts = append(n.Hosts, hr)
	}
	hr.State, hr.Message = ev.GetState(), ev.GetMessage()
	hr.Outputs = append(hr.Outputs, ev.GetOutputs()...)
	switch ev.GetState() {
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED:
		hr.FinishedAt = ev.GetAt()
		if hr.FinishedAt == nil {
			hr.FinishedAt = a.at()
		}
	}
	if dir := ev.GetApp().GetCurrentTarget(); dir != "" && ev.GetState() == captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		hr.ReleaseDir = dir
	}
	n.Index = a.tx.Index()
	return a.tx.PutDeployment(n)
}

// recordTestResult settles a command test approval with the output a host reported. A result
// for a release the stage no longer verifies, or for a test already settled, changes nothing.
func (a *applier) recordTestResult(hostID string, tr *captainv1.CommandTestResult) error {
	if tr == nil {
		return nil
	}
	parts := strings.SplitN(tr.GetId(), "/", 4)
	if len(parts) != 4 {
		return nil
	}
	s, err := a.tx.Stage(parts[0], parts[1])
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if strconv.FormatUint(s.GetRelease(), 10) != parts[2] || s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_VERIFYING {
		return nil
	}
	n := proto.CloneOf(s)
	for _, ap := range n.GetApprovals() {
		if ap.GetStep() != "test:"+parts[3] || ap.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING {
			continue
		}
		out := tr.GetOutput()
		ap.Outputs = append(ap.Outputs, out)
		ap.UpdatedAt = a.at()
		if out.GetPassed() {
			ap.State, ap.Detail = captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED, "passed on host "+hostID
		} else {
			line, _, _ := strings.Cut(out.GetOutput(), "\n")
			ap.State, ap.Detail = captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED, fmt.Sprintf("failed on host %s (exit %d): %s", hostID, out.GetExitCode(), line)
		}
		n.Index = a.tx.Index()
		return a.tx.PutStage(n)
	}
	return nil
}

func (a *applier) setAlarmState(c *raftv1.SetAlarmState) (proto.Message, bool, error) {
	if c.GetName() == "" {
		return nil, false, fmt.Errorf("set_alarm_state without a name: %w", ErrInvalid)
	}
	al := &captainv1.Alarm{Name: c.GetName()}
	if old, err := a.tx.Alarm(c.GetName()); err == nil {
		al = proto.CloneOf(old)
	}
	if al.State != c.GetState() || al.UpdatedAt == nil {
		al.UpdatedAt = a.at()
	}
	al.State, al.Reason, al.Source, al.Index = c.GetState(), c.GetReason(), c.GetSource(), a.tx.Index()
	if err := a.tx.PutAlarm(al); err != nil {
		return nil, false, err
	}
	return al, true, a.audit("alarm.set", "alarm/"+al.Name, map[string]string{"state": al.State.String(), "source": al.Source})
}

// engineUpdate writes the engine's rows as given; deciding them is the engine's job.
func (a *applier) engineUpdate(c *raftv1.EngineUpdate) (proto.Message, bool, error) {
	if err := a.putStagesAndDeployments(c.GetStages(), c.GetDeployments()); err != nil {
		return nil, false, err
	}
	for _, e := range c.GetAudit() {
		e = proto.CloneOf(e)
		if e.At == nil {
			e.At = a.at()
		}
		if e.Actor == "" {
			e.Actor = a.cmd.GetActor()
		}
		if err := a.tx.AddAudit(e); err != nil {
			return nil, false, err
		}
	}
	return nil, true, nil
}

// putStagesAndDeployments writes rows the engine computed from a read of the state. Each row
// carries the index it had when read (0 for a new row); if the stored row has changed since —
// an agent's report landed in between — the whole command is refused, nothing is written, and
// the engine plans again from fresh state. Without this check a stale row would overwrite the
// report and a host's result would be lost.
func (a *applier) putStagesAndDeployments(stages []*captainv1.StageState, deps []*captainv1.Deployment) error {
	for _, s := range stages {
		cur, err := a.tx.Stage(s.GetPipeline(), s.GetStage())
		if err := staleRow("stage "+s.GetPipeline()+"/"+s.GetStage(), s.GetIndex(), cur.GetIndex(), err); err != nil {
			return err
		}
	}
	for _, d := range deps {
		cur, err := a.tx.Deployment(d.GetId())
		if err := staleRow("deployment "+d.GetId(), d.GetIndex(), cur.GetIndex(), err); err != nil {
			return err
		}
	}
	for _, s := range stages {
		s = proto.CloneOf(s)
		s.Index = a.tx.Index()
		if err := a.tx.PutStage(s); err != nil {
			return err
		}
	}
	for _, d := range deps {
		d = proto.CloneOf(d)
		d.Index = a.tx.Index()
		if err := a.tx.PutDeployment(d); err != nil {
			return err
		}
	}
	return nil
}

// RollbackResultPrefix starts the remembered result of a rollback request, followed by the IDs
// of the deployments it started, so a retry with the same request ID returns them.
const RollbackResultPrefix = "rollback-deployments:"

func staleRow(what string, read, stored uint64, lookupErr error) error {
	switch {
	case errors.Is(lookupErr, state.ErrNotFound):
		if read != 0 {
			return fmt.Errorf("%s was read at index %d but no longer exists: %w", what, read, ErrConflict)
		}
		return nil
	case lookupErr != nil:
		return lookupErr
	case read != stored:
		return fmt.Errorf("%s changed at index %d after it was read at index %d: %w", what, stored, read, ErrConflict)
	}
	return nil
}

func (a *applier) stageOrNew(pipeline, stage string) (*captainv1.StageState, error) {
	p, err := a.tx.Pipeline(pipeline, 0)
	if err != nil {
		return nil, err
	}
	s, err := a.tx.Stage(pipeline, stage)
	if err == nil {
		return proto.CloneOf(s), nil
	}
	if !errors.Is(err, state.ErrNotFound) {
		return nil, err
	}
	for _, st := range p.GetSpec().GetStages() {
		if st.GetName() == stage {
			return &captainv1.StageState{
				Pipeline: pipeline, Stage: stage, Wave: st.GetWave(),
				Phase: captainv1.StagePhase_STAGE_PHASE_IDLE, PhaseSince: a.at(),
			}, nil
		}
	}
	return nil, fmt.Errorf("stage %q of pipeline %q: %w", stage, pipeline, state.ErrNotFound)
}

func (a *applier) setBlock(c *raftv1.SetBlock) (proto.Message, bool, error) {
	s, err := a.stageOrNew(c.GetPipeline(), c.GetStage())
	if err != nil {
		return nil, false, err
	}
	b := s.GetBlock()
	if b == nil {
		b = &captainv1.Block{}
	}
	in := c.GetDirection() != captainv1.PromotionDirection_PROMOTION_DIRECTION_OUT
	out := c.GetDirection() != captainv1.PromotionDirection_PROMOTION_DIRECTION_IN
	blocked := !c.GetEnabled()
	if in {
		b.In = blocked
	}
	if out {
		b.Out = blocked
	}
	b.Reason, b.Actor, b.At = a.cmd.GetReason(), a.cmd.GetActor(), a.at()
	s.Block, s.Index = b, a.tx.Index()
	if err := a.tx.PutStage(s); err != nil {
		return nil, false, err
	}
	action := "promotions.disable"
	if c.GetEnabled() {
		action = "promotions.enable"
	}
	return s, true, a.audit(action, fmt.Sprintf("pipeline/%s/stage/%s", c.GetPipeline(), c.GetStage()),
		map[string]string{"direction": c.GetDirection().String()})
}

func (a *applier) approve(c *raftv1.Approve) (proto.Message, bool, error) {
	s, err := a.tx.Stage(c.GetPipeline(), c.GetStage())
	if err != nil {
		return nil, false, err
	}
	if s.GetRelease() != c.GetRelease() {
		return nil, false, fmt.Errorf("stage %q of pipeline %q runs release %d, not %d: %w",
			c.GetStage(), c.GetPipeline(), s.GetRelease(), c.GetRelease(), ErrConflict)
	}
	n := proto.CloneOf(s)
	st := &captainv1.ApprovalStatus{
		Step: "manual", State: captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED,
		Detail: "approved by " + a.cmd.GetActor(), UpdatedAt: a.at(),
	}
	if c.GetComment() != "" {
		st.Detail += ": " + c.GetComment()
	}
	replaced := false
	for i, ap := range n.Approvals {
		if ap.GetStep() == "manual" {
			n.Approvals[i], replaced = st, true
		}
	}
	if !replaced {
		n.Approvals = append(n.Approvals, st)
	}
	n.Index = a.tx.Index()
	if err := a.tx.PutStage(n); err != nil {
		return nil, false, err
	}
	return n, true, a.audit("release.approve", fmt.Sprintf("pipeline/%s/stage/%s", c.GetPipeline(), c.GetStage()),
		map[string]string{"release": strconv.FormatUint(c.GetRelease(), 10), "comment": c.GetComment()})
}

func (a *applier) removeHost(c *raftv1.RemoveHost) (proto.Message, bool, error) {
	if err := a.tx.DeleteHost(c.GetHostId()); err != nil {
		return nil, false, err
	}
	return nil, true, a.audit("host.remove", "host/"+c.GetHostId(), nil)
}

func (a *applier) startRollback(c *raftv1.StartRollback) (proto.Message, bool, error) {
	seen, err := a.seenRequest()
	if err != nil || seen {
		return nil, false, err
	}
	if err := a.putStagesAndDeployments(c.GetStages(), c.GetDeployments()); err != nil {
		return nil, false, err
	}
	target := ""
	if len(c.GetStages()) > 0 {
		target = fmt.Sprintf("pipeline/%s/stage/%s", c.GetStages()[0].GetPipeline(), c.GetStages()[0].GetStage())
	}
	var started []string
	for _, d := range c.GetDeployments() {
		if d.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK && d.GetIndex() == 0 {
			started = append(started, d.GetId())
		}
	}
	if err := a.remember(RollbackResultPrefix + strings.Join(started, ",")); err != nil {
		return nil, false, err
	}
	return nil, true, a.audit("rollback.start", target, map[string]string{"environments": strconv.Itoa(len(c.GetPlan()))})
}

func (a *applier) setMember(c *raftv1.SetMember) (proto.Message, bool, error) {
	m := proto.CloneOf(c.GetMember())
	if m.GetNodeId() == "" {
		return nil, false, fmt.Errorf("set_member without a node ID: %w", ErrInvalid)
	}
	if c.GetRemove() {
		if err := a.tx.DeleteMember(m.GetNodeId()); err != nil {
			return nil, false, err
		}
		return nil, true, a.audit("cluster.remove", "node/"+m.GetNodeId(), nil)
	}
	if old, err := a.tx.Member(m.GetNodeId()); err == nil &&
		old.GetRaftAddress() == m.GetRaftAddress() && old.GetApiAddress() == m.GetApiAddress() {
		return old, false, nil
	}
	m.Index = a.tx.Index()
	if err := a.tx.PutMember(m); err != nil {
		return nil, false, err
	}
	return m, true, a.audit("cluster.member", "node/"+m.GetNodeId(), map[string]string{
		"raft_address": m.GetRaftAddress(), "api_address": m.GetApiAddress(),
	})
}
