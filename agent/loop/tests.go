package loop

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/agent/health"
	"github.com/captain-cd/captain/agent/localstate"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// defaultTestTimeout bounds a command test whose spec gave no timeout.
const defaultTestTimeout = time.Minute

// runTests starts the command tests the coordinator chose this host for, each once per agent
// process (a test ID names one stage, release and test); results travel as host events through
// the durable report queue like every other event.
func (a *Agent) runTests(ctx context.Context, app *captainv1.DesiredApp) {
	for _, t := range app.GetTests() {
		a.mu.Lock()
		if a.testsStarted == nil {
			a.testsStarted = map[string]bool{}
		}
		started := a.testsStarted[t.GetId()]
		a.testsStarted[t.GetId()] = true
		a.mu.Unlock()
		if started || len(t.GetCommand()) == 0 {
			continue
		}
		a.wg.Go(func() {
			timeout := t.GetTimeout().AsDuration()
			if timeout <= 0 {
				timeout = defaultTestTimeout
			}
			root := app.GetDeploy().GetAppRoot()
			// Tests run in the release being verified; the coordinator only asks a host that
			// reported it healthy, so current names it.
			dir := filepath.Join(root, "current")
			if _, err := os.Stat(dir); err != nil {
				dir = ""
			}
			out := health.Exec(ctx, health.Command{
				Name: t.GetName(), Argv: t.GetCommand(), Dir: dir, Timeout: timeout,
				Env: []string{"CAPTAIN_PIPELINE=" + app.GetPipeline(), "CAPTAIN_ENVIRONMENT=" + app.GetEnvironment(), "CAPTAIN_APP_ROOT=" + root},
			})
			if ctx.Err() != nil {
				return // stopped mid-run: the result says nothing about the release
			}
			out.Passed = out.GetExitCode() == 0
			ev := &captainv1.HostEvent{
				Pipeline: app.GetPipeline(), Release: app.GetRelease(), Message: "command test " + t.GetName(),
				At: timestamppb.Now(), TestResult: &captainv1.CommandTestResult{Id: t.GetId(), Output: out},
			}
			if err := a.state.Update(func(st *localstate.State) error { st.Enqueue(ev); return nil }); err != nil {
				a.log.Error("command test result not recorded", "test", t.GetName(), "err", err)
				return
			}
			a.log.Info("command test ran", "test", t.GetName(), "passed", out.GetPassed(), "exit", out.GetExitCode())
			select {
			case a.reportWake <- struct{}{}:
			default:
			}
		})
	}
}
