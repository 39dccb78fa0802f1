package coordcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
)

const pipelineYAML = `
name: web
deploy:
  app_root: /srv/web
  systemd_unit: web.service
stages:
  - name: onebox
    wave: 1
    environments:
      - name: onebox
        selector: {role: onebox}
`

// captain runs the commands as the real CLI would, returning stdout and the error.
func captain(t *testing.T, addr, token string, args ...string) (string, error) {
	t.Helper()
	cfg := &clientcfg.Config{}
	root := &cobra.Command{Use: "captain", SilenceUsage: true, SilenceErrors: true}
	cfg.BindFlags(root.PersistentFlags())
	root.AddCommand(NewCommands(cfg)...)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs(append([]string{"--addr", addr, "--token", token, "--timeout", "10s"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func TestCommandsAgainstARealCluster(t *testing.T) {
	c := clustertest.New(t, 1)
	addr := c.Nodes[0].APIAddr
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sha := strings.Repeat("ab", 32)
	specFile := write("pipeline.yaml", pipelineYAML)
	badSpec := write("bad.yaml", strings.Replace(pipelineYAML, "selector: {role: onebox}", "selector: {}", 1))
	commits := write("commits.txt", "1111111111111111111111111111111111111111\tAnn <a@x>\tfix login\n2222222222222222222222222222222222222222 tidy\n")
	pushJSON := write("push.json", fmt.Sprintf(`{"ref":{"bucket":"builds","pipeline":"web","sha256":%q},"uri":"s3://builds/artifacts/web/%s.tar.zst",
		"size":2048,"archive_key":"artifacts/web/%s.tar.zst","manifest_key":"artifacts/web/%s.manifest.json","signature_key":"artifacts/web/%s.sig","existed":false}`,
		sha, sha, sha, sha, sha))
	snap := filepath.Join(dir, "backup.snap")

	steps := []struct {
		args    []string
		token   string
		want    string // in stdout
		wantErr string // in the error
	}{
		{args: []string{"pipeline", "apply", "-f", specFile}, want: "pipeline web: stored version 1"},
		{args: []string{"pipeline", "apply", "-f", specFile}, want: "unchanged (version 1)"},
		{args: []string{"pipeline", "apply", "-f", badSpec}, wantErr: "stages[0].environments[0].selector"},
		{args: []string{"pipeline", "list"}, want: "web "},
		{args: []string{"pipeline", "get", "web", "-o", "json"}, want: `"name": "web"`},
		{args: []string{"pipeline", "versions", "web"}, want: "initial-admin"},
		{args: []string{"pipeline", "get", "nope"}, wantErr: `pipeline "nope"`},
		{args: []string{"release", "create", "--pipeline", "web", "--artifact-file", pushJSON, "--commit", "1111111111111111111111111111111111111111", "--commits-file", commits}, want: "created release web/1 (2 commits)"},
		{args: []string{"release", "create", "--pipeline", "web", "--artifact-file", pushJSON, "--commit", "1111111111111111111111111111111111111111"}, want: "release web/1 already exists"},
		{args: []string{"release", "create", "--pipeline", "web", "--artifact", "s3://builds/artifacts/web/" + strings.Repeat("cd", 32) + ".tar.zst", "--artifact-size", "9", "--commit", "3333333333333333333333333333333333333333"}, want: "created release web/2"},
		{args: []string{"release", "create", "--pipeline", "web", "--artifact", "s3://oops", "--commit", "33333333"}, wantErr: "artifact reference"},
		{args: []string{"release", "list", "--pipeline", "web"}, want: "2        333333333333"},
		{args: []string{"release", "show", "web", "1"}, want: "fix login"},
		{args: []string{"release", "show", "web", "1", "-o", "json"}, want: `"manifest_key": "artifacts/web/` + sha + `.manifest.json"`},
		{args: []string{"token", "create", "--role", "viewer", "--name", "dash"}, want: "cpt_"},
		{args: []string{"token", "list"}, want: "dash"},
		{args: []string{"token", "create", "--role", "king", "--name", "x"}, wantErr: "want admin, deployer, viewer or agent"},
		{args: []string{"audit", "--since", "1h", "--actor", "initial-admin"}, want: "release.create"},
		{args: []string{"cluster", "peers"}, want: "node0  leader"},
		{args: []string{"cluster", "leader"}, want: "leader node0"},
		{args: []string{"cluster", "snapshot", "save", snap}, want: "saved"},
		{args: []string{"cluster", "snapshot", "restore", snap}, wantErr: "pass --yes"},
		{args: []string{"cluster", "snapshot", "restore", snap, "--yes"}, want: "restored"},
		{args: []string{"release", "list", "--pipeline", "web"}, token: "cpt_wrong_1", wantErr: "not authenticated: unknown token"},
	}
	for _, s := range steps {
		token := s.token
		if token == "" {
			token = clustertest.AdminSecret
		}
		out, err := captain(t, addr, token, s.args...)
		name := strings.Join(s.args, " ")
		if s.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), s.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("captain %s: err = %v, want one line containing %q", name, err, s.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("captain %s: %v", name, err)
		}
		if strings.Contains(name, "-o json") {
			// protojson randomizes its whitespace on purpose; compare without it.
			out, s.want = strings.Join(strings.Fields(out), ""), strings.Join(strings.Fields(s.want), "")
		}
		if !strings.Contains(out, s.want) {
			t.Fatalf("captain %s: output lacks %q:\n%s", name, s.want, out)
		}
	}

	// The token printed by `token create` works and has its role.
	out, err := captain(t, addr, clustertest.AdminSecret, "token", "create", "--role", "deployer", "--name", "ci", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ Secret string }
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Secret == "" {
		t.Fatalf("token create -o json = %q (%v)", out, err)
	}
	if _, err := captain(t, addr, created.Secret, "token", "list"); err == nil || !strings.Contains(err.Error(), "needs role admin") {
		t.Fatalf("deployer listing tokens: %v, want permission denied naming admin", err)
	}
}

func TestParseSinceAcceptsDurationsAndTimes(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"24h":                  now.Add(-24 * time.Hour),
		"90m":                  now.Add(-90 * time.Minute),
		"2026-11-01T00:00:00Z": time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseSince("yesterday", now); err == nil {
		t.Error("parseSince(yesterday) accepted")
	}
}
