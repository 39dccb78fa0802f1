package ui

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// screenshotPipeline is the shape of ops/examples/pipeline.yaml in miniature. Version 2 only
// lengthens the bake of use1-az1, so a release created after it bakes there for a while.
const screenshotPipeline = `name: web
description: the checkout frontend
deploy:
  app_root: /srv/web
  artifact_store: {bucket: captain-artifacts, region: us-east-1}
alarms:
  - name: web-5xx-rate
  - name: web-latency-p99
stages:
  - name: use1-onebox
    wave: 1
    environments: [{name: use1-onebox, selector: {az: use1-az1, role: onebox}}]
    approval: {alarms: {names: [web-5xx-rate], insufficient_data: approve}}
  - name: use1-az1
    wave: 1
    environments: [{name: use1-az1, selector: {az: use1-az1, role: fleet}}]
    approval: {bake: {duration: %s}, alarms: {names: [web-5xx-rate, web-latency-p99], insufficient_data: approve}}
  - name: use1-az2
    wave: 1
    environments: [{name: use1-az2, selector: {az: use1-az2, role: fleet}}]
  - name: usw2
    wave: 2
    batch: {max_unavailable: "50%%"}
    environments:
      - {name: usw2-az1, selector: {az: usw2-az1}}
      - {name: usw2-az2, selector: {az: usw2-az2}}
  - name: euw1
    wave: 3
    environments: [{name: euw1-az1, selector: {az: euw1-az1}}]
    approval: {manual: {required: true}}
`

// TestREADMEScreenshot draws the pipeline page of a realistic state (a release baking, one
// deploying, a block with its reason, an inbox with a superseded release) and saves it where
// CAPTAIN_UI_SCREENSHOT says, for the README. It runs only when asked.
func TestREADMEScreenshot(t *testing.T) {
	out := os.Getenv("CAPTAIN_UI_SCREENSHOT")
	if out == "" {
		t.Skip("set CAPTAIN_UI_SCREENSHOT=ops/docs/ui-pipeline.png to draw the README's screenshot")
	}
	w := newWorld(t)
	w.applyPipeline(fmt.Sprintf(screenshotPipeline, "0s"))
	fleet := func(name, az, role string) *simHost {
		return w.addHost(name, false, map[string]string{"az": az, "role": role})
	}
	fleet("use1-web-01", "use1-az1", "onebox")
	fleet("use1-web-02", "use1-az1", "fleet")
	fleet("use1-web-03", "use1-az1", "fleet")
	fleet("use1-web-04", "use1-az2", "fleet")
	fleet("use1-web-05", "use1-az2", "fleet")
	usw2 := []*simHost{fleet("usw2-web-01", "usw2-az1", "fleet"), fleet("usw2-web-02", "usw2-az1", "fleet"), fleet("usw2-web-03", "usw2-az2", "fleet"), fleet("usw2-web-04", "usw2-az2", "fleet")}
	fleet("euw1-web-01", "euw1-az1", "fleet")
	fleet("euw1-web-02", "euw1-az1", "fleet")

	alice := w.clients(w.token("alice", captainv1.Role_ROLE_DEPLOYER))
	for _, name := range []string{"web-5xx-rate", "web-latency-p99"} {
		if _, err := alice.alarm.SetAlarmState(w.rpcCtx(), connect.NewRequest(&captainv1.SetAlarmStateRequest{Name: name, State: captainv1.AlarmState_ALARM_STATE_OK, Reason: "within SLO"})); err != nil {
			t.Fatal(err)
		}
	}
	r1, _ := w.release("web", "checkout: show delivery dates")
	w.waitStage("web", "euw1", "waits for approval of #1", phaseIs(captainv1.StagePhase_STAGE_PHASE_VERIFYING, r1))
	if _, err := alice.operator.Approve(w.rpcCtx(), connect.NewRequest(&captainv1.ApproveRequest{Pipeline: "web", Stage: "euw1", Release: r1, Comment: "dashboards fine"})); err != nil {
		t.Fatal(err)
	}
	w.waitStage("web", "euw1", "approves #1", approved(r1))
	if _, err := alice.operator.SetPromotions(w.rpcCtx(), connect.NewRequest(&captainv1.SetPromotionsRequest{
		Pipeline: "web", Stage: "euw1", Direction: captainv1.PromotionDirection_PROMOTION_DIRECTION_IN, Reason: "INC-4711: payment provider outage in eu-west-1",
	})); err != nil {
		t.Fatal(err)
	}
	// usw2-az2's hosts stop answering: the stage stays deploying, half done.
	for _, h := range usw2[2:] {
		h.Hold(true)
	}
	r2, _ := w.release("web", "cart: batch price lookups")
	w.waitStage("web", "usw2", "deploys #2", phaseIs(captainv1.StagePhase_STAGE_PHASE_DEPLOYING, r2))

	w.applyPipeline(fmt.Sprintf(screenshotPipeline, "25m"))
	r3, _ := w.release("web", "search: typo tolerance")
	w.waitStage("web", "use1-az1", "bakes #3", phaseIs(captainv1.StagePhase_STAGE_PHASE_VERIFYING, r3))
	r4, _ := w.release("web", "checkout: retry card declines")
	w.waitStage("web", "use1-az1", "holds #4 in its inbox", func(s *captainv1.StageState) bool { return s.GetInbox().GetRelease() == r4 })
	r5, _ := w.release("web", "checkout: fix retry loop")
	w.waitStage("web", "use1-az1", "holds #5 in its inbox", func(s *captainv1.StageState) bool { return s.GetInbox().GetRelease() == r5 })
	w.waitStage("web", "use1-onebox", "approves #5", approved(r5))

	p := newBrowser(t, w.cluster.Nodes[0].URL(), 1280, 800)
	p.signIn(w.token("reader", captainv1.Role_ROLE_VIEWER), "/ui/p/web")
	p.waitText("#stage-use1-az1 .phase", "baking", 5*time.Second)
	p.waitText("#stage-usw2 .phase", "deploying 2/4 hosts", 10*time.Second)
	p.waitText("#stage-euw1 .block", "blocked in by alice", 5*time.Second)
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", out, len(png))
}
