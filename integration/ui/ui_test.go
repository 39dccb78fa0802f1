package ui

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// testPipeline has a one-box, a zone behind a manual approval in the same wave, and a second
// wave that watches an alarm.
const testPipeline = `name: web
description: the web frontend
deploy:
  app_root: /srv/web
  artifact_store: {bucket: captain-artifacts, region: us-east-1}
alarms:
  - name: web-5xx-rate
stages:
  - name: one-box
    wave: 1
    environments: [{name: one-box, selector: {stage: one-box}}]
  - name: zone-1
    wave: 1
    environments: [{name: zone-1, selector: {stage: zone-1}}]
    approval: {manual: {required: true}}
  - name: zone-2
    wave: 2
    environments: [{name: zone-2, selector: {stage: zone-2}}]
    approval: {alarms: {names: [web-5xx-rate], insufficient_data: approve}}
`

// standardWorld is the cluster with testPipeline and one simulated host per stage; zone-2's
// host holds its reports, so a deployment there stays in progress until released.
func standardWorld(t *testing.T) (*world, map[string]*simHost) {
	w := newWorld(t)
	w.applyPipeline(testPipeline)
	hosts := map[string]*simHost{
		"one-box": w.addHost("web-1", false, map[string]string{"stage": "one-box"}),
		"zone-1":  w.addHost("web-2", false, map[string]string{"stage": "zone-1"}),
		"zone-2":  w.addHost("web-3", true, map[string]string{"stage": "zone-2"}),
	}
	return w, hosts
}

func phaseIs(p captainv1.StagePhase, release uint64) func(*captainv1.StageState) bool {
	return func(s *captainv1.StageState) bool { return s.GetPhase() == p && s.GetRelease() == release }
}

// approved holds once the stage approved the release: the engine is back to idle and every
// environment has it as last good.
func approved(release uint64) func(*captainv1.StageState) bool {
	return func(s *captainv1.StageState) bool {
		if s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_IDLE || s.GetRelease() != release {
			return false
		}
		for _, e := range s.GetEnvironments() {
			if e.GetLastGoodRelease() != release {
				return false
			}
		}
		return true
	}
}

func TestPipelinePageShowsEachStagesReleaseAndPhaseAndFollowsChangesWithoutAReload(t *testing.T) {
	w, hosts := standardWorld(t)
	viewer := w.token("vera", captainv1.Role_ROLE_VIEWER)
	r1, _ := w.release("web", "first")
	w.waitStage("web", "zone-1", "waits for approval of #1", phaseIs(captainv1.StagePhase_STAGE_PHASE_VERIFYING, r1))

	p := newBrowser(t, w.cluster.Nodes[1].URL(), 1280, 900) // a follower serves the UI as well
	p.signIn(viewer, "/ui/p/web")
	p.waitText("#stage-one-box .rel", fmt.Sprintf("#%d", r1), 5*time.Second)
	p.waitText("#stage-one-box .phase", "approved", 5*time.Second)
	p.waitText("#stage-zone-1 .phase", "waiting for approval", 5*time.Second)
	p.waitText("#stage-zone-1 .approvals", "manual: waiting", 5*time.Second)
	p.waitText("#stage-zone-2 .phase", "idle", 5*time.Second)
	p.waitText("#stage-zone-2 .alarms", "alarm web-5xx-rate: insufficient data", 5*time.Second)
	if p.exists("#stage-zone-1 button.approve") {
		t.Error("a viewer sees the approve button")
	}

	// Mark the document: a reload would lose the mark.
	if _, err := eval[bool](p, `(window.__notReloaded = true)`); err != nil {
		t.Fatal(err)
	}

	// An operator approves through the API; zone-2 starts deploying to its held host.
	deployer := w.clients(w.token("dora", captainv1.Role_ROLE_DEPLOYER))
	if _, err := deployer.operator.Approve(w.rpcCtx(), connect.NewRequest(&captainv1.ApproveRequest{Pipeline: "web", Stage: "zone-1", Release: r1, Comment: "looks fine"})); err != nil {
		t.Fatal(err)
	}
	p.waitText("#stage-zone-1 .phase", "approved", 10*time.Second)
	p.waitText("#stage-zone-2 .phase", "deploying 0/1 hosts", 10*time.Second)
	p.waitText("#stage-zone-2 .rel", fmt.Sprintf("#%d", r1), 10*time.Second)

	// The alarm fires and clears; each state shows up as it happens.
	for _, st := range []struct {
		state captainv1.AlarmState
		shows string
	}{{captainv1.AlarmState_ALARM_STATE_OK, "web-5xx-rate: ok"}} {
		if _, err := deployer.alarm.SetAlarmState(w.rpcCtx(), connect.NewRequest(&captainv1.SetAlarmStateRequest{Name: "web-5xx-rate", State: st.state, Reason: "from the test"})); err != nil {
			t.Fatal(err)
		}
		p.waitText("#stage-zone-2 .alarms", st.shows, 10*time.Second)
	}

	hosts["zone-2"].Hold(false)
	p.waitText("#stage-zone-2 .phase", "approved", 10*time.Second)
	p.waitText("#stage-zone-2 .envs", "1/1 healthy", 10*time.Second)

	// A block set by someone shows with its reason and who set it.
	if _, err := deployer.operator.SetPromotions(w.rpcCtx(), connect.NewRequest(&captainv1.SetPromotionsRequest{
		Pipeline: "web", Stage: "one-box", Direction: captainv1.PromotionDirection_PROMOTION_DIRECTION_BOTH, Reason: "INC-4711 <checkout> errors",
	})); err != nil {
		t.Fatal(err)
	}
	p.waitText("#stage-one-box .block", "blocked in+out by dora", 10*time.Second)
	p.waitText("#stage-one-box .block", "INC-4711 <checkout> errors", 10*time.Second)

	// A release waiting in the blocked stage's inbox, superseded by a newer one.
	r2, _ := w.release("web", "second")
	p.waitText("#stage-one-box .inbox", fmt.Sprintf("inbox #%d", r2), 10*time.Second)
	r3, _ := w.release("web", "third")
	p.waitText("#stage-one-box .inbox", fmt.Sprintf("inbox #%d", r3), 10*time.Second)
	p.waitText("#stage-one-box .inbox", fmt.Sprintf("(superseded #%d)", r2), 10*time.Second)

	if ok, err := eval[bool](p, `window.__notReloaded === true`); err != nil || !ok {
		t.Fatalf("the page reloaded to show the changes (mark kept: %v, %v)", ok, err)
	}

	// On a phone the waves stack: nothing runs off the side of the screen.
	p.do("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	p.open("/ui/p/web")
	p.waitText("#stage-zone-2 .phase", "approved", 5*time.Second)
	if wide, err := eval[bool](p, `document.documentElement.scrollWidth > window.innerWidth + 1`); err != nil || wide {
		t.Errorf("the pipeline page is wider than a phone's screen (%v)", err)
	}
	if stacked, err := eval[bool](p, `(() => { const w = [...document.querySelectorAll('.wave')]; return w.length > 1 && w[1].getBoundingClientRect().top > w[0].getBoundingClientRect().bottom; })()`); err != nil || !stacked {
		t.Errorf("the waves do not stack on a phone (%v)", err)
	}
}

// soloPipeline is one stage with one environment: the smallest pipeline that can fail.
const soloPipeline = `name: api
deploy:
  app_root: /srv/api
  artifact_store: {bucket: captain-artifacts, region: us-east-1}
stages:
  - name: one-box
    environments: [{name: one-box, selector: {stage: one-box}}]
`

func TestPipelinePageShowsAFailedReleaseRollingBackAndTheBlockWithoutAReload(t *testing.T) {
	w := newWorld(t)
	w.applyPipeline(soloPipeline)
	host := w.addHost("api-1", false, map[string]string{"stage": "one-box"})
	r1, _ := w.release("api", "first")
	w.waitStage("api", "one-box", "approves #1", approved(r1))

	p := newBrowser(t, w.cluster.Nodes[0].URL(), 1280, 900)
	p.signIn(w.token("vera", captainv1.Role_ROLE_VIEWER), "/ui/p/api")
	p.waitText("#stage-one-box .phase", "approved", 5*time.Second)
	if _, err := eval[bool](p, `(window.__notReloaded = true)`); err != nil {
		t.Fatal(err)
	}

	// The next release fails its health check on the host; the host then holds, so the
	// automatic rollback to #1 stays in progress until the test lets it finish.
	host.FailAbove(r1)
	r2, _ := w.release("api", "second")
	p.waitText("#stage-one-box .phase", "rolling back 0/1 hosts", 15*time.Second)
	p.waitText("#stage-one-box .failure", "environment one-box", 5*time.Second)
	p.waitText("#stage-one-box .block", "blocked in+out by captain", 5*time.Second)
	p.waitText("#stage-one-box .block", fmt.Sprintf("release %d failed", r2), 5*time.Second)
	if !p.exists("#stage-one-box progress") {
		t.Error("no progress bar while rolling back")
	}

	host.Hold(false)
	p.waitText("#stage-one-box .envs", "1/1 healthy", 15*time.Second)
	p.waitText("#stage-one-box .envs", fmt.Sprintf("last good #%d", r1), 5*time.Second)
	// The block stays until someone looks: the stage does not take #2 again by itself.
	p.waitText("#stage-one-box .block", "blocked in+out by captain", 5*time.Second)
	if got := w.stage("api", "one-box"); got.GetEnvironments()[0].GetCurrentRelease() != r1 {
		t.Errorf("one-box runs #%d after the rollback, want #%d", got.GetEnvironments()[0].GetCurrentRelease(), r1)
	}

	if ok, err := eval[bool](p, `window.__notReloaded === true`); err != nil || !ok {
		t.Fatalf("the page reloaded to show the changes (mark kept: %v, %v)", ok, err)
	}
}

func TestRollbackWithPreviewAndConfirmShowsInTheHistory(t *testing.T) {
	w, _ := standardWorld(t)
	deployer := w.token("dora", captainv1.Role_ROLE_DEPLOYER)
	r1, _ := w.release("web", "add the cart")
	w.waitStage("web", "one-box", "approves #1", approved(r1))
	r2, c2 := w.release("web", "rewrite checkout")
	w.waitStage("web", "one-box", "approves #2", approved(r2))

	p := newBrowser(t, w.cluster.Nodes[0].URL(), 1280, 900)
	p.signIn(deployer, "/ui/p/web/e/one-box")
	p.waitText("#history", "deploy", 5*time.Second)
	p.do("open the rollback form", chromedp.Click(chromedp.CSS("#rollback-env")), chromedp.WaitVisible(chromedp.CSS("#rollback-preview")))
	// #2 is last good there as well, so the operator names the release to return to.
	p.do("preview",
		chromedp.SendKeys(chromedp.CSS("#rollback-to"), fmt.Sprint(r1)),
		chromedp.SendKeys(chromedp.CSS("#rollback-reason"), "INC-4711 checkout errors"),
		chromedp.Click(chromedp.CSS("#rollback-preview")),
		chromedp.WaitVisible(chromedp.CSS("#rollback-plan")),
	)
	plan := p.text("#rollback-plan")
	for _, want := range []string{
		fmt.Sprintf("stage one-box, environment one-box: #%d → #%d", r2, r1),
		"hosts affected: 1",
		"commits that go away: 1",
		short(c2) + " rewrite checkout",
		"artifact file changes",
	} {
		if !strings.Contains(plan, want) {
			t.Errorf("preview lacks %q:\n%s", want, plan)
		}
	}
	if got := w.deployments("web", "one-box"); len(got) != 2 {
		t.Fatalf("the preview changed something: %d deployments, want 2", len(got))
	}
	p.do("confirm", chromedp.Click(chromedp.CSS("#rollback-confirm")), chromedp.WaitVisible(chromedp.CSS("#rollback-result")))
	p.waitText("#rollback-result", "Started 1 rollback deployment(s)", 5*time.Second)

	p.do("follow the history", chromedp.Click(chromedp.CSS("a.env-link")), chromedp.WaitVisible(chromedp.CSS("#history")))
	p.waitText("#history tbody tr:first-child", "rollback", 5*time.Second)
	p.waitText("#history tbody tr:first-child", "operator dora", 5*time.Second)
	p.waitText("#history tbody tr:first-child", "INC-4711 checkout errors", 5*time.Second)
	p.waitText("#history tbody tr:first-child", fmt.Sprintf("#%d", r1), 5*time.Second)

	deps := w.deployments("web", "one-box")
	if len(deps) != 3 || deps[0].GetKind() != captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK || deps[0].GetRelease() != r1 {
		t.Fatalf("after the confirm the API shows %d deployments, newest %v", len(deps), deps[0])
	}
	// Reload until the host reported; the rollback then reads succeeded, per host too.
	deadline := time.Now().Add(15 * time.Second)
	for {
		p.open("/ui/p/web/e/one-box")
		if strings.Contains(p.text("#history tbody tr:first-child"), "succeeded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rollback does not read succeeded: %s", p.text("#history tbody tr:first-child"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	p.do("open the deployment", chromedp.Click(chromedp.CSS("#history tbody tr:first-child a")), chromedp.WaitVisible(chromedp.CSS("#host-results")))
	p.waitText("#host-results", "healthy", 5*time.Second)
	p.waitText("#deployment-state", "succeeded", 5*time.Second)
}

func TestViewerSeesNoRollbackButtonAndForgedRequestsAreRefused(t *testing.T) {
	w, _ := standardWorld(t)
	viewer := w.token("vera", captainv1.Role_ROLE_VIEWER)
	r1, _ := w.release("web", "one")
	w.waitStage("web", "one-box", "approves #1", approved(r1))
	r2, _ := w.release("web", "two")
	w.waitStage("web", "one-box", "approves #2", approved(r2))

	p := newBrowser(t, w.cluster.Nodes[2].URL(), 1280, 900)
	p.signIn(viewer, "/ui/p/web/e/one-box")
	p.waitText("#history", "deploy", 5*time.Second)
	if p.exists("#rollback-env") {
		t.Error("the environment page shows a viewer the rollback button")
	}
	p.open("/ui/p/web/s/one-box")
	if p.exists("#rollback-stage") || p.exists("#disable-promotions") {
		t.Error("the stage page shows a viewer action buttons")
	}
	p.waitText("#read-only", "need a deployer or admin token", 5*time.Second)

	// Forge the confirm form in the viewer's page: first without the CSRF token, then with the
	// viewer's own (valid) one, which the API refuses for the role.
	forge := func(withCSRF bool) string {
		return fmt.Sprintf(`(() => {
			const f = document.createElement('form');
			f.method = 'post'; f.action = '/ui/p/web/rollback';
			const add = (n, v) => { const i = document.createElement('input'); i.type = 'hidden'; i.name = n; i.value = v; f.appendChild(i); };
			add('stage', 'one-box'); add('request_id', 'ui-rollback-forged%v'); add('reason', 'forged');
			if (%v) add('csrf', document.querySelector('input[name=csrf]').value);
			document.body.appendChild(f); f.submit(); return true; })()`, withCSRF, withCSRF)
	}
	for _, tc := range []struct {
		name     string
		withCSRF bool
		heading  string
		message  string
	}{
		{"without the CSRF token", false, "Refused", "CSRF token"},
		{"with the viewer's CSRF token", true, "Refused by the API", "needs role deployer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.open("/ui/p/web/s/one-box")
			if _, err := eval[bool](p, forge(tc.withCSRF)); err != nil {
				t.Fatal(err)
			}
			p.waitText("h1", tc.heading, 10*time.Second)
			p.waitText("#error-message", tc.message, 5*time.Second)
			p.waitText("#error-message", "nothing was changed", 5*time.Second)
			if deps := w.deployments("web", "one-box"); len(deps) != 2 || deps[0].GetKind() != captainv1.DeploymentKind_DEPLOYMENT_KIND_DEPLOY {
				t.Fatalf("a forged request changed the history: %d deployments", len(deps))
			}
			if b := w.stage("web", "one-box").GetBlock(); b.GetIn() || b.GetOut() {
				t.Fatalf("a forged request blocked the stage: %v", b)
			}
		})
	}
}

func TestCommitPageAnswersForKnownAndUnknownCommits(t *testing.T) {
	w, _ := standardWorld(t)
	viewer := w.token("vera", captainv1.Role_ROLE_VIEWER)
	r1, c1 := w.release("web", "fix the basket")
	w.waitStage("web", "zone-1", "waits for approval of #1", phaseIs(captainv1.StagePhase_STAGE_PHASE_VERIFYING, r1))

	p := newBrowser(t, w.cluster.Nodes[0].URL(), 1280, 900)
	p.signIn(viewer, "/ui/p/web")
	p.do("search the commit",
		chromedp.SendKeys(chromedp.CSS("header .search input"), short(c1)),
		chromedp.Click(chromedp.CSS("header .search button")),
		chromedp.WaitVisible(chromedp.CSS("#commit-result")),
	)
	p.waitText("#commit-result", "Commit "+c1, 5*time.Second)
	p.waitText("#commit-result", fmt.Sprintf("first released in web #%d", r1), 5*time.Second)
	classes, err := eval[map[string]string](p, `Object.fromEntries([...document.querySelectorAll('ol.stagerow > li')].map(li => [li.dataset.stage, li.className]))`)
	if err != nil {
		t.Fatal(err)
	}
	// zone-1 is deploying or verifying #1: its host already runs it.
	want := map[string]string{"one-box": "contained", "zone-1": "contained", "zone-2": "not-yet"}
	for stage, class := range want {
		if classes[stage] != class {
			t.Errorf("stage %s drawn as %q, want %q (all: %v)", stage, classes[stage], class, classes)
		}
	}
	p.waitText(`li.chip[data-env="one-box"]`, "contains", 5*time.Second)
	p.waitText(`li.chip[data-env="zone-2"]`, "not yet", 5*time.Second)

	p.do("search an unknown commit",
		chromedp.Clear(chromedp.CSS("#commit-sha")),
		chromedp.SendKeys(chromedp.CSS("#commit-sha"), "deadbeef"),
		chromedp.Submit(chromedp.CSS("#commit-sha")),
		chromedp.WaitVisible(chromedp.CSS("#commit-missing")),
	)
	if got := p.text("#commit-missing"); !strings.Contains(got, "deadbeef") {
		t.Errorf("unknown commit answer %q does not name the commit", got)
	}
	if p.exists("#commit-result") {
		t.Error("an unknown commit shows a result")
	}
}

func TestDeployerApprovesAndSetsPromotionsFromTheUI(t *testing.T) {
	w, _ := standardWorld(t)
	deployer := w.token("dora", captainv1.Role_ROLE_DEPLOYER)
	r1, _ := w.release("web", "first")
	w.waitStage("web", "zone-1", "waits for approval of #1", phaseIs(captainv1.StagePhase_STAGE_PHASE_VERIFYING, r1))

	p := newBrowser(t, w.cluster.Nodes[1].URL(), 1280, 900)
	p.signIn(deployer, "/ui/p/web")
	p.waitText("#stage-zone-1 .phase", "waiting for approval", 5*time.Second)
	p.do("approve on the board", chromedp.Click(chromedp.CSS("#stage-zone-1 button.approve")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	p.waitText(".flash", fmt.Sprintf("Approved release #%d.", r1), 5*time.Second)
	w.waitStage("web", "zone-1", "approves #1", approved(r1))

	p.do("disable promotions",
		chromedp.SendKeys(chromedp.CSS("#disable-reason"), "INC-9 schema migration"),
		chromedp.Click(chromedp.CSS("#disable-promotions")),
		chromedp.WaitVisible(chromedp.CSS(".flash")),
	)
	p.waitText(".flash", "Promotions disabled.", 5*time.Second)
	p.waitText("#stage-zone-1 .block", "blocked in+out by dora", 5*time.Second)
	p.waitText("#stage-zone-1 .block", "INC-9 schema migration", 5*time.Second)
	if b := w.stage("web", "zone-1").GetBlock(); !b.GetIn() || !b.GetOut() || b.GetActor() != "dora" {
		t.Fatalf("after disabling, the API shows block %v", b)
	}

	p.do("enable promotions", chromedp.Click(chromedp.CSS("#enable-promotions")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	p.waitText(".flash", "Promotions enabled", 5*time.Second)
	if p.exists("#stage-zone-1 .block") {
		t.Error("the stage page still shows the block")
	}
	if b := w.stage("web", "zone-1").GetBlock(); b.GetIn() || b.GetOut() {
		t.Fatalf("after enabling, the API shows block %v", b)
	}
}
