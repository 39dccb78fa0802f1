// Package demo runs `captain dev` as a newcomer would and checks what it prints.
package demo

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Run(m)) }

// TestCaptainDevRunsThreeReleasesAndRollsBackTheThird runs `captain dev --no-wait` with the
// three binaries side by side, as `make build` leaves them, and reads its timeline.
func TestCaptainDevRunsThreeReleasesAndRollsBackTheThird(t *testing.T) {
	if _, err := s3test.Binary(); err != nil {
		t.Skip(err.Error())
	}
	bins := harness.Binaries(t)
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.Captain, "dev", "--dir", dir, "--no-wait")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := time.Now()
	err := cmd.Run()
	took := time.Since(started)
	text := out.String()
	if err != nil {
		t.Fatalf("captain dev --no-wait: %v after %s\n%s", err, took, text)
	}
	t.Logf("captain dev --no-wait ran %s:\n%s", took.Round(100*time.Millisecond), text)

	if !strings.Contains(text, "captaind and captain-agent next to "+bins.Captain) {
		t.Errorf("captain dev did not use the binaries next to it")
	}
	for _, want := range []string{
		"release #1 is on all 8 hosts",
		"release #2 is on all 8 hosts",
		"release #3 created",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The timeline: release 3 deploys to the one-box, the stage rolls back and blocks itself.
	for _, re := range []string{
		`wave 1  use1-onebox\s+#3 deploying`,
		`wave 1  use1-onebox\s+#3 failed, rolled back: use1-onebox #2 1/1; BLOCKED in\+out by `,
		`wave 2  usw2\s+#2 approved: usw2-az1 #2 2/2, usw2-az2 #2 2/2`,
		`use1-onebox deploy #3: failed`,
		`use1-onebox rollback #2: succeeded \(from #3, automatic trigger`,
		`export CAPTAIN_ADDR=127\.0\.0\.1:\d+ CAPTAIN_TOKEN=cpt_admin_[0-9a-f]+`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("output does not match %q", re)
		}
	}
	// The summary reads the final state: every environment on release 2 (the one-box back on it).
	for _, env := range []string{"use1-onebox", "use1-az1", "use1-az2", "use1-az3", "usw2-az1", "usw2-az2"} {
		if !regexp.MustCompile(`(?m)^  wave \d  \S+\s+` + env + `\s+release #2 on (\d)/(\d) hosts, last good #2$`).MatchString(text) {
			t.Errorf("summary does not show %s on release 2 with every host healthy", env)
		}
	}
	// Release 3 never leaves the one-box.
	if regexp.MustCompile(`(use1-az|usw2)\S*\s+#3 `).MatchString(text) {
		t.Errorf("release 3 reached a stage after the one-box")
	}
	m := regexp.MustCompile(`scripted part done in (\S+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no summary line")
	}
	scripted, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	if scripted > 2*time.Minute {
		t.Errorf("scripted part took %s, want under 2 minutes", scripted)
	}
	// Everything stopped and the state is gone.
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state dir %s still there after exit (err %v)", dir, err)
	}
	if left := processesUnder(t, dir); len(left) > 0 {
		t.Errorf("processes still running from %s:\n%s", dir, strings.Join(left, "\n"))
	}
}

// processesUnder lists processes whose command line names dir: app servers, agents and
// coordinators all have it in their arguments or executable path.
func processesUnder(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var left []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		cmdline := strings.ReplaceAll(string(b), "\x00", " ")
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if strings.Contains(cmdline, dir) || strings.HasPrefix(exe, dir) {
			left = append(left, e.Name()+": "+cmdline)
		}
	}
	return left
}
