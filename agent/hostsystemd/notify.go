package hostsystemd

import (
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages to the service manager; outside systemd
// (no NOTIFY_SOCKET) it sends nothing.
type Notifier struct {
	Logger *slog.Logger
}

// Notify sends one message such as "READY=1" or "STATUS=idle".
func (n Notifier) Notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil && n.Logger != nil {
		n.Logger.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// WatchdogInterval is the unit's WatchdogSec when systemd watches this process, else 0.
func WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0
	}
	return d
}
