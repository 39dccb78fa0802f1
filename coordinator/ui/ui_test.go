package ui_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/coordinator/daemon"
	"github.com/captain-cd/captain/coordinator/ui"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

const testPipeline = `name: web
deploy:
  app_root: /srv/web
  artifact_store: {bucket: b, region: us-east-1}
stages:
  - name: one-box
    wave: 1
    environments: [{name: one-box, selector: {stage: one-box}}]
  - name: zone-1
    wave: 2
    environments: [{name: zone-1, selector: {stage: zone-1}}]
`

// env is one real in-process coordinator with the UI mounted, a pipeline, and tokens of
// each role.
type env struct {
	t      *testing.T
	base   string
	admin  *clustertest.Clients
	viewer string
	deploy string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := clustertest.New(t, 1)
	n := c.Nodes[0]
	e := &env{t: t, base: n.Daemon().BaseURL(), admin: c.Client(n, "")}
	spec, vs, err := pipelinespec.ParseYAML([]byte(testPipeline))
	if err != nil || len(vs) > 0 {
		t.Fatal(err, vs)
	}
	if _, err := e.admin.Pipeline.ApplyPipeline(ctx(t), connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: spec})); err != nil {
		t.Fatal(err)
	}
	e.viewer = e.token("alice-viewer", captainv1.Role_ROLE_VIEWER)
	e.deploy = e.token("bob-deployer", captainv1.Role_ROLE_DEPLOYER)
	return e
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func (e *env) token(name string, role captainv1.Role) string {
	e.t.Helper()
	res, err := e.admin.Token.CreateToken(ctx(e.t), connect.NewRequest(&captainv1.CreateTokenRequest{Name: name, Role: role}))
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Msg.GetSecret()
}

// client does not follow redirects, so tests see where the UI sends the browser.
func client() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 20 * time.Second}
}

type answer struct {
	status int
	header http.Header
	body   string
}

// do sends a request as a browser of this origin would, with the session cookie when token
// is set.
func (e *env) do(method, path, token string, form url.Values, header map[string]string) answer {
	e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx(e.t), method, e.base+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if token != "" {
		req.AddCookie(&http.Cookie{Name: ui.SessionCookie, Value: token})
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return answer{status: res.StatusCode, header: res.Header, body: string(b)}
}

func (e *env) block(stage string) *captainv1.Block {
	e.t.Helper()
	res, err := e.admin.Deployment.GetStatus(ctx(e.t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web", Read: &captainv1.ReadOptions{Consistent: true}}))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, s := range res.Msg.GetStages() {
		if s.GetStage() == stage {
			return s.GetBlock()
		}
	}
	e.t.Fatalf("no stage %s", stage)
	return nil
}

func TestSignInChecksTheTokenAndSetsAStrictHttpOnlyCookie(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name       string
		token      string
		next       string
		wantStatus int
		wantCookie bool
		wantTo     string
		wantText   string
	}{
		{name: "viewer token", token: e.viewer, next: "/ui/p/web", wantStatus: http.StatusSeeOther, wantCookie: true, wantTo: "/ui/p/web"},
		{name: "next outside the UI goes to the UI", token: e.deploy, next: "//evil.example/ui/", wantStatus: http.StatusSeeOther, wantCookie: true, wantTo: "/ui/"},
		{name: "unknown token", token: "cpt_nobody_0000", next: "/ui/", wantStatus: http.StatusUnauthorized, wantText: "sign-in failed"},
		{name: "empty token", token: "", next: "/ui/", wantStatus: http.StatusBadRequest, wantText: "paste an API token"},
		{name: "not a cookie-safe token", token: "a;b", next: "/ui/", wantStatus: http.StatusUnauthorized, wantText: "not an API token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := e.do(http.MethodPost, "/ui/login", "", url.Values{"token": {tc.token}, "next": {tc.next}}, nil)
			if a.status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", a.status, tc.wantStatus, a.body)
			}
			if !strings.Contains(a.body, tc.wantText) {
				t.Errorf("page lacks %q: %s", tc.wantText, a.body)
			}
			cookies := (&http.Response{Header: a.header}).Cookies()
			if !tc.wantCookie {
				if len(cookies) != 0 {
					t.Fatalf("a refused sign-in set cookies %v", cookies)
				}
				return
			}
			if len(cookies) != 1 {
				t.Fatalf("want one session cookie, got %v", cookies)
			}
			c := cookies[0]
			if c.Name != ui.SessionCookie || c.Value != tc.token || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/ui/" || c.Secure {
				t.Errorf("cookie %+v: want %s=<token>, HttpOnly, SameSite=Strict, Path=/ui/, not Secure over plain HTTP", c, ui.SessionCookie)
			}
			if c.MaxAge != 0 || !c.Expires.IsZero() {
				t.Errorf("cookie %+v outlives the browser session", c)
			}
			if got := a.header.Get("Location"); got != tc.wantTo {
				t.Errorf("redirect to %q, want %q", got, tc.wantTo)
			}
		})
	}
}

func TestPagesNeedASessionAndCarrySecurityHeaders(t *testing.T) {
	e := newEnv(t)
	a := e.do(http.MethodGet, "/ui/p/web", "", nil, nil)
	if a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/ui/login?next=%2Fui%2Fp%2Fweb") {
		t.Fatalf("unsigned page: %d to %q, want the sign-in page", a.status, a.header.Get("Location"))
	}
	a = e.do(http.MethodGet, "/ui", "", nil, nil)
	if a.status != http.StatusMovedPermanently || a.header.Get("Location") != "/ui/" {
		t.Errorf("/ui: %d to %q, want a redirect to /ui/", a.status, a.header.Get("Location"))
	}
	a = e.do(http.MethodGet, "/ui/p/web", e.viewer, nil, nil)
	if a.status != http.StatusOK {
		t.Fatalf("pipeline page: %d: %s", a.status, a.body)
	}
	csp := a.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if a.header.Get("X-Content-Type-Options") != "nosniff" || a.header.Get("Cache-Control") != "no-store" {
		t.Errorf("headers %v: want nosniff and no-store", a.header)
	}
	for _, want := range []string{`id="stage-one-box"`, `id="stage-zone-1"`, "wave 1", "wave 2", "alice-viewer"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("pipeline page lacks %q", want)
		}
	}
	if strings.Contains(a.body, e.viewer) {
		t.Error("the page shows the session token")
	}
	static := e.do(http.MethodGet, "/ui/static/ui.css", "", nil, nil)
	if static.status != http.StatusOK || !strings.HasPrefix(static.header.Get("Content-Type"), "text/css") {
		t.Errorf("ui.css: %d %s", static.status, static.header.Get("Content-Type"))
	}
}

func TestActionsWithoutTheSessionsCSRFTokenOrFromAnotherOriginChangeNothing(t *testing.T) {
	e := newEnv(t)
	disable := func(csrf string) url.Values {
		v := url.Values{"stage": {"one-box"}, "enabled": {"0"}, "direction": {"both"}, "reason": {"INC-1"}}
		if csrf != "" {
			v.Set(ui.CSRFField, csrf)
		}
		return v
	}
	tests := []struct {
		name     string
		token    string
		form     url.Values
		header   map[string]string
		wantText string
	}{
		{name: "no CSRF token", token: e.deploy, form: disable(""), wantText: "CSRF"},
		{name: "wrong CSRF token", token: e.deploy, form: disable(strings.Repeat("0", 64)), wantText: "CSRF"},
		{name: "another session's CSRF token", token: e.deploy, form: disable(ui.CSRFToken(e.viewer)), wantText: "CSRF"},
		{name: "another origin", token: e.deploy, form: disable(ui.CSRFToken(e.deploy)), header: map[string]string{"Origin": "https://evil.example"}, wantText: "another origin"},
		{name: "cross-site fetch", token: e.deploy, form: disable(ui.CSRFToken(e.deploy)), header: map[string]string{"Sec-Fetch-Site": "cross-site"}, wantText: "cross-site"},
		{name: "no session", token: "", form: disable(ui.CSRFToken(e.deploy)), wantText: "not signed in"},
		{name: "viewer session, refused by the API", token: e.viewer, form: disable(ui.CSRFToken(e.viewer)), wantText: "needs role deployer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := e.do(http.MethodPost, "/ui/p/web/promotions", tc.token, tc.form, tc.header)
			if a.status != http.StatusForbidden {
				t.Fatalf("status %d, want 403: %s", a.status, a.body)
			}
			if !strings.Contains(a.body, tc.wantText) || !strings.Contains(a.body, "nothing was changed") {
				t.Errorf("refusal does not say %q and that nothing changed: %s", tc.wantText, a.body)
			}
			if b := e.block("one-box"); b.GetIn() || b.GetOut() {
				t.Fatalf("a refused request blocked the stage: %v", b)
			}
		})
	}
	// The same form from the deployer's own page goes through.
	a := e.do(http.MethodPost, "/ui/p/web/promotions", e.deploy, disable(ui.CSRFToken(e.deploy)), map[string]string{"Origin": e.base, "Sec-Fetch-Site": "same-origin"})
	if a.status != http.StatusSeeOther {
		t.Fatalf("deployer's own form: %d: %s", a.status, a.body)
	}
	if b := e.block("one-box"); !b.GetIn() || !b.GetOut() || b.GetActor() != "bob-deployer" || b.GetReason() != "INC-1" {
		t.Fatalf("block after the deployer's form: %v", b)
	}
}

func TestPagesEscapeWhatOperatorsWrote(t *testing.T) {
	e := newEnv(t)
	reason := `<script>alert("x")</script><img src=x onerror=alert(1)>`
	if _, err := e.admin.Operator.SetPromotions(ctx(t), connect.NewRequest(&captainv1.SetPromotionsRequest{
		Pipeline: "web", Stage: "zone-1", Reason: reason, Direction: captainv1.PromotionDirection_PROMOTION_DIRECTION_BOTH,
	})); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/ui/p/web", "/ui/p/web/s/zone-1", "/ui/p/web/live"} {
		a := e.do(http.MethodGet, path, e.viewer, nil, nil)
		if a.status != http.StatusOK {
			t.Fatalf("%s: %d: %s", path, a.status, a.body)
		}
		if strings.Contains(a.body, "<script>alert") || strings.Contains(a.body, "<img src=x") {
			t.Errorf("%s shows the reason unescaped", path)
		}
		if !strings.Contains(a.body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
			t.Errorf("%s lacks the escaped reason", path)
		}
	}
}

func TestViewerSeesNoActionButtons(t *testing.T) {
	e := newEnv(t)
	viewer := e.do(http.MethodGet, "/ui/p/web/s/one-box", e.viewer, nil, nil)
	deployer := e.do(http.MethodGet, "/ui/p/web/s/one-box", e.deploy, nil, nil)
	for _, marker := range []string{`id="disable-promotions"`, `id="rollback-stage"`} {
		if strings.Contains(viewer.body, marker) {
			t.Errorf("viewer's stage page shows %s", marker)
		}
		if !strings.Contains(deployer.body, marker) {
			t.Errorf("deployer's stage page lacks %s", marker)
		}
	}
	if !strings.Contains(viewer.body, `id="read-only"`) {
		t.Error("viewer's stage page does not say why there are no actions")
	}
}

func TestSignOutClearsTheCookie(t *testing.T) {
	e := newEnv(t)
	a := e.do(http.MethodPost, "/ui/logout", e.viewer, url.Values{ui.CSRFField: {ui.CSRFToken(e.viewer)}}, nil)
	if a.status != http.StatusSeeOther {
		t.Fatalf("sign out: %d: %s", a.status, a.body)
	}
	cookies := (&http.Response{Header: a.header}).Cookies()
	if len(cookies) != 1 || cookies[0].Name != ui.SessionCookie || cookies[0].MaxAge >= 0 || cookies[0].Value != "" {
		t.Fatalf("sign out set %v, want the session cookie deleted", cookies)
	}
}

// release creates a release with one commit; nothing fetches the artifact in these tests.
func (e *env) release(n int, message string) string {
	e.t.Helper()
	sha := strings.Repeat(string(rune('a'+n)), 40)
	digest := strings.Repeat(string(rune('0'+n)), 64)
	_, err := e.admin.Release.CreateRelease(ctx(e.t), connect.NewRequest(&captainv1.CreateReleaseRequest{
		Pipeline: "web", HeadCommit: sha, RequestId: "ui-unit-" + sha,
		Commits: []*captainv1.Commit{{Sha: sha, Message: message, Author: "Dev <dev@example.com>"}},
		Artifact: &captainv1.ArtifactRef{Bucket: "b", Key: "artifacts/web/" + digest + ".tar.zst", Sha256: digest, Size: 1234,
			ManifestKey: "artifacts/web/" + digest + ".manifest.json", SignatureKey: "artifacts/web/" + digest + ".manifest.sig"},
	}))
	if err != nil {
		e.t.Fatal(err)
	}
	return sha
}

func TestEveryPageDrawsWhatTheAPIAnswers(t *testing.T) {
	e := newEnv(t)
	first := e.release(1, "add <b>bold</b> prices")
	e.release(2, "second")
	// The engine deploys to environments without hosts too; wait for #2's deployment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := e.admin.Deployment.ListDeployments(ctx(t), connect.NewRequest(&captainv1.ListDeploymentsRequest{Pipeline: "web", Environment: "one-box", Read: &captainv1.ReadOptions{Consistent: true}}))
		if err != nil {
			t.Fatal(err)
		}
		if d := res.Msg.GetDeployments(); len(d) > 0 && d[0].GetRelease() == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no deployment of release 2 to one-box within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	tests := []struct {
		path       string
		token      string
		wantStatus int
		want       []string
	}{
		{"/ui/", e.viewer, http.StatusOK, []string{`href="/ui/p/web"`, "2 stages"}},
		{"/ui/p/web/releases", e.viewer, http.StatusOK, []string{`href="/ui/p/web/r/2"`, "add &lt;b&gt;bold&lt;/b&gt; prices"}},
		{"/ui/p/web/r/1", e.viewer, http.StatusOK, []string{"Release #1", first, `id="release-stages"`, "s3://b/artifacts/web/"}},
		{"/ui/p/web/r/2?diff=1", e.viewer, http.StatusOK, []string{`id="diff"`, "#1 → #2: 1 commit(s)", "second", "unavailable"}},
		{"/ui/p/web/r/2?diff=x", e.viewer, http.StatusBadRequest, []string{"not a release number"}},
		{"/ui/p/web/r/9", e.viewer, http.StatusNotFound, []string{"Not found"}},
		{"/ui/p/web/e/one-box", e.viewer, http.StatusOK, []string{"No host belongs", `id="history"`, "pipeline", "<code>ccccccc</code> second"}},
		{"/ui/p/web/s/zone-1", e.viewer, http.StatusOK, []string{`id="stage-zone-1"`}},
		{"/ui/p/web/s/nope", e.viewer, http.StatusNotFound, []string{"has no stage nope"}},
		{"/ui/p/nope", e.viewer, http.StatusNotFound, []string{"Not found"}},
		{"/ui/commit", e.viewer, http.StatusOK, []string{`id="commit-sha"`}},
		{"/ui/commit?sha=" + first[:8], e.viewer, http.StatusOK, []string{`id="commit-result"`, first, "web #1", `data-stage="one-box"`, "not yet"}},
		{"/ui/commit?sha=0123456789", e.viewer, http.StatusOK, []string{`id="commit-missing"`}},
		{"/ui/d/d-999999", e.viewer, http.StatusNotFound, []string{"Not found"}},
		{"/ui/p/web/rollback?stage=one-box", e.deploy, http.StatusOK, []string{"Roll back stage one-box", `name="stage" value="one-box"`}},
		{"/ui/p/web/rollback", e.deploy, http.StatusBadRequest, []string{"say what to roll back"}},
		{"/ui/p/web/rollback/preview?stage=one-box", e.deploy, http.StatusOK, []string{`id="rollback-plan"`}},
		{"/ui/p/web/rollback/preview?stage=one-box", e.viewer, http.StatusForbidden, []string{"needs role deployer"}},
		{"/ui/login?msg=signed-out", "", http.StatusOK, []string{"You are signed out."}},
		{"/ui/p/web/s/one-box?done=approved&release=7", e.viewer, http.StatusOK, []string{"Approved release #7."}},
	}
	env := e.do(http.MethodGet, "/ui/p/web/e/one-box", e.viewer, nil, nil)
	m := regexp.MustCompile(`href="/ui/d/([^"]+)"`).FindStringSubmatch(env.body)
	if m == nil {
		t.Fatalf("the environment page links no deployment:\n%s", env.body)
	}
	tests = append(tests, struct {
		path       string
		token      string
		wantStatus int
		want       []string
	}{"/ui/d/" + m[1], e.viewer, http.StatusOK, []string{"Deployment <code>" + m[1], "deploy of release", `id="deployment-state"`}})
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			a := e.do(http.MethodGet, tc.path, tc.token, nil, nil)
			if a.status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", a.status, tc.wantStatus, a.body)
			}
			for _, w := range tc.want {
				if !strings.Contains(a.body, w) {
					t.Errorf("page lacks %q:\n%s", w, a.body)
				}
			}
		})
	}
}

func TestOverTLSTheSessionCookieIsSecure(t *testing.T) {
	ca := clustertest.NewCA(t, "captain-ui-test-ca")
	c := clustertest.New(t, 1, clustertest.Options{Configure: func(_ int, cfg *daemon.Config) {
		cfg.TLSCert, cfg.TLSKey = ca.Issue(t, cfg.NodeID)
		cfg.TLSCA = ca.File
	}})
	n := c.Nodes[0]
	hc, err := (&clientcfg.Config{Addr: n.APIAddr, CACert: ca.File}).HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	base := n.Daemon().BaseURL()
	form := url.Values{"token": {clustertest.AdminSecret}, "next": {"/ui/"}}
	req, err := http.NewRequestWithContext(ctx(t), http.MethodPost, base+"/ui/login", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	res, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusSeeOther {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("sign-in over TLS: %d: %s", res.StatusCode, b)
	}
	cookies := res.Cookies()
	if len(cookies) != 1 || !cookies[0].Secure || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookies over TLS %v: want one Secure, HttpOnly, SameSite=Strict session cookie", cookies)
	}
}
