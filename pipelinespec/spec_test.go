package pipelinespec

import (
	"os"
	"strings"
	"testing"
	"time"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// base is a minimal valid spec; cases append or replace lines to break one thing at a time.
const base = `
name: web
deploy:
  app_root: /srv/web
  systemd_unit: web.service
alarms:
  - name: errors
stages:
  - name: onebox
    wave: 1
    environments:
      - name: onebox
        selector: {role: onebox}
  - name: zone1
    wave: 1
    environments:
      - name: zone1
        selector: {az: z1}
`

func TestExampleSpecIsValid(t *testing.T) {
	data, err := os.ReadFile("../ops/examples/pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, vs, err := ParseYAML(data)
	if err != nil || len(vs) > 0 {
		t.Fatalf("example spec rejected: err=%v violations=%v", err, vs)
	}
	if got, want := len(spec.GetStages()), 7; got != want {
		t.Fatalf("stages = %d, want %d", got, want)
	}
	if spec.GetStages()[0].GetWave() != 0 || spec.GetStages()[1].GetWave() != 1 || spec.GetStages()[6].GetWave() != 3 {
		t.Fatalf("waves not as written: %v", spec.GetStages())
	}
}

func TestParseAcceptsFriendlyForms(t *testing.T) {
	spec, vs, err := ParseYAML([]byte(base + `
    batch: {max_unavailable: 2, min_healthy: "50%"}
    progress_deadline: 1h30m
    down_hosts: fail
    approval:
      bake: {duration: 90s}
      alarms: {names: [errors, host-health], insufficient_data: rollback}
      windows:
        - {kind: deny, cron: "0 0 * * SAT", duration: 48h, time_zone: Europe/Berlin}
`))
	if err != nil || len(vs) > 0 {
		t.Fatalf("rejected: err=%v violations=%v", err, vs)
	}
	st := spec.GetStages()[1]
	if got := st.GetBatch().GetMaxUnavailable(); got != "2" {
		t.Errorf("max_unavailable = %q, want \"2\" (a YAML number read as a count)", got)
	}
	if got := st.GetProgressDeadline().AsDuration(); got != 90*time.Minute {
		t.Errorf("progress_deadline = %s, want 1h30m", got)
	}
	if got := st.GetDownHosts(); got != captainv1.DownHostPolicy_DOWN_HOST_POLICY_FAIL {
		t.Errorf("down_hosts = %s, want FAIL from short name", got)
	}
	if got := st.GetApproval().GetAlarms().GetInsufficientData(); got != captainv1.InsufficientDataPolicy_INSUFFICIENT_DATA_POLICY_ROLLBACK {
		t.Errorf("insufficient_data = %s", got)
	}
	if got := st.GetApproval().GetBake().GetDuration().AsDuration(); got != 90*time.Second {
		t.Errorf("bake = %s", got)
	}
}

func TestParseFillsDefaults(t *testing.T) {
	spec, vs, err := ParseYAML([]byte(base))
	if err != nil || len(vs) > 0 {
		t.Fatalf("rejected: err=%v violations=%v", err, vs)
	}
	st := spec.GetStages()[0]
	if st.GetBatch().GetMaxUnavailable() != DefaultMaxUnavailable || st.GetBatch().GetMinHealthy() != DefaultMinHealthy {
		t.Errorf("batch defaults = %v", st.GetBatch())
	}
	if st.GetProgressDeadline().AsDuration() != DefaultProgressDeadline {
		t.Errorf("progress deadline default = %s", st.GetProgressDeadline().AsDuration())
	}
	if spec.GetDeploy().GetKeepReleases() != DefaultKeepReleases {
		t.Errorf("keep_releases default = %d", spec.GetDeploy().GetKeepReleases())
	}
	if st.GetDownHosts() != captainv1.DownHostPolicy_DOWN_HOST_POLICY_SKIP {
		t.Errorf("down_hosts default = %s", st.GetDownHosts())
	}
}

// TestTheThreeMistakes is the example: one file, three mistakes, three errors.
func TestTheThreeMistakes(t *testing.T) {
	_, vs, err := ParseYAML([]byte(`
name: web
deploy: {app_root: /srv/web}
stages:
  - name: onebox
    environments: [{name: onebox, selector: {role: onebox}}]
  - name: onebox
    batch: {max_unavailble: 1}
    environments: [{name: zone1, selector: {az: z1}}]
  - name: zone2
    batch: {max_unavailable: 150%}
    environments: [{name: zone2, selector: {az: z2}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Violation{
		{"stages[1].batch.max_unavailble", `unknown field (did you mean "max_unavailable"?)`},
		{"stages[1].name", `duplicate stage "onebox" (also stages[0])`},
		{"stages[2].batch.max_unavailable", "150% is out of range; expected 1% to 100%"},
	}
	assertViolations(t, vs, want)
}

func TestValidationRejects(t *testing.T) {
	cases := []struct {
		name  string
		yaml  string
		field string
		says  string
	}{
		{"unknown top-level field", base + "colour: blue\n", "colour", "unknown field"},
		{"typo in nested field", strings.Replace(base, "app_root", "app_rot", 1), "deploy.app_rot", `did you mean "app_root"`},
		{"missing app root", strings.Replace(base, "app_root: /srv/web", "systemd_unit: x.service", 1), "deploy.app_root", "required"},
		{"relative app root", strings.Replace(base, "/srv/web", "srv/web", 1), "deploy.app_root", "not absolute"},
		{"root as app root", strings.Replace(base, "/srv/web", "/", 1), "deploy.app_root", "not allowed"},
		{"bad unit name", strings.Replace(base, "web.service", "web", 1), "deploy.systemd_unit", "not a unit name"},
		{"bad pipeline name", strings.Replace(base, "name: web", "name: Web_App", 1), "name", "not a valid name"},
		{"no stages", "name: web\ndeploy: {app_root: /srv/web}\n", "stages", "at least one stage"},
		{"duplicate environment", strings.Replace(base, "name: zone1\n        selector", "name: onebox\n        selector", 1), "stages[1].environments[0].name", "duplicate environment"},
		{"empty selector", strings.Replace(base, "selector: {az: z1}", "selector: {}", 1), "stages[1].environments[0].selector", "required"},
		{"missing selector", strings.Replace(base, "        selector: {az: z1}\n", "", 1), "stages[1].environments[0].selector", "required"},
		{"same selector twice", strings.Replace(base, "{az: z1}", "{role: onebox}", 1), "stages[1].environments[0].selector", "same selector as stages[0].environments[0]"},
		{"no environments", base + "  - name: zone2\n    wave: 2\n", "stages[2].environments", "at least one environment"},
		{"bad duration", base + "    progress_deadline: 10 minutes\n", "stages[1].progress_deadline", "not a duration"},
		{"negative duration", base + "    progress_deadline: -5m\n", "stages[1].progress_deadline", "negative"},
		{"deadline too short", base + "    progress_deadline: 5s\n", "stages[1].progress_deadline", "too short"},
		{"max unavailable zero", base + "    batch: {max_unavailable: 0}\n", "stages[1].batch.max_unavailable", "at least 1 host"},
		{"max unavailable not a quantity", base + "    batch: {max_unavailable: lots}\n", "stages[1].batch.max_unavailable", "not a count"},
		{"min healthy 100 percent", base + "    batch: {min_healthy: 100%}\n", "stages[1].batch.min_healthy", "leaves no host"},
		{"min healthy over 100 percent", base + "    batch: {min_healthy: 120%}\n", "stages[1].batch.min_healthy", "out of range"},
		{"waves decrease", strings.Replace(base, "zone1\n    wave: 1", "zone1\n    wave: 0", 1), "stages[1].wave", "must not decrease"},
		{"unknown alarm", base + "    approval: {alarms: {names: [errros]}}\n", "stages[1].approval.alarms.names[0]", `unknown alarm "errros"`},
		{"unknown environment alarm", strings.Replace(base, "selector: {az: z1}", "selector: {az: z1}\n        alarms: [nope]", 1), "stages[1].environments[0].alarms[0]", "unknown alarm"},
		{"built-in alarm declared", strings.Replace(base, "- name: errors", "- name: host-health", 1), "alarms[0].name", "built in"},
		{"bad enum", base + "    approval: {alarms: {names: [errors], insufficient_data: shrug}}\n", "stages[1].approval.alarms.insufficient_data", "not one of wait, approve, rollback"},
		{"window never opens", base + "    approval: {windows: [{cron: \"0 0 30 2 *\", duration: 1h}]}\n", "stages[1].approval.windows", "never open"},
		{"deny window covers all time", base + "    approval: {windows: [{kind: deny, cron: \"0 0 * * *\", duration: 24h}]}\n", "stages[1].approval.windows", "never open"},
		{"allow window inside deny window", base + "    approval: {windows: [{kind: allow, cron: \"0 9 * * MON\", duration: 1h}, {kind: deny, cron: \"0 0 * * MON\", duration: 24h}]}\n", "stages[1].approval.windows", "never open"},
		{"bad cron", base + "    approval: {windows: [{cron: \"every day\", duration: 1h}]}\n", "stages[1].approval.windows[0].cron", "not a 5-field cron"},
		{"window without duration", base + "    approval: {windows: [{cron: \"0 9 * * *\"}]}\n", "stages[1].approval.windows[0].duration", "required"},
		{"bad time zone", base + "    approval: {windows: [{cron: \"0 9 * * *\", duration: 1h, time_zone: Mars/Olympus}]}\n", "stages[1].approval.windows[0].time_zone", "not an IANA time zone"},
		{"health check without kind", strings.Replace(base, "systemd_unit: web.service", "health_checks: [{name: h}]", 1), "deploy.health_checks[0]", "set one of http, tcp or command"},
		{"two kinds in one check", strings.Replace(base, "systemd_unit: web.service", "health_checks: [{name: h, tcp: {address: \"a:1\"}, http: {url: \"http://a/\"}}]", 1), "deploy.health_checks[0].tcp", "only one of"},
		{"bad health url", strings.Replace(base, "systemd_unit: web.service", "health_checks: [{name: h, http: {url: \"localhost:80\"}}]", 1), "deploy.health_checks[0].http.url", "not an http(s) URL"},
		{"bad tcp address", strings.Replace(base, "systemd_unit: web.service", "health_checks: [{name: h, tcp: {address: localhost}}]", 1), "deploy.health_checks[0].tcp.address", "not host:port"},
		{"keep one release", strings.Replace(base, "systemd_unit: web.service", "keep_releases: 1", 1), "deploy.keep_releases", "at least 2"},
		{"wrong type", strings.Replace(base, "wave: 1", "wave: first", 1), "stages[0].wave", "expected a whole number"},
		{"list where mapping expected", strings.Replace(base, "{role: onebox}", "[role, onebox]", 1), "stages[0].environments[0].selector", "expected a mapping"},
		{"hook without command", strings.Replace(base, "systemd_unit: web.service", "hooks: {before_activate: {timeout: 1m}}", 1), "deploy.hooks.before_activate.command", "required"},
		{"duplicate test", base + "    approval: {tests: [{name: t, http: {url: \"http://x/\"}}, {name: t, http: {url: \"http://x/\"}}]}\n", "stages[1].approval.tests[1].name", "duplicate test"},
		{"bad expected status", base + "    approval: {tests: [{name: t, http: {url: \"http://x/\", expected_status: 42}}]}\n", "stages[1].approval.tests[0].http.expected_status", "not an HTTP status"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec, vs, err := ParseYAML([]byte(tc.yaml))
			if err != nil {
				t.Fatalf("unexpected parse error: %v", err)
			}
			if spec != nil {
				t.Fatalf("spec accepted, want violation at %s", tc.field)
			}
			for _, v := range vs {
				if v.Field == tc.field && strings.Contains(v.Description, tc.says) {
					return
				}
			}
			t.Fatalf("want violation %s: …%s…, got %v", tc.field, tc.says, vs)
		})
	}
}

func TestNotYAMLIsAnError(t *testing.T) {
	if _, _, err := ParseYAML([]byte("name: [unclosed")); err == nil {
		t.Fatal("want error for broken YAML")
	}
	_, vs, err := ParseYAML([]byte(""))
	if err != nil || len(vs) != 1 {
		t.Fatalf("empty file: err=%v vs=%v", err, vs)
	}
}

func TestViolationsErr(t *testing.T) {
	if (Violations{}).Err() != nil {
		t.Fatal("no violations must give nil error")
	}
	err := Violations{{"a", "x"}, {"b", "y"}}.Err()
	if err == nil || !strings.Contains(err.Error(), "a: x; b: y") {
		t.Fatalf("err = %v", err)
	}
}

func assertViolations(t *testing.T, got Violations, want []Violation) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d violations, want %d:\n%v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].Field != want[i].Field || !strings.HasPrefix(got[i].Description, want[i].Description) {
			t.Errorf("violation %d = %q, want %q", i, got[i], want[i])
		}
	}
}

// FuzzParseYAML: any input either parses into a spec that validates clean, or is refused with
// an error or violations; it never panics.
func FuzzParseYAML(f *testing.F) {
	if data, err := os.ReadFile("../ops/examples/pipeline.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(base))
	f.Add([]byte("name: web\nstages: [{name: a, batch: {max_unavailable: 150%}}]\n"))
	f.Add([]byte("{\"name\": 1, \"deploy\": []}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, vs, err := ParseYAML(data)
		if spec != nil && (err != nil || len(vs) > 0) {
			t.Fatalf("spec returned together with errors: %v %v", err, vs)
		}
		if spec != nil {
			if again := Validate(spec); len(again) > 0 {
				t.Fatalf("accepted spec does not validate after defaults: %v", again)
			}
		}
	})
}
