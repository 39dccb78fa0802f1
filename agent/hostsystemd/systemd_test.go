package hostsystemd

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captain-cd/captain/integration/nspawn"
)

// TestRestartAgainstRealSystemd boots systemd in a container and restarts units in it
// through Restarter, built into a static binary run inside the container.
func TestRestartAgainstRealSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a container; skipped with -short")
	}
	rootfs := nspawn.Rootfs(t) // skips with the reason when containers cannot run here
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "restart"), "./testdata/restart")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build restart helper: %v\n%s", err, out)
	}
	c := nspawn.Boot(t, rootfs, nspawn.Bind{Host: bin, Container: "/mnt/captain", ReadOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sh := func(script string) string {
		t.Helper()
		out, err := c.Exec(ctx, "sh", "-c", script)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	sh(`cat > /etc/systemd/system/web.service <<'UNIT'
[Service]
ExecStartPre=/bin/sh -c 'echo start >> /run/web-starts'
ExecStart=/bin/sleep infinity
UNIT
cat > /etc/systemd/system/broken.service <<'UNIT'
[Service]
Type=oneshot
ExecStart=/bin/false
UNIT
systemctl daemon-reload && systemctl start web.service`)

	tests := []struct {
		name    string
		unit    string
		wantErr string
		check   func(t *testing.T)
	}{
		{
			name: "running unit is restarted and the job ends done",
			unit: "web.service",
			check: func(t *testing.T) {
				if got := strings.TrimSpace(sh("wc -l < /run/web-starts")); got != "2" {
					t.Errorf("web.service started %s times, want 2 (start + restart)", got)
				}
				if got := strings.TrimSpace(sh("systemctl is-active web.service || true")); got != "active" {
					t.Errorf("web.service is %s after the restart", got)
				}
			},
		},
		{name: "failing unit reports the job result", unit: "broken.service", wantErr: `job ended "failed"`},
		{name: "unknown unit", unit: "nosuch.service", wantErr: "restart nosuch.service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := c.Exec(ctx, "/mnt/captain/restart", tt.unit)
			t.Logf("restart %s: %s", tt.unit, strings.TrimSpace(string(out)))
			if tt.wantErr == "" {
				if err != nil || !strings.Contains(string(out), "restarted") {
					t.Fatalf("restart %s: %v %s", tt.unit, err, out)
				}
			} else if err == nil || !strings.Contains(string(out), tt.wantErr) {
				t.Fatalf("restart %s: err %v output %q, want an error containing %q", tt.unit, err, out, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t)
			}
		})
	}
}
