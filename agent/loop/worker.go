package loop

import (
	"context"
	"errors"
	"path/filepath"
	"runtime/debug"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/agent/deploy"
	"github.com/captain-cd/captain/agent/localstate"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// worker deploys one pipeline's desired apps one after the other. Only the newest desired app
// waits: one that arrives while a deployment runs replaces the waiting one, and the running
// deployment is never interrupted for it.
type worker struct {
	pipeline string
	wake     chan struct{}

	mu sync.Mutex
	// resume is a deployment a previous process left half done; it finishes before any newer
	// desired app starts, as if this process had been running it all along.
	resume *captainv1.DesiredApp
	next   *captainv1.DesiredApp
}

// offer gives want to its pipeline's worker, starting the worker on first use.
func (a *Agent) offer(ctx context.Context, want *captainv1.DesiredApp) {
	a.give(ctx, want, false)
}

// underRoot returns want with deploy.app_root moved under root. Only desired apps from the
// coordinator pass through it: a resumed deployment comes from local state, where the
// Deployer recorded the prefixed root, and must not be prefixed twice. An app_root the
// Deployer would refuse (relative, unclean, /) is left as is so it is still refused.
func underRoot(root string, want *captainv1.DesiredApp) *captainv1.DesiredApp {
	appRoot := want.GetDeploy().GetAppRoot()
	if root == "" || !filepath.IsAbs(appRoot) || filepath.Clean(appRoot) != appRoot || appRoot == "/" {
		return want
	}
	want = proto.CloneOf(want)
	want.Deploy.AppRoot = filepath.Join(root, appRoot)
	return want
}

func (a *Agent) give(ctx context.Context, want *captainv1.DesiredApp, resume bool) {
	a.mu.Lock()
	w := a.workers[want.GetPipeline()]
	if w == nil {
		w = &worker{pipeline: want.GetPipeline(), wake: make(chan struct{}, 1)}
		a.workers[w.pipeline] = w
		a.wg.Go(func() { a.work(ctx, w) })
	}
	a.mu.Unlock()

	w.mu.Lock()
	if resume {
		w.resume = want
		w.mu.Unlock()
		w.signal()
		return
	}
	if w.next != nil && w.next.GetDeploymentId() != want.GetDeploymentId() {
		a.log.Info("newer desired app replaces the waiting one", "pipeline", w.pipeline, "replaced", w.next.GetDeploymentId(), "deployment", want.GetDeploymentId())
	}
	w.next = want
	w.mu.Unlock()
	w.signal()
}

func (w *worker) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) take() *captainv1.DesiredApp {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r := w.resume; r != nil {
		w.resume = nil
		return r
	}
	want := w.next
	w.next = nil
	return want
}

// retry puts want back unless a newer one arrived meanwhile.
func (w *worker) retry(want *captainv1.DesiredApp) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next == nil && w.resume == nil {
		w.next = want
	}
}

func (a *Agent) work(ctx context.Context, w *worker) {
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		for want := w.take(); want != nil; want = w.take() {
			if a.done(want) {
				a.log.Debug("desired app already deployed here", "pipeline", w.pipeline, "deployment", want.GetDeploymentId())
				continue
			}
			res, err := a.deployer.Deploy(ctx, want)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				// Local state could not be written, or the pipeline is busy: the deployment
				// stays recorded and is tried again; a newer desired app takes its place.
				if !errors.Is(err, deploy.ErrBusy) {
					a.log.Error("deployment interrupted; retrying", "pipeline", w.pipeline, "deployment", want.GetDeploymentId(), "err", err)
				}
				w.retry(want)
				if !sleep(ctx, a.client.Backoff(failures)) {
					return
				}
				failures++
				continue
			}
			failures = 0
			a.log.Info("deployment ended", "pipeline", res.Pipeline, "deployment", res.DeploymentID, "release", res.Release,
				"state", res.State.String(), "message", res.Message, "resumed", res.Resumed)
			// An agent idles between deployments: hand the buffers of the download and the
			// extraction back to the host now rather than when the runtime gets round to it.
			debug.FreeOSMemory()
		}
	}
}

// done says whether want's deployment already ended on this host, or is what runs now: a
// desired state sent again (after a reconnect) must not redeploy.
func (a *Agent) done(want *captainv1.DesiredApp) bool {
	var app *localstate.App
	a.state.View(func(st *localstate.State) { app = st.Apps[want.GetPipeline()] })
	if app == nil || app.Desired.M.GetDeploymentId() == want.GetDeploymentId() {
		return false
	}
	id := want.GetDeploymentId()
	return (app.LastResult != nil && app.LastResult.DeploymentID == id) || app.CurrentDeploymentID == id
}
