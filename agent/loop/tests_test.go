package loop

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestCommandTestsRunOnceAndReportTheirResult(t *testing.T) {
	c := newCoordinator()
	h := newHost(t, serve(t, c))
	r := h.start()
	defer r.stop()
	app := h.desired(1, "d1", "")
	c.want(app)
	eventually(t, 20*time.Second, healthyReported(c, "d1"), func() string { return "d1 not healthy" })
	app.Tests = []*captainv1.CommandTestRun{
		{Id: "web/onebox/1/smoke", Name: "smoke", Command: []string{"/bin/sh", "-c", "echo fine"}, Timeout: durationpb.New(10 * time.Second)},
		{Id: "web/onebox/1/broken", Name: "broken", Command: []string{"/bin/sh", "-c", "echo bad >&2; exit 3"}},
	}
	c.want(app)
	results := func() map[string]*captainv1.StepOutput {
		_, evs, _ := c.snapshot()
		out := map[string]*captainv1.StepOutput{}
		for _, ev := range evs {
			if tr := ev.GetTestResult(); tr != nil {
				if _, dup := out[tr.GetId()]; dup {
					t.Fatalf("test %s reported twice", tr.GetId())
				}
				out[tr.GetId()] = tr.GetOutput()
			}
		}
		return out
	}
	eventually(t, 20*time.Second, func() bool { return len(results()) == 2 }, func() string { return fmt.Sprintf("test results %v", results()) })
	got := results()
	if s := got["web/onebox/1/smoke"]; !s.GetPassed() || s.GetExitCode() != 0 || s.GetOutput() == "" {
		t.Errorf("smoke = %v, want passed with its output", s)
	}
	if b := got["web/onebox/1/broken"]; b.GetPassed() || b.GetExitCode() != 3 {
		t.Errorf("broken = %v, want failed with exit 3", b)
	}
	// The same desired state again (a reconnect) runs nothing twice.
	c.want(app)
	eventually(t, 5*time.Second, func() bool { return len(results()) == 2 }, func() string { return "" })
}
