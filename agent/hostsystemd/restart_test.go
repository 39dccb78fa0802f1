package hostsystemd

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRestartWithoutSystemBusSaysWhatIsMissing(t *testing.T) {
	if _, err := os.Stat("/run/dbus/system_bus_socket"); err == nil {
		t.Skip("this host has a system bus; the integration tests restart real units under systemd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := NewRestarter().Restart(ctx, "web.service")
	if err == nil || !strings.Contains(err.Error(), "connect to systemd over D-Bus") {
		t.Errorf("Restart without a bus: %v", err)
	}
}
