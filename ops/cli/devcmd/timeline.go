package devcmd

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// timeline prints one line each time a stage changes: its release, phase, host progress,
// failure or block.
type timeline struct {
	out   io.Writer
	c     *client
	style statuscmd.Style

	mu    sync.Mutex
	last  map[string]string
	width int
}

func newTimeline(out io.Writer, c *client) *timeline {
	return &timeline{out: out, c: c, style: statuscmd.StyleFor(out), last: map[string]string{}}
}

// run polls the pipeline's status every 250 ms until ctx ends. A failed poll (a leader
// election, say) is skipped: the next one catches up.
func (t *timeline) run(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		t.flush(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// flush polls once and prints what changed.
func (t *timeline) flush(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := t.c.status(ctx)
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range st.GetStages() {
		t.width = max(t.width, len(s.GetStage()))
	}
	now := time.Now().Format("15:04:05")
	for _, s := range st.GetStages() {
		line, color := describeStage(s)
		if t.last[s.GetStage()] == line {
			continue
		}
		t.last[s.GetStage()] = line
		fmt.Fprintf(t.out, "%s  wave %d  %-*s  %s\n", now, s.GetWave(), t.width, s.GetStage(), color(t.style, line))
	}
}

// describeStage is the stage in one line and how to colour it.
func describeStage(s *captainv1.StageState) (string, func(statuscmd.Style, string) string) {
	plain := func(_ statuscmd.Style, text string) string { return text }
	var healthy, total uint32
	var envs []string
	for _, e := range s.GetEnvironments() {
		healthy += e.GetHostsHealthy()
		total += e.GetHostsTotal()
		envs = append(envs, fmt.Sprintf("%s %s %d/%d", e.GetEnvironment(), relName(e.GetCurrentRelease()), e.GetHostsHealthy(), e.GetHostsTotal()))
	}
	rel := relName(s.GetRelease())
	switch s.GetPhase() {
	case captainv1.StagePhase_STAGE_PHASE_DEPLOYING:
		line := fmt.Sprintf("%s deploying, %d/%d hosts healthy", rel, healthy, total)
		if len(envs) > 1 {
			line += " (" + strings.Join(envs, ", ") + ")"
		}
		return line, statuscmd.Style.Busy
	case captainv1.StagePhase_STAGE_PHASE_VERIFYING:
		var steps []string
		for _, a := range s.GetApprovals() {
			steps = append(steps, a.GetStep())
		}
		return fmt.Sprintf("%s verifying: %s", rel, strings.Join(steps, ", ")), statuscmd.Style.Busy
	case captainv1.StagePhase_STAGE_PHASE_APPROVED:
		return fmt.Sprintf("%s approved: %s", rel, strings.Join(envs, ", ")), statuscmd.Style.Good
	case captainv1.StagePhase_STAGE_PHASE_FAILED:
		return fmt.Sprintf("%s FAILED: %s", rel, s.GetFailure()), statuscmd.Style.Bad
	case captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
		line := fmt.Sprintf("rolling back, %d/%d hosts healthy (%s)", healthy, total, strings.Join(envs, ", "))
		if f := s.GetFailure(); f != "" {
			line += " after: " + f
		}
		return line, statuscmd.Style.Bad
	}
	// Idle, the stage still names the release it last worked on: approved when every
	// environment ran it to approval (the approved phase itself lasts only until the
	// promotion, often shorter than a poll), failed when it is marked bad.
	line, color := "idle", plain
	switch {
	case slices.Contains(s.GetBadReleases(), s.GetRelease()):
		line = rel + " failed, rolled back"
	case s.GetRelease() != 0 && allLastGood(s):
		line, color = rel+" approved", statuscmd.Style.Good
	}
	if len(envs) > 0 {
		line += ": " + strings.Join(envs, ", ")
	}
	if b := s.GetBlock(); b.GetIn() || b.GetOut() {
		return fmt.Sprintf("%s; BLOCKED %s by %s: %s", line, sides(b), b.GetActor(), b.GetReason()), statuscmd.Style.Bad
	}
	if in := s.GetInbox().GetRelease(); in != 0 {
		line += fmt.Sprintf("; #%d waiting in the inbox", in)
	}
	return line, color
}

func allLastGood(s *captainv1.StageState) bool {
	for _, e := range s.GetEnvironments() {
		if e.GetLastGoodRelease() != s.GetRelease() {
			return false
		}
	}
	return len(s.GetEnvironments()) > 0
}

func relName(n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("#%d", n)
}

func sides(b *captainv1.Block) string {
	switch {
	case b.GetIn() && b.GetOut():
		return "in+out"
	case b.GetIn():
		return "in"
	}
	return "out"
}

func phaseWord(p captainv1.StagePhase) string { return statuscmd.PhaseName(p) }
