package pipelinespec

import (
	"fmt"
	"time"

	"github.com/robfig/cron/v3"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Window is a compiled TimeWindow.
type Window struct {
	Deny     bool
	Schedule cron.Schedule
	Duration time.Duration
	Location *time.Location
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// CompileWindow parses one window; the error names what is wrong with which part.
func CompileWindow(w *captainv1.TimeWindow) (Window, []Violation) {
	var vs Violations
	sched, err := cronParser.Parse(w.GetCron())
	if w.GetCron() == "" {
		vs.add("cron", "required; a 5-field cron start time such as \"0 9 * * MON-FRI\"")
	} else if err != nil {
		vs.add("cron", "%q is not a 5-field cron expression (minute hour day-of-month month day-of-week): %v", w.GetCron(), err)
	}
	d := w.GetDuration().AsDuration()
	if w.GetDuration() == nil || d <= 0 {
		vs.add("duration", "required; how long the window stays open after each start, e.g. \"8h\"")
	}
	tz := w.GetTimeZone()
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		vs.add("time_zone", "%q is not an IANA time zone such as \"Europe/Berlin\"", w.GetTimeZone())
	}
	if len(vs) > 0 {
		return Window{}, vs
	}
	return Window{Deny: w.GetKind() == captainv1.WindowKind_WINDOW_KIND_DENY, Schedule: sched, Duration: d, Location: loc}, nil
}

// CompileWindows parses every window of a stage.
func CompileWindows(ws []*captainv1.TimeWindow) ([]Window, error) {
	out := make([]Window, 0, len(ws))
	for i, w := range ws {
		c, vs := CompileWindow(w)
		if len(vs) > 0 {
			return nil, fmt.Errorf("windows[%d].%s", i, vs[0].String())
		}
		out = append(out, c)
	}
	return out, nil
}

// active reports whether a window covers t: some start s satisfies s <= t < s+duration.
// cron's Next gives the first start after t-duration; the window is active when that start is not
// after t.
func (w Window) active(t time.Time) bool {
	s := w.Schedule.Next(t.Add(-w.Duration).In(w.Location))
	return !s.IsZero() && !s.After(t)
}

// Open reports whether a stage with these windows may start a deployment at t: inside some
// allow window (when there are any) and inside no deny window. Rollbacks ignore windows.
func Open(ws []Window, t time.Time) bool {
	anyAllow, allowed := false, false
	for _, w := range ws {
		if w.Deny {
			if w.active(t) {
				return false
			}
			continue
		}
		anyAllow = true
		if !allowed && w.active(t) {
			allowed = true
		}
	}
	return !anyAllow || allowed
}

// NextOpen returns the first time at or after from when Open is true, searching up to horizon.
// The set of open times is a union of intervals, each starting at from, at an allow window's
// start, or at a deny window's end, so only those instants need checking.
func NextOpen(ws []Window, from, horizon time.Time) (time.Time, bool) {
	if Open(ws, from) {
		return from, true
	}
	const maxStarts = 20000
	var best time.Time
	for _, w := range ws {
		t := from.Add(-w.Duration)
		for n := 0; n < maxStarts; n++ {
			s := w.Schedule.Next(t.In(w.Location))
			if s.IsZero() || s.After(horizon) || (!best.IsZero() && s.After(best)) {
				break
			}
			candidate := s
			if w.Deny {
				candidate = s.Add(w.Duration)
			}
			if !candidate.Before(from) && Open(ws, candidate) {
				if best.IsZero() || candidate.Before(best) {
					best = candidate
				}
				break
			}
			t = s
		}
	}
	return best, !best.IsZero()
}

const windowHorizon = 400 * 24 * time.Hour

func validateWindows(ws []*captainv1.TimeWindow, p string, vs *Violations) {
	if len(ws) == 0 {
		return
	}
	compiled := make([]Window, 0, len(ws))
	ok := true
	for i, w := range ws {
		c, wvs := CompileWindow(w)
		for _, v := range wvs {
			vs.add(fmt.Sprintf("%s[%d].%s", p, i, v.Field), "%s", v.Description)
		}
		if len(wvs) > 0 {
			ok = false
			continue
		}
		compiled = append(compiled, c)
	}
	if !ok {
		return
	}
	now := time.Now()
	if _, opens := NextOpen(compiled, now, now.Add(windowHorizon)); !opens {
		vs.add(p, "these windows never open in the next 400 days, so no deployment could ever start in this stage; check the cron expressions, durations and deny windows")
	}
}
