package alertmanager

import (
	"strings"
	"testing"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestParse(t *testing.T) {
	const body = `{"version":"4","status":"firing","receiver":"captain","groupLabels":{},"alerts":[
	 {"status":"firing","labels":{"alertname":"High5xx","alarm":"web-5xx-rate"},"annotations":{"summary":"5xx at 4%"},"startsAt":"2026-11-25T10:00:00Z"},
	 {"status":"resolved","labels":{"alertname":"High5xx","alarm":"web-5xx-rate","instance":"b"}},
	 {"status":"resolved","labels":{"alertname":"SlowP99","alarm":"web-latency-p99"}},
	 {"status":"firing","labels":{"alertname":"DiskFull"}}]}`
	changes, unnamed, err := Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if unnamed != 1 {
		t.Errorf("unnamed = %d, want 1", unnamed)
	}
	want := []Change{
		{"web-5xx-rate", captainv1.AlarmState_ALARM_STATE_ALARM, "alertmanager High5xx firing: 5xx at 4%"},
		{"web-latency-p99", captainv1.AlarmState_ALARM_STATE_OK, "alertmanager SlowP99 resolved"},
	}
	if len(changes) != len(want) {
		t.Fatalf("changes = %v", changes)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Errorf("change %d = %+v, want %+v", i, changes[i], want[i])
		}
	}
}

func TestParseRejects(t *testing.T) {
	for name, body := range map[string]string{
		"not json":       "alerts: yes",
		"no alerts":      `{"version":"4","alerts":[]}`,
		"bad status":     `{"version":"4","alerts":[{"status":"pending","labels":{"alarm":"x"}}]}`,
		"future version": `{"version":"5","alerts":[{"status":"firing","labels":{"alarm":"x"}}]}`,
	} {
		if _, _, err := Parse(strings.NewReader(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
