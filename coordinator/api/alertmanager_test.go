package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/clustertest"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestAlertmanagerWebhookSetsAlarms(t *testing.T) {
	c := clustertest.New(t, 3)
	leader := c.Leader(5 * time.Second)
	admin := c.Client(leader, "")
	mk := func(name string, role captainv1.Role) string { return newToken(t, admin, name, role, 0) }
	deployer, viewer := mk("alertmanager", captainv1.Role_ROLE_DEPLOYER), mk("vera", captainv1.Role_ROLE_VIEWER)
	follower := c.Followers()[0]
	post := func(token, body string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+follower.APIAddr+"/v1/alarms/alertmanager", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const firing = `{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"High5xx","alarm":"web-5xx"},"annotations":{"summary":"5xx at 4%"}}]}`
	for _, tc := range []struct {
		name, token, body string
		want              int
	}{
		{"no token", "", firing, http.StatusUnauthorized},
		{"viewer token", viewer, firing, http.StatusForbidden},
		{"not a notification", deployer, `{"alerts": 3}`, http.StatusBadRequest},
		{"firing alert", deployer, firing, http.StatusOK},
	} {
		if got := post(tc.token, tc.body); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
	state := func() captainv1.AlarmState {
		res, err := admin.Alarm.ListAlarms(ctx(t), connect.NewRequest(&captainv1.ListAlarmsRequest{Read: &captainv1.ReadOptions{Consistent: true}}))
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range res.Msg.GetAlarms() {
			if a.GetName() == "web-5xx" {
				return a.GetState()
			}
		}
		return captainv1.AlarmState_ALARM_STATE_UNSPECIFIED
	}
	if got := state(); got != captainv1.AlarmState_ALARM_STATE_ALARM {
		t.Fatalf("alarm after firing = %s", got)
	}
	if got := post(deployer, strings.ReplaceAll(firing, "firing", "resolved")); got != http.StatusOK {
		t.Fatalf("resolved: status %d", got)
	}
	if got := state(); got != captainv1.AlarmState_ALARM_STATE_OK {
		t.Fatalf("alarm after resolved = %s", got)
	}
}
