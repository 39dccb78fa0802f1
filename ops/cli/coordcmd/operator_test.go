package coordcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/coordinator/daemon"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/ops/cli/statuscmd"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

const twoStageYAML = `
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
  - name: zone
    wave: 2
    approval:
      manual: {required: true}
    environments:
      - name: zone-a
        selector: {role: zone}
`

// result is one CLI invocation: its stdout, stderr and error.
type result struct {
	out, errOut string
	err         error
}

// captainWith runs the CLI like the user would, with stdin from in (never a terminal here, so
// a test cannot hang on a prompt).
func captainWith(t *testing.T, addr string, in io.Reader, args ...string) result {
	t.Helper()
	cfg := &clientcfg.Config{}
	root := &cobra.Command{Use: "captain", SilenceUsage: true, SilenceErrors: true}
	cfg.BindFlags(root.PersistentFlags())
	root.AddCommand(NewCommands(cfg)...)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(in)
	root.SetArgs(append([]string{"--addr", addr, "--token", clustertest.AdminSecret, "--timeout", "10s"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return result{out.String(), errOut.String(), err}
}

// cliStep is one command and what its output or error must show.
type cliStep struct {
	name    string
	args    []string
	want    []string // in stdout, in this order; JSON compared without whitespace
	wantRE  string   // stdout matches
	wantErr string   // in the one-line error
}

func (s cliStep) check(t *testing.T, r result) {
	t.Helper()
	line := "captain " + strings.Join(s.args, " ")
	if s.wantErr != "" {
		if r.err == nil || !strings.Contains(r.err.Error(), s.wantErr) || strings.Contains(r.err.Error(), "\n") {
			t.Fatalf("%s: %s: err = %v, want one line containing %q", s.name, line, r.err, s.wantErr)
		}
		return
	}
	if r.err != nil {
		t.Fatalf("%s: %s: %v", s.name, line, r.err)
	}
	isJSON := strings.Contains(line, "-o json")
	rest := r.out
	if isJSON {
		// protojson randomizes its whitespace on purpose; compare without it.
		rest = strings.Join(strings.Fields(rest), "")
	}
	for _, w := range s.want {
		if isJSON {
			w = strings.Join(strings.Fields(w), "")
		}
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("%s: %s: output lacks %q (in order):\n%s", s.name, line, w, r.out)
		}
		rest = rest[i+len(w):]
	}
	if s.wantRE != "" && !regexp.MustCompile(s.wantRE).MatchString(r.out) {
		t.Fatalf("%s: %s: output does not match %s:\n%s", s.name, line, s.wantRE, r.out)
	}
}

// fakeHost is a registered host driven through the real AgentService: it heartbeats, reads its
// desired state from Watch, and reports every new deployment healthy, as an agent would after
// a clean deploy.
type fakeHost struct {
	id, name string
	cl       *clustertest.Clients
	seq      uint64
	onDisk   []*captainv1.ReleaseOnDisk
	reported map[string]bool
}

func registerHost(t *testing.T, c *clustertest.Cluster, n *clustertest.Node, joinSecret, name string, labels map[string]string) *fakeHost {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg, err := c.Client(n, joinSecret).Agent.Register(ctx, connect.NewRequest(&captainv1.RegisterRequest{Hostname: name, Labels: labels, AgentVersion: "1.4.2"}))
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	id := reg.Msg.GetHostId()
	return &fakeHost{id: id, name: name, cl: c.Client(n, "host:"+id+":"+reg.Msg.GetHostSecret()), reported: map[string]bool{}}
}

func (h *fakeHost) step() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := h.cl.Agent.Heartbeat(ctx, connect.NewRequest(&captainv1.HeartbeatRequest{HostId: h.id})); err != nil {
		return fmt.Errorf("heartbeat %s: %w", h.name, err)
	}
	stream, err := h.cl.Agent.Watch(ctx, connect.NewRequest(&captainv1.WatchRequest{HostId: h.id}))
	if err != nil {
		return err
	}
	if !stream.Receive() {
		return fmt.Errorf("watch %s: %w", h.name, stream.Err())
	}
	apps := stream.Msg().GetApps()
	_ = stream.Close()
	for _, a := range apps {
		if a.GetDeploymentId() == "" || h.reported[a.GetDeploymentId()] {
			continue
		}
		dir := fmt.Sprintf("/srv/web/releases/%d-%s", a.GetRelease(), a.GetDeploymentId())
		h.onDisk = append(h.onDisk, &captainv1.ReleaseOnDisk{Release: a.GetRelease(), DeploymentId: a.GetDeploymentId(), Dir: dir})
		h.seq++
		check := &captainv1.StepOutput{Name: "http :8080/healthz", ExitCode: 200, Output: "ok", Passed: true}
		_, err := h.cl.Agent.Report(ctx, connect.NewRequest(&captainv1.ReportRequest{HostId: h.id, Events: []*captainv1.HostEvent{{
			Seq: h.seq, Pipeline: a.GetPipeline(), DeploymentId: a.GetDeploymentId(), Release: a.GetRelease(),
			State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, Message: "healthy",
			Outputs: []*captainv1.StepOutput{{Name: "before_activate", Output: "migrations: none to run\n", Passed: true}, check},
			App: &captainv1.HostApp{
				Pipeline: a.GetPipeline(), Environment: a.GetEnvironment(), CurrentRelease: a.GetRelease(), CurrentTarget: dir,
				CurrentDeploymentId: a.GetDeploymentId(), ReleasesOnDisk: h.onDisk, Health: captainv1.HealthState_HEALTH_STATE_HEALTHY,
				HealthChecks: []*captainv1.StepOutput{check}, LastResult: fmt.Sprintf("healthy on release %d", a.GetRelease()),
			},
		}}}))
		if err != nil {
			return fmt.Errorf("report %s: %w", h.name, err)
		}
		h.reported[a.GetDeploymentId()] = true
	}
	return nil
}

// settle lets the hosts act until cond holds.
func settle(t *testing.T, hosts []*fakeHost, cond func() error) {
	t.Helper()
	clustertest.Eventually(t, 20*time.Second, func() error {
		for _, h := range hosts {
			if err := h.step(); err != nil {
				return err
			}
		}
		return cond()
	})
}

func stageIs(admin *clustertest.Clients, stage string, phase captainv1.StagePhase, release uint64) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := admin.Deployment.GetStatus(ctx, connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web", Read: consistentRead()}))
		if err != nil {
			return err
		}
		for _, s := range st.Msg.GetStages() {
			if s.GetStage() == stage {
				if s.GetPhase() != phase || s.GetRelease() != release {
					return fmt.Errorf("stage %s is %s with #%d, want %s with #%d", stage, s.GetPhase(), s.GetRelease(), phase, release)
				}
				return nil
			}
		}
		return fmt.Errorf("no stage %s", stage)
	}
}

// TestOperatorCommandsOnAFollower drives a pipeline through real releases, hosts and approvals
// on a three-node cluster and runs every operator command against a follower, so reads that
// must reach the leader (heartbeats) are seen to be forwarded.
func TestOperatorCommandsOnAFollower(t *testing.T) {
	c := clustertest.New(t, 3)
	leader := c.Leader(5 * time.Second)
	follower := c.Followers()[0]
	addr := follower.APIAddr
	admin := c.Client(leader, "")
	// CAPTAIN_TEST_SHOW_OUTPUT=1 logs every command with its output, to look at the tables.
	cli := func(args ...string) result {
		r := captainWith(t, addr, strings.NewReader(""), args...)
		if os.Getenv("CAPTAIN_TEST_SHOW_OUTPUT") != "" {
			t.Logf("$ captain %s\n%s%s%v", strings.Join(args, " "), r.out, r.errOut, r.err)
		}
		return r
	}

	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if r := cli("pipeline", "apply", "-f", write("pipeline.yaml", twoStageYAML)); r.err != nil {
		t.Fatal(r.err)
	}
	// Before any host or release: status draws the stages idle, hosts says how to add some.
	if r := cli("status", "web"); r.err != nil || !strings.Contains(r.out, "wave 2\n  zone") || !strings.Contains(r.out, "idle") {
		t.Fatalf("status of an empty pipeline: %v\n%s", r.err, r.out)
	}
	if r := cli("hosts"); r.err != nil || !strings.Contains(r.out, "no hosts") {
		t.Fatalf("hosts before any host: %v\n%s", r.err, r.out)
	}

	join := cli("token", "create", "--role", "agent", "--name", "fleet", "-o", "json")
	var tok struct{ Secret string }
	if err := json.Unmarshal([]byte(join.out), &tok); err != nil || join.err != nil {
		t.Fatalf("token create: %v %v %s", join.err, err, join.out)
	}
	onebox := registerHost(t, c, follower, tok.Secret, "web-1", map[string]string{"role": "onebox", "az": "use1-az1"})
	zone := registerHost(t, c, follower, tok.Secret, "web-2", map[string]string{"role": "zone", "az": "use1-az2"})
	hosts := []*fakeHost{onebox, zone}

	sha1, sha2 := strings.Repeat("1", 40), strings.Repeat("2", 40)
	release := func(n int, head, commits string) {
		t.Helper()
		r := cli("release", "create", "--pipeline", "web", "--commit", head, "--commits-file", write(fmt.Sprintf("c%d.txt", n), commits),
			"--artifact", "s3://builds/artifacts/web/"+strings.Repeat(fmt.Sprint(n), 64)+".tar.zst", "--artifact-size", "9")
		if r.err != nil {
			t.Fatalf("release %d: %v", n, r.err)
		}
	}
	release(1, sha1, sha1+"\tAnn <ann@example.com>\tadd login page\n")
	settle(t, hosts, stageIs(admin, "zone", captainv1.StagePhase_STAGE_PHASE_VERIFYING, 1))

	check := func(steps []cliStep) {
		t.Helper()
		for _, s := range steps {
			s.check(t, cli(s.args...))
		}
	}
	check([]cliStep{
		{name: "status shows the manual approval waiting", args: []string{"status", "web"},
			want: []string{"pipeline web, spec version 1, newest release #1", "wave 1\n  onebox", "#1", "wave 2\n  zone", "verifying", "manual waiting", "└ zone-a: #1, 1/1 healthy"}},
		{name: "status of every pipeline", args: []string{"status"}, want: []string{"pipeline web"}},
		{name: "status JSON", args: []string{"status", "web", "-o", "json"}, want: []string{`"stage": "zone"`, `"phase": "STAGE_PHASE_VERIFYING"`, `"latest_release": "1"`}},
		{name: "status JSON of every pipeline is one array", args: []string{"status", "-o", "json"}, want: []string{`[{"pipeline":`}},
		{name: "status of an unknown pipeline", args: []string{"status", "nope"}, wantErr: `pipeline "nope" not found`},
		{name: "approve a release the stage does not verify", args: []string{"approve", "--pipeline", "web", "--stage", "zone", "--release", "5"},
			wantErr: `stage "zone" of pipeline "web" runs release 1, not 5`},
		{name: "approve an unknown stage", args: []string{"approve", "--pipeline", "web", "--stage", "nope", "--release", "1"}, wantErr: `stage "nope" not found`},
		{name: "approve", args: []string{"approve", "--pipeline", "web", "--stage", "zone", "--release", "1", "--comment", "dashboards fine"},
			want: []string{"approved release #1 in stage zone of pipeline web", "manual passed"}},
	})

	// Release 2 reaches onebox and waits for the manual approval in zone.
	release(2, sha2, sha2+"\tBob <bob@example.com>\tswitch sessions to redis\n")
	settle(t, hosts, stageIs(admin, "zone", captainv1.StagePhase_STAGE_PHASE_VERIFYING, 2))

	var hist struct {
		Deployments []struct{ ID string }
	}
	r := cli("history", "--pipeline", "web", "--env", "zone-a", "-o", "json")
	if err := json.Unmarshal([]byte(r.out), &hist); r.err != nil || err != nil || len(hist.Deployments) != 2 {
		t.Fatalf("history -o json: %v %v\n%s", r.err, err, r.out)
	}
	latest := hist.Deployments[0].ID
	// WhereIsCommit answers from the node asked: let the follower catch up with the leader.
	clustertest.Eventually(t, 5*time.Second, func() error {
		if f, l := follower.State().Index(), leader.State().Index(); f < l {
			return fmt.Errorf("follower at index %d, leader at %d", f, l)
		}
		return nil
	})

	check([]cliStep{
		{name: "history", args: []string{"history", "--pipeline", "web", "--env", "zone-a"},
			want:   []string{"DEPLOYMENT", "KIND", "RELEASE", "FROM", "TRIGGER", "STARTED", "FINISHED", "RESULT", "COMMITS ADDED", latest, "deploy", "#2", "#1", "pipeline", "succeeded", "1: 2222222 switch sessions to redis", "deploy", "#1", "-", "pipeline"},
			wantRE: `ago\s+\d+s ago\s+succeeded\s+1: 2222222`},
		{name: "history limit", args: []string{"history", "--pipeline", "web", "--env", "zone-a", "--limit", "1"}, want: []string{latest}},
		{name: "history of an unknown environment", args: []string{"history", "--pipeline", "web", "--env", "nope"}, wantErr: `environment "nope"`},
		{name: "history needs the environment", args: []string{"history", "--pipeline", "web"}, wantErr: "--pipeline and --env are required"},
		{name: "deployment", args: []string{"deployment", latest},
			want: []string{"deployment " + latest + ": deploy of release #2 to zone-a (stage zone, pipeline web), from #1", "trigger:  pipeline", "result:   succeeded",
				"HOST", "BATCH", "STATE", zone.id, "1", "healthy", zone.id, "before_activate: passed", "| migrations: none to run", "http :8080/healthz: passed, exit 200"}},
		{name: "deployment JSON", args: []string{"deployment", latest, "-o", "json"}, want: []string{`"id": "` + latest + `"`, `"host_id": "` + zone.id + `"`}},
		{name: "unknown deployment", args: []string{"deployment", "d-999999"}, wantErr: `deployment "d-999999" not found`},
		{name: "where a commit everywhere", args: []string{"where", "1111111"},
			want: []string{"commit " + sha1 + ", first released in web #1", "PIPELINE", "STAGE", "ENVIRONMENT", "COMMIT", "SINCE", "RUNS", "DEPLOYMENT", "web", "onebox", "onebox", "contains", "ago", "#2", "web", "zone", "zone-a", "contains"}},
		{name: "where JSON", args: []string{"where", "2222222", "--pipeline", "web", "-o", "json"}, want: []string{`"commit": "` + sha2 + `"`, `"first_release": {"web": "2"}`}},
		{name: "where an unknown commit", args: []string{"where", "deadbeef"}, wantErr: `commit "deadbeef" is in no release`},
		{name: "hosts", args: []string{"hosts"},
			want:   []string{"ID", "HOSTNAME", "LIVENESS", "HEARTBEAT", "AGENT", "LABELS", "PIPELINE", "ENV", "RELEASE", "CURRENT", "ON DISK", "HEALTH"},
			wantRE: `(?m)^h-[0-9a-f]{12}\s+web-1\s+up\s+\d+s ago\s+1\.4\.2\s+az=use1-az1,role=onebox\s+web\s+onebox\s+#2\s+2-d\S+\s+1,2\s+healthy$`},
		{name: "hosts of one environment", args: []string{"hosts", "--pipeline", "web", "--env", "zone-a"}, wantRE: `(?s)web-2.*zone-a`},
		{name: "hosts --env needs --pipeline", args: []string{"hosts", "--env", "zone-a"}, wantErr: "--env zone-a needs --pipeline"},
		{name: "hosts JSON carries the leader's heartbeat", args: []string{"hosts", "-o", "json"}, want: []string{`"last_heartbeat_at":`}},
		{name: "host", args: []string{"host", onebox.id},
			want: []string{"host " + onebox.id + " (web-1), agent 1.4.2, registered", "liveness:  up since", "last heartbeat", "ago", "labels:    az=use1-az1,role=onebox",
				"pipeline web, environment onebox", "release:     #2 (deployment", "current ->   /srv/web/releases/2-", "health:      healthy", "last result: healthy on release 2",
				"releases on disk:", "RELEASE", "DEPLOYMENT", "DIRECTORY", "#1", "#2", "<- current", "health checks:", "http :8080/healthz: passed"}},
		{name: "unknown host", args: []string{"host", "h-000000000000"}, wantErr: "not found"},
		{name: "alarm set", args: []string{"alarm", "set", "checkout-errors", "--state", "alarm", "--reason", "5xx above 2%"}, want: []string{"alarm checkout-errors is alarm (set by api:initial-admin)"}},
		{name: "alarm set a bad state", args: []string{"alarm", "set", "checkout-errors", "--state", "red"}, wantErr: "want ok, alarm or insufficient_data"},
		{name: "alarm set without a state", args: []string{"alarm", "set", "checkout-errors"}, wantErr: "--state is required"},
		{name: "alarm list", args: []string{"alarm", "list"}, want: []string{"NAME", "STATE", "SOURCE", "CHANGED", "REASON", "checkout-errors", "alarm", "api:initial-admin", "ago", "5xx above 2%"}},
		{name: "alarm back to ok", args: []string{"alarm", "set", "checkout-errors", "--state", "ok"}, want: []string{"is ok"}},
		{name: "alarm list JSON", args: []string{"alarm", "list", "-o", "json"}, want: []string{`"name": "checkout-errors"`, `"state": "ALARM_STATE_OK"`}},
		{name: "disable promotions without a reason", args: []string{"promotions", "disable", "--pipeline", "web", "--stage", "onebox"},
			wantErr: "reason: required when disabling promotions"},
		{name: "disable promotions in", args: []string{"promotions", "disable", "--pipeline", "web", "--stage", "onebox", "--in", "--reason", "sale freeze"},
			want: []string{"stage onebox of pipeline web: promotions blocked in by initial-admin", "ago: sale freeze (promotions out are enabled)"}},
		{name: "status shows the block", args: []string{"status", "web"}, want: []string{"blocked in by initial-admin", "sale freeze"}},
		{name: "enable promotions", args: []string{"promotions", "enable", "--pipeline", "web", "--stage", "onebox"},
			want: []string{"stage onebox of pipeline web: promotions enabled in and out"}},
		{name: "promotions of an unknown stage", args: []string{"promotions", "disable", "--pipeline", "web", "--stage", "nope", "--reason", "x"}, wantErr: `stage "nope" not found`},
	})

	// Rollback of zone (on #2, last good #1): the preview comes first, then a refusal without
	// --yes since stdin is no terminal.
	t.Run("rollback", func(t *testing.T) {
		r := cli("rollback", "--pipeline", "web", "--stage", "zone", "--preview")
		if r.err != nil {
			t.Fatalf("rollback --preview: %v", r.err)
		}
		for _, want := range []string{"stage zone, environment zone-a: #2 -> #1", "hosts affected: 1 (" + zone.id + ")", "commits that go away: 1", "2222222  switch sessions to redis  (Bob <bob@example.com>)"} {
			if !strings.Contains(r.out, want) {
				t.Fatalf("preview lacks %q:\n%s", want, r.out)
			}
		}
		r = cli("rollback", "--pipeline", "web", "--stage", "zone", "--reason", "redis sessions drop carts")
		if r.err == nil || !strings.Contains(r.err.Error(), "refusing to roll back 1 environment(s) without confirmation: stdin is not a terminal; pass --yes") {
			t.Fatalf("rollback without --yes on a pipe: %v", r.err)
		}
		if !strings.Contains(r.out, "#2 -> #1") {
			t.Fatalf("refused rollback printed no preview:\n%s", r.out)
		}
		// On a terminal it asks; anything but y leaves everything as it was.
		if ctl, tty, ok := terminal(t); ok {
			if _, err := ctl.WriteString("n\n"); err != nil {
				t.Fatal(err)
			}
			r := captainWith(t, addr, tty, "rollback", "--pipeline", "web", "--stage", "zone", "--reason", "redis sessions drop carts")
			if r.err != nil || !strings.Contains(r.errOut, "Roll back 1 environment(s)? [y/N] ") || !strings.HasSuffix(r.out, "not rolled back\n") {
				t.Fatalf("answering n on a terminal: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.out, r.errOut)
			}
		}
		r = cli("rollback", "--pipeline", "web", "--stage", "zone", "--reason", "redis sessions drop carts", "--yes", "--request-id", "rb-1")
		if r.err != nil || !strings.Contains(r.out, "started 1 rollback deployment(s) (request rb-1)") || !strings.Contains(r.out, "zone-a") {
			t.Fatalf("rollback --yes: %v\n%s", r.err, r.out)
		}
		settle(t, hosts, func() error {
			h := cli("history", "--pipeline", "web", "--env", "zone-a")
			if !regexp.MustCompile(`rollback\s+#1\s+#2\s+operator initial-admin\s+.*succeeded`).MatchString(h.out) {
				return fmt.Errorf("history shows no finished rollback:\n%s", h.out)
			}
			return nil
		})
		if r := cli("status", "web"); !strings.Contains(r.out, "blocked in+out") {
			t.Fatalf("status after rollback shows no block:\n%s", r.out)
		}
		started := regexp.MustCompile(`(?m)^(\S+)\s+zone\s+zone-a\s+#2\s+#1$`).FindStringSubmatch(r.out)
		if started == nil {
			t.Fatalf("rollback printed no deployment row:\n%s", r.out)
		}
		clustertest.Eventually(t, 5*time.Second, func() error {
			if f, l := follower.State().Index(), leader.State().Index(); f < l {
				return fmt.Errorf("follower at index %d, leader at %d", f, l)
			}
			return nil
		})
		check([]cliStep{
			{name: "a retry with the same request ID gets the first answer", args: []string{"rollback", "--pipeline", "web", "--stage", "zone", "--yes", "--request-id", "rb-1"},
				want: []string{"already there (runs #1)", "asking for the outcome of request rb-1", "started 1 rollback deployment(s) (request rb-1)", started[1]}},
			{name: "nothing to do without a request ID", args: []string{"rollback", "--pipeline", "web", "--env", "zone-a", "--yes"},
				want: []string{"already there (runs #1), nothing to do", "nothing to roll back"}},
			{name: "where after the rollback", args: []string{"where", "2222222"}, wantRE: `zone\s+zone-a\s+rolled back\s`},
			{name: "preview JSON carries the commits", args: []string{"rollback", "--pipeline", "web", "--env", "onebox", "--to", "1", "--preview", "-o", "json"},
				want: []string{`"environment": "onebox"`, `"from_release": "2"`, `"to_release": "1"`, `"commits_removed": [{"sha": "` + sha2 + `"`}},
			{name: "unknown stage", args: []string{"rollback", "--pipeline", "web", "--stage", "nope", "--preview"}, wantErr: `stage "nope" is not in pipeline "web"`},
			{name: "no selector", args: []string{"rollback", "--pipeline", "web"}, wantErr: "exactly one of --stage"},
			{name: "two selectors", args: []string{"rollback", "--pipeline", "web", "--stage", "zone", "--all-stages"}, wantErr: "exactly one of --stage"},
		})
		if ctl, tty, ok := terminal(t); ok {
			if _, err := ctl.WriteString("y\n"); err != nil {
				t.Fatal(err)
			}
			r := captainWith(t, addr, tty, "rollback", "--pipeline", "web", "--env", "onebox", "--to", "1", "--reason", "test")
			if r.err != nil || !strings.Contains(r.errOut, "Roll back 1 environment(s)? [y/N] ") || !regexp.MustCompile(`(?m)^\S+\s+onebox\s+onebox\s+#2\s+#1$`).MatchString(r.out) {
				t.Fatalf("answering y on a terminal: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.out, r.errOut)
			}
		}
	})
}

// TestRollbackPreviewListsTheCommitsThatGoAway checks the part of the preview the CLI adds:
// the commits between the two releases, from DiffReleases on a real cluster.
func TestRollbackPreviewListsTheCommitsThatGoAway(t *testing.T) {
	c := clustertest.New(t, 1)
	addr := c.Nodes[0].APIAddr
	dir := t.TempDir()
	spec := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(spec, []byte(twoStageYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := captainWith(t, addr, strings.NewReader(""), "pipeline", "apply", "-f", spec); r.err != nil {
		t.Fatal(r.err)
	}
	for n, commits := range []string{
		"1111111111111111111111111111111111111111\tAnn <ann@example.com>\tadd login page\n",
		"3333333333333333333333333333333333333333\tBob <bob@example.com>\tsessions in redis\n2222222222222222222222222222222222222222\tBob <bob@example.com>\tredis client\n",
		"4444444444444444444444444444444444444444\tCid <cid@example.com>\tcache headers\n",
	} {
		f := filepath.Join(dir, fmt.Sprintf("c%d", n))
		if err := os.WriteFile(f, []byte(commits), 0o600); err != nil {
			t.Fatal(err)
		}
		head := strings.Fields(commits)[0]
		if r := captainWith(t, addr, strings.NewReader(""), "release", "create", "--pipeline", "web", "--commit", head, "--commits-file", f,
			"--artifact", "s3://builds/artifacts/web/"+strings.Repeat(fmt.Sprint(n+1), 64)+".tar.zst"); r.err != nil {
			t.Fatal(r.err)
		}
	}
	cfg := &clientcfg.Config{Addr: addr, Token: clustertest.AdminSecret, Output: "table"}
	cl, err := newClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var many []string
	for i := range 22 {
		many = append(many, fmt.Sprintf("h-%012d", i))
	}
	plan := []*captainv1.EnvironmentRollback{
		{Stage: "onebox", Environment: "onebox", FromRelease: 3, ToRelease: 1, Hosts: []string{"h-000000000001"}, SkippedSteps: []string{"bake", "tests"}, CancelsDeploymentId: "d-000009",
			FileChanges: []*captainv1.FileChange{{Path: "static/app.js", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_CHANGED}, {Path: "lib/redis.so", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED}, {Path: "lib/memcache.so", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED}}},
		{Stage: "zone", Environment: "zone-a", FromRelease: 1, ToRelease: 1, AlreadyThere: true},
		{Stage: "zone", Environment: "zone-b", FromRelease: 2, ToRelease: 1, Hosts: many},
	}
	cmd := &cobra.Command{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd.SetContext(ctx)
	if err := commitsGoingAway(cmd, cl, "web", plan); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := printRollbackPlan(&b, "web", plan, "no artifact store configured", statuscmd.Style{}); err != nil {
		t.Fatal(err)
	}
	want := `rollback preview, pipeline web:

stage onebox, environment onebox: #3 -> #1
  hosts affected: 1 (h-000000000001)
  cancels deployment d-000009 (in progress)
  skips: bake, tests
  commits that go away: 3
    4444444  cache headers  (Cid <cid@example.com>)
    3333333  sessions in redis  (Bob <bob@example.com>)
    2222222  redis client  (Bob <bob@example.com>)
  artifact file changes: 3
    changed  static/app.js
    removed  lib/redis.so
    restored lib/memcache.so

stage zone, environment zone-a: already there (runs #1), nothing to do

stage zone, environment zone-b: #2 -> #1
  hosts affected: 22 (` + strings.Join(many[:20], ", ") + `, ... and 2 more)
  commits that go away: 2
    3333333  sessions in redis  (Bob <bob@example.com>)
    2222222  redis client  (Bob <bob@example.com>)
  artifact file changes: unavailable (see below)

artifact file changes unavailable: no artifact store configured
`
	if b.String() != want {
		t.Fatalf("preview:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestDiffFileChangesTurnTowardTheTarget(t *testing.T) {
	got := towardTarget([]*captainv1.FileChange{
		{Path: "new.so", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED, ToSize: 7},
		{Path: "old.so", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED, FromSize: 5},
		{Path: "app.js", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_CHANGED, FromSize: 1, ToSize: 2, Detail: "content"},
	})
	want := []string{"removed new.so 7->0", "restored old.so 0->5", "changed app.js 2->1 content"}
	for i, f := range got {
		line := fmt.Sprintf("%s %s %d->%d", fileChangeWord(f), f.GetPath(), f.GetFromSize(), f.GetToSize())
		if f.GetDetail() != "" {
			line += " " + f.GetDetail()
		}
		if line != want[i] {
			t.Errorf("change %d = %q, want %q", i, line, want[i])
		}
	}
}

func TestConfirmAsksOnlyATerminalAndNeedsYesElsewhere(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		tty     bool
		yes     bool
		want    bool
		wantErr string
	}{
		{name: "--yes needs no terminal", yes: true, want: true},
		{name: "a pipe without --yes is refused", in: "y\n", wantErr: "stdin is not a terminal; pass --yes"},
		{name: "terminal answers y", in: "y\n", tty: true, want: true},
		{name: "terminal answers yes", in: " YES \n", tty: true, want: true},
		{name: "terminal answers enter", in: "\n", tty: true},
		{name: "terminal answers n", in: "n\n", tty: true},
		{name: "terminal closed", in: "", tty: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var prompt strings.Builder
			got, err := confirm(strings.NewReader(tc.in), tc.tty, &prompt, 2, tc.yes)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("confirm = %v, %v; want %v", got, err, tc.want)
			}
			if tc.tty && !tc.yes && prompt.String() != "Roll back 2 environment(s)? [y/N] " {
				t.Fatalf("prompt = %q", prompt.String())
			}
		})
	}
}

func TestRollbackTargetNeedsExactlyOneSelector(t *testing.T) {
	for _, o := range []rollbackOpts{
		{pipeline: "web"},
		{pipeline: "web", stages: []string{"a"}, envs: []string{"b"}},
		{pipeline: "web", stages: []string{"a"}, allStages: true},
		{stages: []string{"a"}},
	} {
		if _, err := o.target(); err == nil {
			t.Errorf("target(%+v) accepted", o)
		}
	}
	got, err := (&rollbackOpts{pipeline: "web", envs: []string{"a", "b"}, to: 4, force: true}).target()
	if err != nil || len(got.GetEnvironments()) != 2 || got.GetToRelease() != 4 || !got.GetForce() {
		t.Fatalf("target = %v, %v", got, err)
	}
}

func TestTableAlignsColouredCells(t *testing.T) {
	var b strings.Builder
	red := "\x1b[31mfailed\x1b[0m"
	if err := table(&b, "ID\tRESULT\tNOTE", [][]string{{"d-1", red, "x"}, {"d-22", "ok", "y"}}); err != nil {
		t.Fatal(err)
	}
	want := "ID    RESULT  NOTE\nd-1   " + red + "  x\nd-22  ok      y\n"
	if b.String() != want {
		t.Fatalf("table =\n%q\nwant\n%q", b.String(), want)
	}
}

// TestReadsFallBackToTheNodesCopyWithoutALeader: with quorum lost, status still draws the
// pipeline from the node asked, and says on stderr that the picture may be stale.
func TestReadsFallBackToTheNodesCopyWithoutALeader(t *testing.T) {
	c := clustertest.New(t, 3, clustertest.Options{Configure: func(_ int, cfg *daemon.Config) { cfg.ElectionWait = time.Second }})
	c.Leader(5 * time.Second)
	survivor := c.Followers()[0]
	spec := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(spec, []byte(twoStageYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := captainWith(t, survivor.APIAddr, strings.NewReader(""), "pipeline", "apply", "-f", spec); r.err != nil {
		t.Fatal(r.err)
	}
	clustertest.Eventually(t, 5*time.Second, func() error {
		if _, err := survivor.State().Snapshot().Pipeline("web", 0); err != nil {
			return fmt.Errorf("pipeline not on %s yet: %w", survivor.ID, err)
		}
		return nil
	})
	for _, n := range c.Running() {
		if n != survivor {
			c.Kill(n)
		}
	}
	r := captainWith(t, survivor.APIAddr, strings.NewReader(""), "status", "web")
	if r.err != nil || !strings.Contains(r.out, "wave 2\n  zone") || !strings.Contains(r.errOut, "warning: showing the addressed node's copy, which may be stale") {
		t.Fatalf("status without a leader: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.out, r.errOut)
	}
	// A write has no such way out: it fails, saying why.
	r = captainWith(t, survivor.APIAddr, strings.NewReader(""), "alarm", "set", "x", "--state", "ok")
	if r.err == nil || !strings.Contains(r.err.Error(), "no leader") {
		t.Fatalf("write without a leader: %v", r.err)
	}
}

// TestAnAlarmRollbackShowsItsTriggerAndBlock: an alarm firing while a stage verifies rolls it
// back by itself; history, the deployment and status name the alarm and the block.
func TestAnAlarmRollbackShowsItsTriggerAndBlock(t *testing.T) {
	c := clustertest.New(t, 1)
	n := c.Nodes[0]
	cli := func(args ...string) result { return captainWith(t, n.APIAddr, strings.NewReader(""), args...) }
	dir := t.TempDir()
	spec := filepath.Join(dir, "pipeline.yaml")
	if err := os.WriteFile(spec, []byte(`
name: web
deploy: {app_root: /srv/web}
alarms:
  - name: checkout-errors
stages:
  - name: onebox
    wave: 1
    approval:
      manual: {required: true}
      alarms: {names: [checkout-errors]}
    environments:
      - name: onebox
        selector: {role: onebox}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"pipeline", "apply", "-f", spec},
		{"alarm", "set", "checkout-errors", "--state", "ok"},
	} {
		if r := cli(args...); r.err != nil {
			t.Fatalf("captain %s: %v", strings.Join(args, " "), r.err)
		}
	}
	join := cli("token", "create", "--role", "agent", "--name", "fleet", "-o", "json")
	var tok struct{ Secret string }
	if err := json.Unmarshal([]byte(join.out), &tok); err != nil {
		t.Fatalf("token create: %v %s", err, join.out)
	}
	hosts := []*fakeHost{registerHost(t, c, n, tok.Secret, "web-1", map[string]string{"role": "onebox"})}
	admin := c.Client(n, "")
	for i := 1; i <= 2; i++ {
		if r := cli("release", "create", "--pipeline", "web", "--commit", strings.Repeat(fmt.Sprint(i), 40),
			"--artifact", "s3://builds/artifacts/web/"+strings.Repeat(fmt.Sprint(i), 64)+".tar.zst"); r.err != nil {
			t.Fatal(r.err)
		}
		settle(t, hosts, stageIs(admin, "onebox", captainv1.StagePhase_STAGE_PHASE_VERIFYING, uint64(i)))
		if i == 1 {
			if r := cli("approve", "--pipeline", "web", "--stage", "onebox", "--release", "1"); r.err != nil {
				t.Fatal(r.err)
			}
			settle(t, hosts, stageIs(admin, "onebox", captainv1.StagePhase_STAGE_PHASE_IDLE, 1))
		}
	}
	if r := cli("alarm", "set", "checkout-errors", "--state", "alarm", "--reason", "5xx above 2%"); r.err != nil {
		t.Fatal(r.err)
	}
	var rollbackID string
	settle(t, hosts, func() error {
		r := cli("history", "--pipeline", "web", "--env", "onebox")
		m := regexp.MustCompile(`(?m)^(\S+)\s+rollback\s+#1\s+#2\s+automatic: checkout-errors\s+.*succeeded\s+-$`).FindStringSubmatch(r.out)
		if m == nil {
			return fmt.Errorf("no finished automatic rollback in history:\n%s%v", r.out, r.err)
		}
		rollbackID = m[1]
		return nil
	})
	for _, s := range []cliStep{
		{name: "the rollback names its alarm", args: []string{"deployment", rollbackID},
			want: []string{"rollback of release #1 to onebox (stage onebox, pipeline web), from #2", "trigger:  automatic: checkout-errors", "result:   succeeded"}},
		{name: "status shows the automatic block and the alarm", args: []string{"status", "web"},
			want: []string{"blocked in+out by captain", "alarm checkout-errors: ALARM", "└ onebox: #1"}},
		{name: "alarm list", args: []string{"alarm", "list"}, wantRE: `checkout-errors\s+alarm\s+api:initial-admin\s+\d+s ago\s+5xx above 2%`},
	} {
		s.check(t, cli(s.args...))
	}
}
