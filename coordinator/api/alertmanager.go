package api

import (
	"encoding/json"
	"net/http"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/alertmanager"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// AlertmanagerPath is where Alertmanager posts webhook notifications (receiver webhook_configs
// url, with http_config.authorization credentials set to a deployer token).
const AlertmanagerPath = "/v1/alarms/alertmanager"

// AlertmanagerHandler maps firing and resolved alerts that carry the label alarm=NAME to alarm
// states, as if each were an AlarmService.SetAlarmState call by the token's owner.
func (s *Server) AlertmanagerHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST an Alertmanager webhook notification", http.StatusMethodNotAllowed)
			return
		}
		header := r.Header.Get("Authorization")
		ctx, err := authInterceptor{s: s}.authenticate(r.Context(), captainv1connect.AlarmServiceSetAlarmStateProcedure, r.Header)
		if err != nil {
			writeConnectError(w, err)
			return
		}
		changes, unnamed, err := alertmanager.Parse(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// Through this node's own API, so the write takes the usual path: forwarded to the
		// leader when this node follows, authorized and audited as the token's owner.
		alarms := captainv1connect.NewAlarmServiceClient(s.httpClient, s.baseURL(s.apiAddr))
		var set []*captainv1.Alarm
		for _, c := range changes {
			req := connect.NewRequest(&captainv1.SetAlarmStateRequest{Name: c.Name, State: c.State, Reason: c.Reason})
			req.Header().Set("Authorization", header)
			res, err := alarms.SetAlarmState(ctx, req)
			if err != nil {
				writeConnectError(w, err)
				return
			}
			set = append(set, res.Msg.GetAlarm())
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"alarms_set": len(set), "alerts_without_alarm_label": unnamed})
	})
}

// RequireAdmin serves h only to requests that bear an admin token, such as debug endpoints.
func (s *Server) RequireAdmin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A path that is no procedure needs the admin role (see minRole).
		ctx, err := authInterceptor{s: s}.authenticate(r.Context(), r.URL.Path, r.Header)
		if err != nil {
			writeConnectError(w, err)
			return
		}
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

func writeConnectError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated:
		status = http.StatusUnauthorized
	case connect.CodePermissionDenied:
		status = http.StatusForbidden
	case connect.CodeInvalidArgument:
		status = http.StatusBadRequest
	case connect.CodeUnavailable:
		status = http.StatusServiceUnavailable
	}
	http.Error(w, err.Error(), status)
}
