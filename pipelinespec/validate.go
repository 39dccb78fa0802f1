package pipelinespec

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// HostHealthAlarm is the built-in alarm a stage may watch without declaring it: it fires for an
// environment when its hosts fail their health checks.
const HostHealthAlarm = "host-health"

// Defaults applied by Normalize when a field is unset.
const (
	DefaultMaxUnavailable   = "1"
	DefaultMinHealthy       = "0"
	DefaultKeepReleases     = 5
	DefaultProgressDeadline = 30 * time.Minute
	DefaultHealthDeadline   = 5 * time.Minute
	DefaultHookTimeout      = 5 * time.Minute
	DefaultCheckInterval    = 2 * time.Second
	DefaultCheckTimeout     = 5 * time.Second
	DefaultTestTimeout      = time.Minute
	DefaultExpectedStatus   = 200
)

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)
	unitRE       = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]+\.(service|target|socket|timer)$`)
)

// Validate checks a spec's meaning (the parser has already checked its shape) and returns every
// violation, each naming its field path.
func Validate(spec *captainv1.PipelineSpec) Violations {
	var vs Violations
	if spec == nil {
		vs.add("", "no spec given")
		return vs
	}
	if spec.GetName() == "" {
		vs.add("name", "required; a pipeline name of lower-case letters, digits and '-'")
	} else if !nameRE.MatchString(spec.GetName()) {
		vs.add("name", "%q is not a valid name; use 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit", spec.GetName())
	}
	validateDeploy(spec.GetDeploy(), &vs)

	declared := map[string]bool{HostHealthAlarm: true}
	for i, a := range spec.GetAlarms() {
		p := fmt.Sprintf("alarms[%d].name", i)
		switch {
		case a.GetName() == "":
			vs.add(p, "required")
		case a.GetName() == HostHealthAlarm:
			vs.add(p, "%q is built in; do not declare it", HostHealthAlarm)
		case declared[a.GetName()]:
			vs.add(p, "duplicate alarm %q", a.GetName())
		case !labelKeyRE.MatchString(a.GetName()):
			vs.add(p, "%q is not a valid alarm name; use letters, digits, '.', '_', '/' and '-'", a.GetName())
		}
		declared[a.GetName()] = true
	}

	if len(spec.GetStages()) == 0 {
		vs.add("stages", "required; list at least one stage")
	}
	stageNames := map[string]int{}
	envNames := map[string]string{}
	selectors := map[string]string{}
	prevWave := uint32(0)
	for i, st := range spec.GetStages() {
		sp := fmt.Sprintf("stages[%d]", i)
		switch {
		case st.GetName() == "":
			vs.add(sp+".name", "required")
		case !nameRE.MatchString(st.GetName()):
			vs.add(sp+".name", "%q is not a valid name; use lower-case letters, digits and '-'", st.GetName())
		default:
			if j, dup := stageNames[st.GetName()]; dup {
				vs.add(sp+".name", "duplicate stage %q (also stages[%d]); stage names must be unique", st.GetName(), j)
			} else {
				stageNames[st.GetName()] = i
			}
		}
		if st.GetWave() < prevWave {
			vs.add(sp+".wave", "wave %d comes after wave %d; waves must not decrease along the pipeline", st.GetWave(), prevWave)
		}
		prevWave = max(prevWave, st.GetWave())
		validateBatch(st.GetBatch(), sp+".batch", &vs)
		if d := st.GetProgressDeadline(); d != nil && d.AsDuration() < time.Minute && d.AsDuration() != 0 {
			vs.add(sp+".progress_deadline", "%s is too short; expected at least 1m", d.AsDuration())
		}
		if len(st.GetEnvironments()) == 0 {
			vs.add(sp+".environments", "required; list at least one environment")
		}
		for j, env := range st.GetEnvironments() {
			ep := fmt.Sprintf("%s.environments[%d]", sp, j)
			switch {
			case env.GetName() == "":
				vs.add(ep+".name", "required")
			case !nameRE.MatchString(env.GetName()):
				vs.add(ep+".name", "%q is not a valid name; use lower-case letters, digits and '-'", env.GetName())
			default:
				if other, dup := envNames[env.GetName()]; dup {
					vs.add(ep+".name", "duplicate environment %q (also %s); environment names must be unique in the pipeline", env.GetName(), other)
				} else {
					envNames[env.GetName()] = ep
				}
			}
			if len(env.GetSelector()) == 0 {
				vs.add(ep+".selector", "required; give at least one label, e.g. {region: us-east-1, az: use1-az1}")
			} else {
				for k, v := range env.GetSelector() {
					if !labelKeyRE.MatchString(k) {
						vs.add(ep+".selector."+k, "%q is not a valid label key", k)
					}
					if !labelValueRE.MatchString(v) {
						vs.add(ep+".selector."+k, "%q is not a valid label value; use up to 63 letters, digits, '.', '_' and '-'", v)
					}
				}
				key := selectorKey(env.GetSelector())
				if other, dup := selectors[key]; dup {
					vs.add(ep+".selector", "same selector as %s; every host would match both environments", other)
				} else {
					selectors[key] = ep
				}
			}
			validateBatch(env.GetBatch(), ep+".batch", &vs)
			for k, a := range env.GetAlarms() {
				if !declared[a] {
					vs.add(fmt.Sprintf("%s.alarms[%d]", ep, k), "unknown alarm %q; declare it under alarms or use %q", a, HostHealthAlarm)
				}
			}
		}
		validateApproval(st.GetApproval(), sp+".approval", declared, &vs)
	}
	return vs
}

func selectorKey(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k, v := range sel {
		keys = append(keys, k+"="+v)
	}
	slices.Sort(keys)
	return strings.Join(keys, ",")
}

func validateDeploy(d *captainv1.DeploySettings, vs *Violations) {
	if d == nil {
		vs.add("deploy", "required; say at least deploy.app_root")
		return
	}
	switch root := d.GetAppRoot(); {
	case root == "":
		vs.add("deploy.app_root", "required; an absolute directory such as /srv/web")
	case !path.IsAbs(root):
		vs.add("deploy.app_root", "%q is not absolute; expected a path such as /srv/web", root)
	case path.Clean(root) != root:
		vs.add("deploy.app_root", "%q is not clean; expected %q", root, path.Clean(root))
	case root == "/":
		vs.add("deploy.app_root", "\"/\" is not allowed; use a directory of its own such as /srv/web")
	}
	if u := d.GetSystemdUnit(); u != "" && !unitRE.MatchString(u) {
		vs.add("deploy.systemd_unit", "%q is not a unit name; expected something like web.service", u)
	}
	h := d.GetHooks()
	validateHook(h.GetBeforeActivate(), "deploy.hooks.before_activate", vs)
	validateHook(h.GetActivate(), "deploy.hooks.activate", vs)
	validateHook(h.GetAfterHealthy(), "deploy.hooks.after_healthy", vs)
	names := map[string]bool{}
	for i, c := range d.GetHealthChecks() {
		p := fmt.Sprintf("deploy.health_checks[%d]", i)
		if c.GetName() == "" {
			vs.add(p+".name", "required")
		} else if names[c.GetName()] {
			vs.add(p+".name", "duplicate health check %q", c.GetName())
		}
		names[c.GetName()] = true
		switch k := c.GetCheck().(type) {
		case nil:
			vs.add(p, "set one of http, tcp or command")
		case *captainv1.HealthCheck_Http:
			validateHTTP(k.Http.GetUrl(), k.Http.GetExpectedStatus(), p+".http", vs)
		case *captainv1.HealthCheck_Tcp:
			if _, port, err := net.SplitHostPort(k.Tcp.GetAddress()); err != nil || port == "" {
				vs.add(p+".tcp.address", "%q is not host:port, e.g. 127.0.0.1:8080", k.Tcp.GetAddress())
			}
		case *captainv1.HealthCheck_Command:
			if len(k.Command.GetCommand()) == 0 || k.Command.GetCommand()[0] == "" {
				vs.add(p+".command.command", "required; the program and its arguments as a list")
			}
		}
	}
	if d.GetKeepReleases() == 1 {
		vs.add("deploy.keep_releases", "1 would delete the release a rollback needs; expected at least 2 (default %d)", DefaultKeepReleases)
	}
	if s := d.GetArtifactStore(); s != nil && s.GetEndpoint() != "" {
		if u, err := url.Parse(s.GetEndpoint()); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			vs.add("deploy.artifact_store.endpoint", "%q is not an http(s) URL", s.GetEndpoint())
		}
	}
}

func validateHook(h *captainv1.Hook, p string, vs *Violations) {
	if h == nil {
		return
	}
	if len(h.GetCommand()) == 0 || h.GetCommand()[0] == "" {
		vs.add(p+".command", "required; the program and its arguments as a list")
	}
}

func validateHTTP(raw string, status uint32, p string, vs *Violations) {
	u, err := url.Parse(raw)
	if raw == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		vs.add(p+".url", "%q is not an http(s) URL, e.g. http://127.0.0.1:8080/healthz", raw)
	}
	if status != 0 && (status < 100 || status > 599) {
		vs.add(p+".expected_status", "%d is not an HTTP status; expected 100 to 599", status)
	}
}

// Quantity is a host count or a percentage of an environment's hosts.
type Quantity struct {
	Value   int
	Percent bool
}

// ParseQuantity reads "3" or "25%".
func ParseQuantity(s string) (Quantity, error) {
	s = strings.TrimSpace(s)
	pct := strings.HasSuffix(s, "%")
	n, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
	if err != nil || s == "" {
		return Quantity{}, fmt.Errorf("%q is not a count (\"2\") or a percentage (\"25%%\")", s)
	}
	return Quantity{Value: n, Percent: pct}, nil
}

// Of resolves the quantity against a number of hosts; percentages round down.
func (q Quantity) Of(hosts int) int {
	if q.Percent {
		return hosts * q.Value / 100
	}
	return q.Value
}

func validateBatch(b *captainv1.BatchPolicy, p string, vs *Violations) {
	if b == nil {
		return
	}
	if s := b.GetMaxUnavailable(); s != "" {
		q, err := ParseQuantity(s)
		switch {
		case err != nil:
			vs.add(p+".max_unavailable", "%v", err)
		case q.Percent && (q.Value < 1 || q.Value > 100):
			vs.add(p+".max_unavailable", "%s is out of range; expected 1%% to 100%%", s)
		case !q.Percent && q.Value < 1:
			vs.add(p+".max_unavailable", "%s is out of range; expected at least 1 host", s)
		}
	}
	if s := b.GetMinHealthy(); s != "" {
		q, err := ParseQuantity(s)
		switch {
		case err != nil:
			vs.add(p+".min_healthy", "%v", err)
		case q.Percent && (q.Value < 0 || q.Value > 100):
			vs.add(p+".min_healthy", "%s is out of range; expected 0%% to 100%%", s)
		case q.Percent && q.Value == 100:
			vs.add(p+".min_healthy", "100%% leaves no host to update; expected less than 100%%")
		case !q.Percent && q.Value < 0:
			vs.add(p+".min_healthy", "%s is out of range; expected 0 or more hosts", s)
		}
	}
}

func validateApproval(a *captainv1.Approval, p string, declared map[string]bool, vs *Violations) {
	if a == nil {
		return
	}
	if b := a.GetBake(); b != nil && b.GetDuration() == nil && b.GetMinHealthyReports() == 0 {
		vs.add(p+".bake.duration", "required when bake is given, e.g. \"30m\"")
	}
	for i, name := range a.GetAlarms().GetNames() {
		if !declared[name] {
			vs.add(fmt.Sprintf("%s.alarms.names[%d]", p, i), "unknown alarm %q; declare it under alarms or use %q", name, HostHealthAlarm)
		}
	}
	tests := map[string]bool{}
	for i, t := range a.GetTests() {
		tp := fmt.Sprintf("%s.tests[%d]", p, i)
		if t.GetName() == "" {
			vs.add(tp+".name", "required")
		} else if tests[t.GetName()] {
			vs.add(tp+".name", "duplicate test %q", t.GetName())
		}
		tests[t.GetName()] = true
		switch k := t.GetTest().(type) {
		case nil:
			vs.add(tp, "set one of http or command")
		case *captainv1.TestStep_Http:
			validateHTTP(k.Http.GetUrl(), k.Http.GetExpectedStatus(), tp+".http", vs)
		case *captainv1.TestStep_Command:
			if len(k.Command.GetCommand()) == 0 || k.Command.GetCommand()[0] == "" {
				vs.add(tp+".command.command", "required; the program and its arguments as a list")
			}
		}
		if t.GetRetries() > 20 {
			vs.add(tp+".retries", "%d is too many; expected at most 20", t.GetRetries())
		}
	}
	validateWindows(a.GetWindows(), p+".windows", vs)
}

// Normalize fills every unset field that has a default, so stored specs say what will happen.
func Normalize(spec *captainv1.PipelineSpec) {
	d := spec.GetDeploy()
	if d != nil {
		if d.KeepReleases == 0 {
			d.KeepReleases = DefaultKeepReleases
		}
		if d.HealthDeadline == nil {
			d.HealthDeadline = durationpb.New(DefaultHealthDeadline)
		}
		if d.MinHealthyTime == nil {
			d.MinHealthyTime = durationpb.New(0)
		}
		for _, h := range []*captainv1.Hook{d.GetHooks().GetBeforeActivate(), d.GetHooks().GetActivate(), d.GetHooks().GetAfterHealthy()} {
			if h != nil && h.Timeout == nil {
				h.Timeout = durationpb.New(DefaultHookTimeout)
			}
		}
		for _, c := range d.GetHealthChecks() {
			if c.Interval == nil {
				c.Interval = durationpb.New(DefaultCheckInterval)
			}
			if c.Timeout == nil {
				c.Timeout = durationpb.New(DefaultCheckTimeout)
			}
			if h := c.GetHttp(); h != nil && h.ExpectedStatus == 0 {
				h.ExpectedStatus = DefaultExpectedStatus
			}
		}
	}
	for _, st := range spec.GetStages() {
		if st.Batch == nil {
			st.Batch = &captainv1.BatchPolicy{}
		}
		if st.Batch.MaxUnavailable == "" {
			st.Batch.MaxUnavailable = DefaultMaxUnavailable
		}
		if st.Batch.MinHealthy == "" {
			st.Batch.MinHealthy = DefaultMinHealthy
		}
		if st.ProgressDeadline == nil || st.ProgressDeadline.AsDuration() == 0 {
			st.ProgressDeadline = durationpb.New(DefaultProgressDeadline)
		}
		if st.DownHosts == captainv1.DownHostPolicy_DOWN_HOST_POLICY_UNSPECIFIED {
			st.DownHosts = captainv1.DownHostPolicy_DOWN_HOST_POLICY_SKIP
		}
		for _, env := range st.GetEnvironments() {
			if env.Batch == nil {
				continue
			}
			if env.Batch.MaxUnavailable == "" {
				env.Batch.MaxUnavailable = st.Batch.MaxUnavailable
			}
			if env.Batch.MinHealthy == "" {
				env.Batch.MinHealthy = st.Batch.MinHealthy
			}
		}
		a := st.GetApproval()
		if a == nil {
			continue
		}
		if al := a.GetAlarms(); al != nil && al.InsufficientData == captainv1.InsufficientDataPolicy_INSUFFICIENT_DATA_POLICY_UNSPECIFIED {
			al.InsufficientData = captainv1.InsufficientDataPolicy_INSUFFICIENT_DATA_POLICY_WAIT
		}
		for _, t := range a.GetTests() {
			if t.Timeout == nil {
				t.Timeout = durationpb.New(DefaultTestTimeout)
			}
			if h := t.GetHttp(); h != nil && h.ExpectedStatus == 0 {
				h.ExpectedStatus = DefaultExpectedStatus
			}
		}
		for _, w := range a.GetWindows() {
			if w.Kind == captainv1.WindowKind_WINDOW_KIND_UNSPECIFIED {
				w.Kind = captainv1.WindowKind_WINDOW_KIND_ALLOW
			}
			if w.TimeZone == "" {
				w.TimeZone = "UTC"
			}
		}
	}
}
