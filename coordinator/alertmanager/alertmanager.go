// Package alertmanager reads Prometheus Alertmanager webhook notifications and turns them into
// alarm states: an alert carrying the label alarm=NAME sets alarm NAME to alarm while it fires
// and back to ok when it resolves.
package alertmanager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// AlarmLabel is the alert label that names the Captain alarm.
const AlarmLabel = "alarm"

// MaxBody bounds a notification; Alertmanager batches, but never this much.
const MaxBody = 4 << 20

// Notification is the webhook payload (version 4).
type Notification struct {
	Version string  `json:"version"`
	Status  string  `json:"status"`
	Alerts  []Alert `json:"alerts"`
}

// Alert is one alert of a notification.
type Alert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// Change is one alarm state to set.
type Change struct {
	Name   string
	State  captainv1.AlarmState
	Reason string
}

// Parse reads a notification and returns one change per named alarm (firing wins over resolved
// when one notification carries both for the same alarm) and how many alerts had no alarm label.
func Parse(r io.Reader) ([]Change, int, error) {
	var n Notification
	dec := json.NewDecoder(io.LimitReader(r, MaxBody))
	if err := dec.Decode(&n); err != nil {
		return nil, 0, fmt.Errorf("not an Alertmanager webhook notification: %w", err)
	}
	if n.Version != "" && n.Version != "4" {
		return nil, 0, fmt.Errorf("webhook version %q: expected version 4", n.Version)
	}
	if len(n.Alerts) == 0 {
		return nil, 0, errors.New("notification has no alerts")
	}
	byName := map[string]*Change{}
	unnamed := 0
	for i, a := range n.Alerts {
		name := a.Labels[AlarmLabel]
		if name == "" {
			unnamed++
			continue
		}
		var state captainv1.AlarmState
		switch a.Status {
		case "firing":
			state = captainv1.AlarmState_ALARM_STATE_ALARM
		case "resolved":
			state = captainv1.AlarmState_ALARM_STATE_OK
		default:
			return nil, 0, fmt.Errorf("alerts[%d].status %q: expected firing or resolved", i, a.Status)
		}
		c := byName[name]
		if c == nil {
			c = &Change{Name: name, State: state, Reason: reason(a)}
			byName[name] = c
		} else if state == captainv1.AlarmState_ALARM_STATE_ALARM && c.State != state {
			c.State, c.Reason = state, reason(a)
		}
	}
	out := make([]Change, 0, len(byName))
	for _, c := range byName {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b Change) int { return strings.Compare(a.Name, b.Name) })
	return out, unnamed, nil
}

func reason(a Alert) string {
	name := a.Labels["alertname"]
	for _, k := range []string{"summary", "description", "message"} {
		if v := a.Annotations[k]; v != "" {
			if name != "" {
				return fmt.Sprintf("alertmanager %s %s: %s", name, a.Status, v)
			}
			return fmt.Sprintf("alertmanager %s: %s", a.Status, v)
		}
	}
	return fmt.Sprintf("alertmanager %s %s", name, a.Status)
}
