package coordcmd

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// NewAlarmCommand returns `captain alarm set|list`.
func NewAlarmCommand(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alarm",
		Short: "Set and list the named alarms stages watch",
		Long: `Alarms are named and in one of three states: ok, alarm, insufficient_data. A stage that
watches an alarm fails and rolls back when it goes to alarm while the stage verifies a release.
Alarms also arrive through the Alertmanager webhook POST /v1/alarms/alertmanager.`,
		Example: `  captain alarm set checkout-errors --state alarm --reason "5xx above 2% for 5m"
  captain alarm list`,
	}
	cmd.AddCommand(alarmSet(cfg), alarmList(cfg))
	return cmd
}

func parseAlarmState(s string) (captainv1.AlarmState, error) {
	v, ok := captainv1.AlarmState_value["ALARM_STATE_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, fmt.Errorf("--state %q: want ok, alarm or insufficient_data", s)
	}
	return captainv1.AlarmState(v), nil
}

func alarmWord(s captainv1.AlarmState, style statuscmd.Style) string {
	switch s {
	case captainv1.AlarmState_ALARM_STATE_OK:
		return style.Good("ok")
	case captainv1.AlarmState_ALARM_STATE_ALARM:
		return style.Bad("alarm")
	case captainv1.AlarmState_ALARM_STATE_INSUFFICIENT_DATA:
		return style.Busy("insufficient_data")
	}
	return "unknown"
}

func alarmSet(cfg *clientcfg.Config) *cobra.Command {
	var stateName, reason string
	cmd := &cobra.Command{
		Use:   "set NAME --state ok|alarm|insufficient_data [--reason R]",
		Short: "Set an alarm's state",
		Example: `  captain alarm set checkout-errors --state alarm --reason "5xx above 2%"
  captain alarm set checkout-errors --state ok`,
		Args: cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			if stateName == "" {
				return errors.New("--state is required: ok, alarm or insufficient_data")
			}
			st, err := parseAlarmState(stateName)
			if err != nil {
				return err
			}
			res, err := c.alarm.SetAlarmState(cmd.Context(), connect.NewRequest(&captainv1.SetAlarmStateRequest{Name: args[0], State: st, Reason: reason}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			w := cmd.OutOrStdout()
			a := res.Msg.GetAlarm()
			_, err = fmt.Fprintf(w, "alarm %s is %s (set by %s)\n", a.GetName(), alarmWord(a.GetState(), statuscmd.StyleFor(w)), a.GetSource())
			return err
		}),
	}
	cmd.Flags().StringVar(&stateName, "state", "", "ok, alarm or insufficient_data")
	cmd.Flags().StringVar(&reason, "reason", "", "why; shown with the alarm and on rollbacks it causes")
	return cmd
}

func alarmList(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List every known alarm with its state",
		Example: "  captain alarm list\n  captain alarm list -o json",
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			req := &captainv1.ListAlarmsRequest{}
			res, err := leaderRead(cmd, c.alarm.ListAlarms, req, &req.Read)
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			style, now := statuscmd.StyleFor(w), time.Now()
			rows := [][]string{}
			for _, a := range res.GetAlarms() {
				rows = append(rows, []string{a.GetName(), alarmWord(a.GetState(), style), orDash(a.GetSource()), ago(a.GetUpdatedAt(), now), orDash(a.GetReason())})
			}
			return table(w, "NAME\tSTATE\tSOURCE\tCHANGED\tREASON", rows)
		}),
	}
}
