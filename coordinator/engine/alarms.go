package engine

import (
	"fmt"

	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// watched is one alarm a stage watches, for one environment or ("") for all of them.
type watched struct {
	name string
	env  string
}

func watchedAlarms(st *captainv1.Stage) []watched {
	var out []watched
	for _, n := range st.GetApproval().GetAlarms().GetNames() {
		out = append(out, watched{name: n})
	}
	for _, env := range st.GetEnvironments() {
		for _, n := range env.GetAlarms() {
			out = append(out, watched{name: n, env: env.GetName()})
		}
	}
	return out
}

// HostHealthAlarmName is the name the built-in host-health alarm of one environment is shown
// under.
func HostHealthAlarmName(pipeline, env string) string {
	return pipelinespec.HostHealthAlarm + "/" + pipeline + "/" + env
}

// alarmState resolves one watched alarm for one environment. An alarm nobody ever set has no data.
func (pl *plan) alarmState(w watched, env string, s *captainv1.StageState) (captainv1.AlarmState, string, string) {
	if w.name == pipelinespec.HostHealthAlarm {
		name := HostHealthAlarmName(pl.spec.GetName(), env)
		for _, h := range pl.members[env] {
			if h.GetLiveness() == captainv1.Liveness_LIVENESS_DOWN {
				continue
			}
			app := hostApp(h, pl.spec.GetName())
			if app.GetCurrentRelease() == s.GetRelease() && app.GetHealth() == captainv1.HealthState_HEALTH_STATE_UNHEALTHY {
				return captainv1.AlarmState_ALARM_STATE_ALARM, name, fmt.Sprintf("host %s reports release %d unhealthy", h.GetId(), s.GetRelease())
			}
		}
		return captainv1.AlarmState_ALARM_STATE_OK, name, ""
	}
	a := pl.v.Alarms[w.name]
	if a == nil || a.GetState() == captainv1.AlarmState_ALARM_STATE_UNSPECIFIED {
		return captainv1.AlarmState_ALARM_STATE_INSUFFICIENT_DATA, w.name, "never reported"
	}
	return a.GetState(), w.name, a.GetReason()
}

// each calls fn for every (alarm, environment) pair the stage watches.
func (pl *plan) each(st *captainv1.Stage, s *captainv1.StageState, fn func(state captainv1.AlarmState, name, reason string, builtin bool) bool) {
	for _, w := range watchedAlarms(st) {
		for _, env := range st.GetEnvironments() {
			if w.env != "" && w.env != env.GetName() {
				continue
			}
			state, name, reason := pl.alarmState(w, env.GetName(), s)
			if !fn(state, name, reason, w.name == pipelinespec.HostHealthAlarm) {
				return
			}
			if w.name != pipelinespec.HostHealthAlarm {
				break // an external alarm is the same for every environment
			}
		}
	}
}

// firingAlarm returns the first watched alarm that fails the stage: in alarm, or without data
// when the stage's policy says to roll back. Host health counts only once the release is
// deployed; during the deployment the health checks fail the hosts themselves.
func (pl *plan) firingAlarm(st *captainv1.Stage, s *captainv1.StageState, deployed bool) (string, string) {
	policy := st.GetApproval().GetAlarms().GetInsufficientData()
	var name, why string
	pl.each(st, s, func(state captainv1.AlarmState, n, reason string, builtin bool) bool {
		if builtin && !deployed {
			return true
		}
		switch {
		case state == captainv1.AlarmState_ALARM_STATE_ALARM:
			name, why = n, fmt.Sprintf("alarm %s: %s", n, reason)
		case state == captainv1.AlarmState_ALARM_STATE_INSUFFICIENT_DATA && policy == captainv1.InsufficientDataPolicy_INSUFFICIENT_DATA_POLICY_ROLLBACK:
			name, why = n, fmt.Sprintf("alarm %s has insufficient data and the stage treats that as alarm", n)
		default:
			return true
		}
		return false
	})
	return name, why
}

// alarmsOK reports whether every watched alarm allows approval.
func (pl *plan) alarmsOK(st *captainv1.Stage, s *captainv1.StageState) (bool, string) {
	policy := st.GetApproval().GetAlarms().GetInsufficientData()
	ok, why := true, ""
	pl.each(st, s, func(state captainv1.AlarmState, n, reason string, _ bool) bool {
		switch state {
		case captainv1.AlarmState_ALARM_STATE_OK:
			return true
		case captainv1.AlarmState_ALARM_STATE_INSUFFICIENT_DATA:
			if policy == captainv1.InsufficientDataPolicy_INSUFFICIENT_DATA_POLICY_APPROVE {
				return true
			}
			ok, why = false, fmt.Sprintf("waiting: alarm %s has insufficient data (%s)", n, reason)
		default:
			ok, why = false, fmt.Sprintf("alarm %s is %s", n, state)
		}
		return false
	})
	return ok, why
}
