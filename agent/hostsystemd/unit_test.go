package hostsystemd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestShippedUnitFileIsTheRenderedTemplate(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join("..", "..", "ops", "systemd", "captain-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	want := AgentUnitFile("/usr/local/bin/captain-agent", "/etc/captain/agent.yaml")
	if string(shipped) != string(want) {
		t.Fatalf("ops/systemd/captain-agent.service differs from the template install writes; update it to:\n%s", want)
	}
	for _, line := range []string{"Type=notify", "WatchdogSec=30s", "Restart=always", "RestartSec=1s", "NoNewPrivileges=yes", "ExecStart=/usr/local/bin/captain-agent run --config /etc/captain/agent.yaml"} {
		if !strings.Contains(string(want), line+"\n") {
			t.Errorf("unit lacks %q", line)
		}
	}
}
