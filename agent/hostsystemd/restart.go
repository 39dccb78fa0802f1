// Package hostsystemd talks to the host's systemd over D-Bus.
package hostsystemd

import (
	"context"
	"fmt"

	"github.com/coreos/go-systemd/v22/dbus"
)

// Restarter restarts units through the system bus. It connects per call: restarts are rare
// and a long-lived connection would have to survive systemd re-executing itself.
type Restarter struct{}

// NewRestarter returns a Restarter.
func NewRestarter() *Restarter { return &Restarter{} }

// Restart restarts unit with mode "replace" and waits until systemd reports the job's
// result; anything but "done" is an error naming the result.
func (r *Restarter) Restart(ctx context.Context, unit string) error {
	conn, err := dbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("connect to systemd over D-Bus (is the agent running as root on a systemd host?): %w", err)
	}
	defer conn.Close()
	ch := make(chan string, 1)
	if _, err := conn.RestartUnitContext(ctx, unit, "replace", ch); err != nil {
		return fmt.Errorf("restart %s: %w", unit, err)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return fmt.Errorf("restart %s: job ended %q; see `systemctl status %s` and `journalctl -u %s`", unit, res, unit, unit)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("restart %s: waiting for the job result: %w", unit, ctx.Err())
	}
}
