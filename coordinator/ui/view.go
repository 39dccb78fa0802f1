package ui

import (
	"fmt"
	"html/template"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func funcs() template.FuncMap {
	return template.FuncMap{
		"rel":      rel,
		"shortSHA": shortSHA,
		"bytes":    humanBytes,
		"join":     strings.Join,
		"orDash":   orDash,
	}
}

func rel(n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("#%d", n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortSHA(s string) string {
	if len(s) > 7 {
		return s[:7]
	}
	return orDash(s)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// short prints a duration the way people say it: 45s, 12m, 2h5m.
func short(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()+0.5))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()+0.5))
	default:
		h := int(d.Hours())
		m := int(d.Minutes()) - 60*h
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
}

// when is a point in time for a page: relative words plus the exact UTC time for a tooltip.
type when struct {
	Rel   string
	Exact string
}

func at(ts *timestamppb.Timestamp, now time.Time) when {
	if ts == nil {
		return when{Rel: "-"}
	}
	t := ts.AsTime()
	w := when{Exact: t.UTC().Format("2006-01-02 15:04:05 UTC")}
	switch d := now.Sub(t); {
	case d < 0:
		w.Rel = "in " + short(-d)
	default:
		w.Rel = short(d) + " ago"
	}
	return w
}

func roleWord(r captainv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

func enumWord(s fmt.Stringer, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), prefix)), "_", " ")
}

// phaseClass names a stage phase for CSS and tests.
func phaseClass(p captainv1.StagePhase) string {
	switch p {
	case captainv1.StagePhase_STAGE_PHASE_DEPLOYING:
		return "deploying"
	case captainv1.StagePhase_STAGE_PHASE_VERIFYING:
		return "verifying"
	case captainv1.StagePhase_STAGE_PHASE_APPROVED:
		return "approved"
	case captainv1.StagePhase_STAGE_PHASE_FAILED:
		return "failed"
	case captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
		return "rolling-back"
	}
	return "idle"
}

// boardView is the pipeline drawn as waves of stages.
type boardView struct {
	Pipeline string
	Version  uint64
	Latest   uint64
	Index    uint64
	Waves    []waveView
	CanAct   bool
	CSRF     string
}

type waveView struct {
	Label  string
	Stages []stageView
}

type stageView struct {
	Pipeline  string
	Name      string
	Release   uint64
	Phase     string
	PhaseText string
	Since     when
	// Progress is set while hosts move: deploying or rolling back.
	Progress *progressView
	// BakeLeftMS counts down a running bake; the page ticks it between polls.
	BakeLeftMS      int64
	BakeLeft        string
	WaitingApproval bool
	Approvals       []approvalView
	Inbox           uint64
	InboxSince      when
	Superseded      uint64
	Held            uint64
	Block           *blockView
	Failure         string
	Alarms          []alarmView
	Envs            []envView
	Bad             []uint64
	// CanAct and CSRF decide the approve button; the API decides whether it works.
	CanAct bool
	CSRF   string
}

type progressView struct {
	Healthy, Total uint32
}

type approvalView struct {
	Step, State, Detail string
}

type blockView struct {
	Sides, Actor, Reason string
	At                   when
}

type alarmView struct {
	Name, State, Class, Reason string
}

type envView struct {
	Name                     string
	Release, LastGood        uint64
	Healthy, Total, Down     uint32
	DeploymentID             string
	HealthyClass, HostsClass string
}

func newBoard(st *captainv1.GetStatusResponse, now time.Time, canAct bool, csrf string) *boardView {
	b := &boardView{
		Pipeline: st.GetPipeline().GetSpec().GetName(), Version: st.GetPipeline().GetVersion(),
		Latest: st.GetLatestRelease(), Index: st.GetIndex(), CanAct: canAct, CSRF: csrf,
	}
	for i, s := range st.GetStages() {
		if i == 0 || s.GetWave() != st.GetStages()[i-1].GetWave() {
			label := fmt.Sprintf("wave %d", s.GetWave())
			if s.GetWave() == 0 {
				label = "pre-production"
			}
			b.Waves = append(b.Waves, waveView{Label: label})
		}
		w := &b.Waves[len(b.Waves)-1]
		sv := newStage(b.Pipeline, s, now)
		sv.CanAct, sv.CSRF = canAct, csrf
		w.Stages = append(w.Stages, sv)
	}
	return b
}

func newStage(pipeline string, s *captainv1.StageState, now time.Time) stageView {
	v := stageView{
		Pipeline: pipeline, Name: s.GetStage(), Release: s.GetRelease(), Phase: phaseClass(s.GetPhase()),
		Since: at(s.GetPhaseSince(), now), Inbox: s.GetInbox().GetRelease(), InboxSince: at(s.GetInbox().GetSince(), now),
		Superseded: s.GetInbox().GetSuperseded(), Held: s.GetApprovedRelease(), Bad: s.GetBadReleases(),
	}
	var healthy, total uint32
	for _, e := range s.GetEnvironments() {
		healthy += e.GetHostsHealthy()
		total += e.GetHostsTotal()
		ev := envView{Name: e.GetEnvironment(), Release: e.GetCurrentRelease(), LastGood: e.GetLastGoodRelease(),
			Healthy: e.GetHostsHealthy(), Total: e.GetHostsTotal(), Down: e.GetHostsDown(), DeploymentID: e.GetDeploymentId()}
		switch {
		case e.GetHostsTotal() == 0:
			ev.HealthyClass = "muted"
		case e.GetHostsHealthy() == e.GetHostsTotal():
			ev.HealthyClass = "good"
		default:
			ev.HealthyClass = "busy"
		}
		v.Envs = append(v.Envs, ev)
	}
	for _, a := range s.GetApprovals() {
		state := "waiting"
		switch a.GetState() {
		case captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED:
			state = "passed"
		case captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED:
			state = "failed"
		}
		v.Approvals = append(v.Approvals, approvalView{Step: a.GetStep(), State: state, Detail: a.GetDetail()})
	}
	switch s.GetPhase() {
	case captainv1.StagePhase_STAGE_PHASE_DEPLOYING:
		v.PhaseText = fmt.Sprintf("deploying %d/%d hosts", healthy, total)
		v.Progress = &progressView{Healthy: healthy, Total: total}
	case captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
		v.PhaseText = fmt.Sprintf("rolling back %d/%d hosts", healthy, total)
		v.Progress = &progressView{Healthy: healthy, Total: total}
	case captainv1.StagePhase_STAGE_PHASE_VERIFYING:
		v.PhaseText = verifyingText(s, now, &v)
	case captainv1.StagePhase_STAGE_PHASE_APPROVED:
		v.PhaseText = "approved"
	case captainv1.StagePhase_STAGE_PHASE_FAILED:
		v.PhaseText = "failed"
	default:
		v.PhaseText = "idle"
		// The engine goes back to idle once it promoted a release; a stage whose every
		// environment has its release as last good shows that approval.
		if approvedEverywhere(s) {
			v.Phase, v.PhaseText = "approved", "approved"
		}
	}
	if s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_IDLE {
		v.Failure = s.GetFailure()
	}
	if bl := s.GetBlock(); bl.GetIn() || bl.GetOut() {
		sides := "out"
		switch {
		case bl.GetIn() && bl.GetOut():
			sides = "in+out"
		case bl.GetIn():
			sides = "in"
		}
		v.Block = &blockView{Sides: sides, Actor: bl.GetActor(), Reason: bl.GetReason(), At: at(bl.GetAt(), now)}
	}
	for _, a := range s.GetAlarms() {
		av := alarmView{Name: a.GetName(), Reason: a.GetReason()}
		switch a.GetState() {
		case captainv1.AlarmState_ALARM_STATE_OK:
			av.State, av.Class = "ok", "good"
		case captainv1.AlarmState_ALARM_STATE_ALARM:
			av.State, av.Class = "ALARM", "bad"
		default:
			av.State, av.Class = "insufficient data", "muted"
		}
		v.Alarms = append(v.Alarms, av)
	}
	return v
}

// verifyingText says what a verifying stage waits for: the bake's time left first, then a
// person's approval, then whatever other step is pending.
func verifyingText(s *captainv1.StageState, now time.Time, v *stageView) string {
	var pending []string
	for _, a := range s.GetApprovals() {
		if a.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING {
			continue
		}
		pending = append(pending, a.GetStep())
		if a.GetStep() == "manual" {
			v.WaitingApproval = true
		}
	}
	for _, step := range pending {
		if step == "bake" && s.GetBakeEndsAt() != nil {
			if left := s.GetBakeEndsAt().AsTime().Sub(now); left > 0 {
				v.BakeLeftMS = left.Milliseconds()
				v.BakeLeft = short(left)
				return "baking"
			}
		}
	}
	switch {
	case v.WaitingApproval:
		return "waiting for approval"
	case len(pending) > 0:
		return "verifying: " + strings.Join(pending, ", ")
	}
	return "verifying"
}

func approvedEverywhere(s *captainv1.StageState) bool {
	if s.GetRelease() == 0 || len(s.GetEnvironments()) == 0 {
		return false
	}
	for _, e := range s.GetEnvironments() {
		if e.GetLastGoodRelease() != s.GetRelease() || e.GetCurrentRelease() != s.GetRelease() {
			return false
		}
	}
	return true
}
