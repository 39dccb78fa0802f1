// Package demo runs `captain dev` as a newcomer would and checks what it prints.
package demo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Run(m)) }

var (
	exportLine  = regexp.MustCompile(`(?m)^  (export CAPTAIN_ADDR=(127\.0\.0\.1:\d+) CAPTAIN_TOKEN=(cpt_admin_[0-9a-f]+))$`)
	uiLine      = regexp.MustCompile(`(?m)^  UI: http://(127\.0\.0\.1:\d+)/ui/`)
	s3Line      = regexp.MustCompile(`(?m)^  (export CAPTAIN_S3_ENDPOINT=http://127\.0\.0\.1:\d+ AWS_ACCESS_KEY_ID=\w+ AWS_SECRET_ACCESS_KEY=\w+ AWS_REGION=us-east-1)$`)
	artifactRef = regexp.MustCompile(`artifact (s3://captain-artifacts/artifacts/web/[0-9a-f]{64}\.tar\.zst)`)
)

// s3Modes are the artifact stores `captain dev --s3` runs; versitygw needs the binary.
var s3Modes = []struct {
	name      string
	flag      string
	versitygw bool
	store     string // how the output names the store
}{
	{"versitygw", "versitygw", true, `artifact store: versitygw \S+ on http://127\.0\.0\.1:\d+, bucket captain-artifacts`},
	{"embedded S3", "embedded", false, `artifact store: EMBEDDED S3 on http://127\.0\.0\.1:\d+, bucket captain-artifacts, in this process and in memory[^\n]*\n[^\n]*for development only, not for production`},
}

// TestCaptainDevRunsThreeReleasesAndRollsBackTheThird runs `captain dev --no-wait` with the
// three binaries side by side, as `make build` leaves them, once with each artifact store, and
// reads its timeline: the same releases go the same way through both.
func TestCaptainDevRunsThreeReleasesAndRollsBackTheThird(t *testing.T) {
	for _, mode := range s3Modes {
		t.Run(mode.name, func(t *testing.T) {
			if _, err := s3test.Binary(); mode.versitygw && err != nil {
				t.Skip(err.Error())
			}
			bins := harness.Binaries(t)
			dir := filepath.Join(t.TempDir(), "dev")
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bins.Captain, "dev", "--dir", dir, "--no-wait", "--s3", mode.flag)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			started := time.Now()
			err := cmd.Run()
			took := time.Since(started)
			text := out.String()
			if err != nil {
				t.Fatalf("captain dev --no-wait: %v after %s\n%s", err, took, text)
			}
			t.Logf("captain dev --no-wait --s3 %s ran %s:\n%s", mode.flag, took.Round(100*time.Millisecond), text)

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
				mode.store,
				`wave 1  use1-onebox\s+#3 deploying`,
				`wave 1  use1-onebox\s+#3 failed, rolled back: use1-onebox #2 1/1; BLOCKED in\+out by `,
				`wave 2  usw2\s+#2 approved: usw2-az1 #2 2/2, usw2-az2 #2 2/2`,
				`use1-onebox deploy #3: failed`,
				`use1-onebox rollback #2: succeeded \(from #3, automatic trigger`,
			} {
				if !regexp.MustCompile(re).MatchString(text) {
					t.Errorf("output does not match %q", re)
				}
			}
			checkAccessLines(t, text)
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
		})
	}
}

// checkAccessLines checks the lines printed for the user: the export line on its own, with
// the first coordinator's address and an admin token, and the UI URL on the same address.
func checkAccessLines(t *testing.T, text string) {
	t.Helper()
	exp := exportLine.FindStringSubmatch(text)
	if exp == nil {
		t.Errorf("no line `  export CAPTAIN_ADDR=127.0.0.1:PORT CAPTAIN_TOKEN=cpt_admin_…` in the output")
		return
	}
	ui := uiLine.FindStringSubmatch(text)
	if ui == nil {
		t.Errorf("no line `  UI: http://127.0.0.1:PORT/ui/` in the output")
		return
	}
	if ui[1] != exp[2] {
		t.Errorf("the UI is on %s, the export line names %s; want the first coordinator for both", ui[1], exp[2])
	}
	if !regexp.MustCompile(`coordinator n1: API http://` + regexp.QuoteMeta(exp[2]) + `,`).MatchString(text) {
		t.Errorf("the export line names %s, which is not coordinator n1's API", exp[2])
	}
}

// TestCaptainDevStopsEverythingOnCtrlC runs `captain dev` as `make demo` does, until Ctrl-C:
// while it waits, the pasted export line drives the CLI against it, every process it started
// runs with its state under --dir, and nothing else is written to TMPDIR; after SIGINT every one
// of those processes is gone and the state dir removed, or kept with --keep.
func TestCaptainDevStopsEverythingOnCtrlC(t *testing.T) {
	for _, tc := range []struct {
		name      string
		s3        string
		versitygw bool
		keep      bool
	}{
		{"versitygw and state removed", "versitygw", true, false},
		{"embedded S3 and state kept with --keep", "embedded", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s3test.Binary(); tc.versitygw && err != nil {
				t.Skip(err.Error())
			}
			bins := harness.Binaries(t)
			dir := filepath.Join(t.TempDir(), "dev")
			tmp := t.TempDir()
			args := []string{"dev", "--dir", dir, "--s3", tc.s3}
			if tc.keep {
				args = append(args, "--keep")
			}
			dev := startDev(t, bins.Captain, tmp, args...)

			harness.Eventually(t, 3*time.Minute, "captain dev to finish its scripted part and wait for Ctrl-C", func() bool {
				if exited, err := dev.Exited(); exited {
					t.Fatalf("captain dev exited before Ctrl-C: %v\n%s", err, dev.Log())
				}
				return strings.Contains(dev.Log(), "running until Ctrl-C")
			})
			text := dev.Log()
			checkAccessLines(t, text)

			// The export lines pasted into a shell, then the commands of the other issues.
			export := exportLine.FindStringSubmatch(text)[1]
			s3 := s3Line.FindStringSubmatch(text)
			if s3 == nil {
				t.Fatalf("no line `  export CAPTAIN_S3_ENDPOINT=… AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… AWS_REGION=us-east-1` in the output")
			}
			captain := func(cmd string) (string, error) {
				sh := exec.Command("sh", "-c", export+"\n"+s3[1]+"\nexec "+bins.Captain+" "+cmd)
				sh.Env = withoutCaptainEnv(os.Environ())
				out, err := sh.CombinedOutput()
				return string(out), err
			}
			refs := map[int]string{}
			for n := 2; n <= 3; n++ {
				out, err := captain(fmt.Sprintf("release show web %d", n))
				m := artifactRef.FindStringSubmatch(out)
				if err != nil || m == nil {
					t.Fatalf("captain release show web %d: %v\n%s", n, err, out)
				}
				refs[n] = m[1]
			}
			pub := filepath.Join(dir, "release.key.pub")
			for _, c := range []struct {
				cmd  string
				want string
			}{
				{"status web", "use1-onebox"},
				{"hosts --pipeline web", "usw2-az2-2"},
				{"history --pipeline web --env use1-onebox", "rollback"},
				{"where c2c2c2c", "usw2-az2"},
				// The coordinators read the manifests from the artifact store for file changes.
				{"release diff web 2 3", "config.json"},
				{"rollback --pipeline web --env use1-az1 --to 1 --preview", "artifact file changes: 2"},
				// The artifact commands reach the store with the credentials of the second line.
				{"artifact diff " + refs[2] + " " + refs[3] + " --trusted-key " + pub, "config.json"},
				{"artifact fetch " + refs[2] + " --out " + filepath.Join(t.TempDir(), "web-2") + " --trusted-key " + pub, "web-2"},
			} {
				if out, err := captain(c.cmd); err != nil || !strings.Contains(out, c.want) {
					t.Errorf("after pasting the export lines, captain %s: %v\n%s\nwant it to mention %q", c.cmd, err, out, c.want)
				}
			}

			running := processesUnder(t, dir)
			counts := map[string]int{}
			for _, p := range running {
				for _, kind := range []string{"captaind ", "captain-agent run", "web serve", "versitygw "} {
					if strings.Contains(p, kind) {
						counts[kind]++
					}
				}
			}
			want := map[string]int{"captaind ": 3, "captain-agent run": 8, "web serve": 8}
			if tc.versitygw {
				want["versitygw "] = 1
			}
			for kind, n := range want {
				if counts[kind] != n {
					t.Errorf("%d processes %q with state under %s, want %d:\n%s", counts[kind], kind, dir, n, strings.Join(running, "\n"))
				}
			}

			if err := dev.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			exited, err := dev.Wait(60 * time.Second)
			if !exited {
				t.Fatalf("captain dev still running 60s after SIGINT\n%s", dev.Log())
			}
			if err != nil {
				t.Errorf("captain dev after SIGINT: %v\n%s", err, dev.Log())
			}
			if left := processesUnder(t, dir); len(left) > 0 {
				t.Errorf("processes still running from %s after SIGINT:\n%s", dir, strings.Join(left, "\n"))
			}
			for _, p := range running {
				pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
				if alive(pid) {
					t.Errorf("process %s still alive after SIGINT", p)
				}
			}
			if tc.keep {
				for _, p := range []string{"n1.log", "n1", "admin.token", "agents/use1-onebox-1/agent.log", "agents/use1-onebox-1/root/srv/web/current", "s3.log"} {
					if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
						t.Errorf("--keep: %v", err)
					}
				}
				if !strings.Contains(dev.Log(), "stopped; state kept in "+dir) {
					t.Errorf("output does not say the state was kept in %s", dir)
				}
			} else if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("state dir %s still there after SIGINT (err %v)", dir, err)
			}
			// With --dir every file of the run lives there: the temp dir holds nothing.
			if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("captain dev --dir left %s in TMPDIR", strings.Join(names, ", "))
			}
		})
	}
}

// startDev starts captain dev with TMPDIR set to tmp. If the test ends with it still running,
// it gets a Ctrl-C, then SIGKILL, and whatever it left under its --dir is killed by pid.
func startDev(t *testing.T, captain, tmp string, args ...string) *harness.Process {
	t.Helper()
	cmd := exec.Command(captain, args...)
	cmd.Env = append(withoutCaptainEnv(os.Environ()), "TMPDIR="+tmp)
	dev := harness.StartCmd(t, "captain dev", cmd)
	dir := args[slices.Index(args, "--dir")+1]
	// Registered after StartCmd's cleanup, so it runs first: the Ctrl-C a user would give.
	t.Cleanup(func() {
		if exited, _ := dev.Exited(); !exited {
			_ = dev.Signal(os.Interrupt)
			if ok, _ := dev.Wait(60 * time.Second); !ok {
				dev.Kill()
			}
		}
		for _, p := range processesUnder(t, dir) {
			if pid, err := strconv.Atoi(strings.SplitN(p, ":", 2)[0]); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return dev
}

// withoutCaptainEnv drops CAPTAIN_* from env: the test must reach the demo through what it
// prints, not through a developer's own settings.
func withoutCaptainEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "CAPTAIN_") {
			out = append(out, kv)
		}
	}
	return out
}

// alive is false for a process that is gone or a zombie waiting to be reaped.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// processesUnder lists processes ("PID: command line") whose command line names dir: app
// servers, agents, coordinators and versitygw all have it in their arguments or executable
// path.
func processesUnder(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var left []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		cmdline := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if (strings.Contains(cmdline, dir) || strings.HasPrefix(exe, dir)) && alive(pid) {
			left = append(left, e.Name()+": "+cmdline)
		}
	}
	return left
}
