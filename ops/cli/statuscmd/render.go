// Package statuscmd draws a pipeline's live state in the terminal: waves, stages, the release in
// each and its phase, approvals, inboxes, blocks and what superseded what.
package statuscmd

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Style colours the drawing; the zero Style prints plain text (not a TTY, or NO_COLOR).
type Style struct {
	Color bool
}

// StyleFor colours output only for a person: w must be a terminal and NO_COLOR unset
// (https://no-color.org), so pipes, files and CI logs get plain text.
func StyleFor(w io.Writer) Style {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" {
		return Style{}
	}
	return Style{Color: term.IsTerminal(int(f.Fd()))}
}

// Good paints text green.
func (s Style) Good(text string) string { return s.paint("32", text) }

// Bad paints text red.
func (s Style) Bad(text string) string { return s.paint("31", text) }

// Busy paints text yellow: something is moving.
func (s Style) Busy(text string) string { return s.paint("33", text) }

// Bold makes text bold.
func (s Style) Bold(text string) string { return s.paint("1", text) }

func (s Style) paint(code, text string) string {
	if !s.Color || text == "" {
		return text
	}
	return "\x1b[" + code + "m" + text + "\x1b[0m"
}

func (s Style) phase(p captainv1.StagePhase, text string) string {
	switch p {
	case captainv1.StagePhase_STAGE_PHASE_DEPLOYING, captainv1.StagePhase_STAGE_PHASE_VERIFYING:
		return s.paint("33", text) // yellow: moving
	case captainv1.StagePhase_STAGE_PHASE_APPROVED:
		return s.paint("32", text)
	case captainv1.StagePhase_STAGE_PHASE_FAILED, captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
		return s.paint("31", text)
	}
	return text
}

// PhaseName is the phase in words.
func PhaseName(p captainv1.StagePhase) string {
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
		return "rolling back"
	}
	return "idle"
}

// Render draws the pipeline as of now.
func Render(w io.Writer, st *captainv1.GetStatusResponse, now time.Time, style Style) error {
	var b strings.Builder
	spec := st.GetPipeline().GetSpec()
	fmt.Fprintf(&b, "%s  pipeline %s, spec version %d, newest release %s\n",
		style.paint("1", spec.GetName()), spec.GetName(), st.GetPipeline().GetVersion(), rel(st.GetLatestRelease()))
	width := 5
	for _, s := range st.GetStages() {
		width = max(width, len(s.GetStage()))
	}
	wave, first := uint32(0), true
	for _, s := range st.GetStages() {
		if first || s.GetWave() != wave {
			wave, first = s.GetWave(), false
			if wave == 0 {
				fmt.Fprintf(&b, "\n%s\n", style.paint("1", "pre-production"))
			} else {
				fmt.Fprintf(&b, "\n%s\n", style.paint("1", fmt.Sprintf("wave %d", wave)))
			}
		}
		stageLines(&b, s, now, width, style)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func stageLines(b *strings.Builder, s *captainv1.StageState, now time.Time, width int, style Style) {
	phase := PhaseName(s.GetPhase())
	if s.GetPhase() == captainv1.StagePhase_STAGE_PHASE_DEPLOYING || s.GetPhase() == captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK {
		var healthy, total uint32
		for _, e := range s.GetEnvironments() {
			healthy += e.GetHostsHealthy()
			total += e.GetHostsTotal()
		}
		phase = fmt.Sprintf("%s %d/%d hosts", phase, healthy, total)
	}
	fmt.Fprintf(b, "  %-*s  %-6s %s", width, s.GetStage(), rel(s.GetRelease()), style.phase(s.GetPhase(), phase))
	var notes []string
	if s.GetPhase() == captainv1.StagePhase_STAGE_PHASE_VERIFYING {
		for _, a := range s.GetApprovals() {
			notes = append(notes, approvalNote(a, s, now))
		}
	}
	if in := s.GetInbox(); in.GetRelease() != 0 {
		note := "inbox " + rel(in.GetRelease())
		if in.GetSuperseded() != 0 {
			note += fmt.Sprintf(" (superseded %s)", rel(in.GetSuperseded()))
		}
		notes = append(notes, note)
	}
	if r := s.GetApprovedRelease(); r != 0 {
		notes = append(notes, fmt.Sprintf("%s approved, held by the block", rel(r)))
	}
	if len(notes) > 0 {
		fmt.Fprintf(b, "  · %s", strings.Join(notes, " · "))
	}
	b.WriteByte('\n')
	indent := strings.Repeat(" ", width+4)
	if bl := s.GetBlock(); bl.GetIn() || bl.GetOut() {
		fmt.Fprintf(b, "%s%s by %s %s: %s\n", indent, style.paint("31", "blocked "+blockSides(bl)), bl.GetActor(), ago(bl.GetAt().AsTime(), now), bl.GetReason())
	} else if s.GetFailure() != "" && s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_IDLE {
		fmt.Fprintf(b, "%s%s\n", indent, style.paint("31", s.GetFailure()))
	}
	for _, a := range s.GetAlarms() {
		fmt.Fprintf(b, "%salarm %s: %s\n", indent, a.GetName(), alarmWord(a.GetState()))
	}
	for _, e := range s.GetEnvironments() {
		line := fmt.Sprintf("%s└ %s: %s, %d/%d healthy", indent, e.GetEnvironment(), rel(e.GetCurrentRelease()), e.GetHostsHealthy(), e.GetHostsTotal())
		if e.GetHostsDown() > 0 {
			line += fmt.Sprintf(", %d down", e.GetHostsDown())
		}
		if e.GetLastGoodRelease() != 0 {
			line += ", last good " + rel(e.GetLastGoodRelease())
		}
		b.WriteString(line + "\n")
	}
}

func approvalNote(a *captainv1.ApprovalStatus, s *captainv1.StageState, now time.Time) string {
	state := "waiting"
	switch a.GetState() {
	case captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PASSED:
		state = "ok"
	case captainv1.ApprovalStepState_APPROVAL_STEP_STATE_FAILED:
		state = "failed"
	}
	if a.GetStep() == "bake" && a.GetState() == captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING && s.GetBakeEndsAt() != nil {
		if left := s.GetBakeEndsAt().AsTime().Sub(now); left > 0 {
			return "bake " + short(left) + " left"
		}
	}
	return a.GetStep() + " " + state
}

func blockSides(b *captainv1.Block) string {
	switch {
	case b.GetIn() && b.GetOut():
		return "in+out"
	case b.GetIn():
		return "in"
	default:
		return "out"
	}
}

func alarmWord(s captainv1.AlarmState) string {
	switch s {
	case captainv1.AlarmState_ALARM_STATE_OK:
		return "ok"
	case captainv1.AlarmState_ALARM_STATE_ALARM:
		return "ALARM"
	}
	return "insufficient data"
}

func rel(n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("#%d", n)
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

func ago(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	return Ago(t, now)
}

// Ago says when t was relative to now the way people say it: "3m ago", or "in 5m" for a
// time still ahead (deadlines, bake ends); "-" for no time at all.
func Ago(t, now time.Time) string {
	switch d := now.Sub(t); {
	case t.IsZero():
		return "-"
	case d < 0:
		return "in " + short(-d)
	default:
		return short(d) + " ago"
	}
}
