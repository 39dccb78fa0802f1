package hostsystemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"text/template"
	"time"

	"github.com/coreos/go-systemd/v22/dbus"

	"github.com/captain-cd/captain/agent/atomicfile"
)

// AgentUnit is the agent's unit name and AgentUnitPath where install writes it.
const (
	AgentUnit     = "captain-agent.service"
	AgentUnitPath = "/etc/systemd/system/" + AgentUnit
)

// agentUnitTemplate is the one source of the agent unit; ops/systemd/captain-agent.service is
// this rendered with the default paths (a test keeps them equal).
//
// Hardening stops where it would get in the way: the agent runs as root because it restarts
// units, and it writes app roots anywhere (/srv, /opt, /usr/local, /etc for hooks), so
// ProtectSystem stays off. KillMode=mixed lets the agent stop its own hooks on SIGTERM and
// leaves the rest of the cgroup to SIGKILL at the end.
const agentUnitTemplate = `[Unit]
Description=Captain host agent (deploys releases on this host)
Documentation=https://github.com/captain-cd/captain
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={{.Binary}} run --config {{.Config}}
Restart=always
RestartSec=1s
WatchdogSec=30s
TimeoutStopSec=60s
KillMode=mixed
NoNewPrivileges=yes
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
`

// AgentUnitFile renders the agent unit for a binary and config path.
func AgentUnitFile(binary, config string) []byte {
	var b bytes.Buffer
	t := template.Must(template.New("unit").Parse(agentUnitTemplate))
	if err := t.Execute(&b, struct{ Binary, Config string }{binary, config}); err != nil {
		panic(err) // the template is a constant; it cannot fail on two strings
	}
	return b.Bytes()
}

func connect(ctx context.Context) (*dbus.Conn, error) {
	conn, err := dbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd over D-Bus (run as root on a systemd host): %w", err)
	}
	return conn, nil
}

// EnableAndStart reloads systemd's unit files, enables unit and (re)starts it, then waits
// until it is active. When it is not active in time, the error carries the unit's state and
// the last lines of its journal.
func EnableAndStart(ctx context.Context, unit string, timeout time.Duration) error {
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("systemd daemon-reload: %w", err)
	}
	if _, _, err := conn.EnableUnitFilesContext(ctx, []string{unit}, false, true); err != nil {
		return fmt.Errorf("enable %s: %w", unit, err)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Restart, not start: installing over a running agent must run the new binary and config.
	ch := make(chan string, 1)
	if _, err := conn.RestartUnitContext(wctx, unit, "replace", ch); err != nil {
		return fmt.Errorf("start %s: %w", unit, err)
	}
	var result string
	select {
	case result = <-ch:
	case <-wctx.Done():
		result = "still starting after " + timeout.String()
	}
	state, sub, err := unitState(ctx, conn, unit)
	if err == nil && result == "done" && state == "active" {
		return nil
	}
	return fmt.Errorf("%s did not become active (start job: %s, state: %s/%s): see `systemctl status %s`; last journal lines:\n%s",
		unit, result, state, sub, unit, journalTail(ctx, unit, 20))
}

func unitState(ctx context.Context, conn *dbus.Conn, unit string) (active, sub string, err error) {
	props, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return "", "", fmt.Errorf("read %s state: %w", unit, err)
	}
	a, _ := props["ActiveState"].(string)
	s, _ := props["SubState"].(string)
	return a, s, nil
}

// journalTail is best effort: it explains a failed start, the failure is reported anyway.
func journalTail(ctx context.Context, unit string, n int) string {
	out, err := exec.CommandContext(ctx, "journalctl", "-u", unit, "-n", fmt.Sprint(n), "--no-pager", "-o", "short-iso").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(journalctl failed: %v) %s", err, out)
	}
	return strings.TrimRight(string(out), "\n")
}

// StopAndDisable stops unit, disables it, removes its file and reloads systemd. A unit that
// is not installed is not an error. It returns what it did, for the operator.
func StopAndDisable(ctx context.Context, unit, unitPath string) ([]string, error) {
	conn, err := connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var did []string
	props, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return nil, fmt.Errorf("read %s state: %w", unit, err)
	}
	if load, _ := props["LoadState"].(string); load != "not-found" {
		if active, _ := props["ActiveState"].(string); active != "inactive" && active != "failed" {
			ch := make(chan string, 1)
			if _, err := conn.StopUnitContext(ctx, unit, "replace", ch); err != nil {
				return did, fmt.Errorf("stop %s: %w", unit, err)
			}
			select {
			case res := <-ch:
				if res != "done" {
					return did, fmt.Errorf("stop %s: job ended %q; see `systemctl status %s`", unit, res, unit)
				}
			case <-ctx.Done():
				return did, fmt.Errorf("stop %s: %w", unit, ctx.Err())
			}
			did = append(did, "stopped "+unit)
		}
		if changes, err := conn.DisableUnitFilesContext(ctx, []string{unit}, false); err != nil {
			return did, fmt.Errorf("disable %s: %w", unit, err)
		} else if len(changes) > 0 {
			did = append(did, "disabled "+unit)
		}
	}
	if err := os.Remove(unitPath); err == nil {
		did = append(did, "removed "+unitPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return did, fmt.Errorf("remove unit file: %w", err)
	}
	if err := conn.ReloadContext(ctx); err != nil {
		return did, fmt.Errorf("systemd daemon-reload: %w", err)
	}
	// A killed or failed agent leaves a failed state behind that would keep the unit listed.
	_ = conn.ResetFailedUnitContext(ctx, unit)
	return did, nil
}

// WriteFileAtomic replaces path with data (mode perm): readers see the old or the new file,
// and after return the new one survives a crash.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return atomicfile.Write(path, data, perm)
}
