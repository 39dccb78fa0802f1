// Package loop is the agent's main loop: it registers the host, heartbeats, watches the
// desired state and hands each pipeline's newest desired app to one worker that deploys it,
// and reports the events local state queued until the coordinator acknowledges them.
//
// Nothing here touches a release when the coordinators are unreachable: the loops retry with
// backoff and the host keeps running what it runs.
package loop

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/agent/agentclient"
	"github.com/captain-cd/captain/agent/deploy"
	"github.com/captain-cd/captain/agent/localstate"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// client is the part of agentclient.Client the loops use.
type client interface {
	Register(ctx context.Context, req *captainv1.RegisterRequest) (*captainv1.RegisterResponse, error)
	Heartbeat(ctx context.Context, req *captainv1.HeartbeatRequest) (*captainv1.HeartbeatResponse, error)
	Report(ctx context.Context, req *captainv1.ReportRequest) (*captainv1.ReportResponse, error)
	Watch(ctx context.Context, hostID string, after uint64, fn func(*captainv1.WatchResponse) error) error
	SetCredentials(creds agentclient.Credentials)
	Backoff(n int) time.Duration
}

// deployer puts one desired app on the host (deploy.Deployer).
type deployer interface {
	Deploy(ctx context.Context, want *captainv1.DesiredApp) (*deploy.Result, error)
}

// Config tunes an Agent.
type Config struct {
	// StateDir holds identity.json.
	StateDir string
	// RootDir, when set, prefixes every desired app's deploy.app_root, so several agents can
	// share one machine (development and tests); empty on real hosts.
	RootDir string
	// JoinTokenFile is read whenever the agent (re-)registers, so an operator can replace it
	// without a restart.
	JoinTokenFile string
	Hostname      string
	Labels        map[string]string
	AgentVersion  string
	// Heartbeat is the interval until a coordinator names one (default 5s).
	Heartbeat time.Duration
	// ReportEvery is the shortest time between two reports, so events batch (default 200ms).
	ReportEvery time.Duration
	// Watchdog is systemd's WatchdogSec; 0 means no watchdog. WATCHDOG=1 is sent at half.
	Watchdog time.Duration
	// Notify sends a systemd notification ("READY=1", "STATUS=..."); nil sends none.
	Notify func(state string)
}

// registerAttempt bounds one registration attempt; it covers a leader election on the way.
const registerAttempt = 5 * time.Second

// maxReportEvents is the coordinator's limit of events per report.
const maxReportEvents = 64

// Agent runs the loops of one host.
type Agent struct {
	cfg      Config
	client   client
	deployer deployer
	state    *localstate.Store
	log      *slog.Logger

	reportWake chan struct{}
	// regMu serializes registrations; credGen tells a loop whose call failed on a stale
	// credential that another loop registered meanwhile.
	regMu sync.Mutex

	mu           sync.Mutex
	id           Identity
	credGen      uint64
	interval     time.Duration
	desiredIndex uint64
	workers      map[string]*worker
	apps         map[string]string // pipeline -> what it does, for STATUS=
	conn         string            // "" when the coordinators answer
	status       string
	testsStarted map[string]bool // command test IDs run by this process
	wg           sync.WaitGroup
}

// New returns an Agent; Run starts it. st is the open local state (its lock held).
func New(cfg Config, c client, d deployer, st *localstate.Store, log *slog.Logger) *Agent {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 5 * time.Second
	}
	if cfg.ReportEvery <= 0 {
		cfg.ReportEvery = 200 * time.Millisecond
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		cfg: cfg, client: c, deployer: d, state: st, log: log,
		reportWake: make(chan struct{}, 1),
		interval:   cfg.Heartbeat,
		workers:    map[string]*worker{},
		apps:       map[string]string{},
	}
}

// HostID is the registered host ID ("" before registration).
func (a *Agent) HostID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.HostID
}

// OnEvent is deploy.Deployer's OnEvent: the event is durable in local state; report it soon
// and show what the agent does.
func (a *Agent) OnEvent(ev *captainv1.HostEvent) {
	select {
	case a.reportWake <- struct{}{}:
	default:
	}
	a.mu.Lock()
	a.apps[ev.GetPipeline()] = describe(ev)
	a.mu.Unlock()
	a.publishStatus()
}

func describe(ev *captainv1.HostEvent) string {
	what := fmt.Sprintf("%s #%d", ev.GetPipeline(), ev.GetRelease())
	switch ev.GetState() {
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_FETCHING:
		return "deploying " + what + ": fetching artifact"
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_EXTRACTING:
		return "deploying " + what + ": extracting"
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_ACTIVATING:
		return "deploying " + what + ": activating"
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_CHECKING_HEALTH:
		return "deploying " + what + ": health checks"
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY:
		return "idle: " + what
	case captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED:
		return "failed: " + what
	}
	return what + ": " + strings.ToLower(strings.TrimPrefix(ev.GetState().String(), "HOST_DEPLOY_STATE_"))
}

func (a *Agent) notify(state string) {
	if a.cfg.Notify != nil {
		a.cfg.Notify(state)
	}
}

// publishStatus sends STATUS= when the summary changed.
func (a *Agent) publishStatus() {
	a.mu.Lock()
	names := make([]string, 0, len(a.apps))
	for n := range a.apps {
		names = append(names, n)
	}
	slices.Sort(names)
	parts := make([]string, 0, len(names)+1)
	if a.conn != "" {
		parts = append(parts, a.conn)
	}
	for _, n := range names {
		parts = append(parts, a.apps[n])
	}
	if len(names) == 0 {
		parts = append(parts, "idle: no deployments")
	}
	s := strings.Join(parts, "; ")
	changed := s != a.status
	a.status = s
	a.mu.Unlock()
	if changed {
		a.notify("STATUS=" + s)
	}
}

func (a *Agent) connProblem() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.conn
}

// setConn records whether the coordinators answer ("" when they do).
func (a *Agent) setConn(problem string) {
	a.mu.Lock()
	changed := a.conn != problem
	a.conn = problem
	a.mu.Unlock()
	if changed {
		a.publishStatus()
	}
}

// Run starts the loops and returns when ctx ends and every loop has stopped. It returns
// early only when the host cannot register before ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	// Deployments a previous process left half done resume at once: they are local work and
	// need no coordinator.
	var unfinished []*captainv1.DesiredApp
	a.state.View(func(st *localstate.State) {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, name := range st.Pipelines() {
			app := st.Apps[name]
			if app.CurrentRelease != 0 {
				a.apps[name] = fmt.Sprintf("idle: %s #%d", name, app.CurrentRelease)
			}
			if app.Desired.M != nil {
				a.log.Info("resuming unfinished deployment", "pipeline", name, "deployment", app.Desired.M.GetDeploymentId(), "step", app.Step)
				unfinished = append(unfinished, app.Desired.M)
			}
		}
	})
	defer a.wg.Wait()
	for _, want := range unfinished {
		a.give(ctx, want, true)
	}

	id, ok, err := LoadIdentity(a.cfg.StateDir)
	if err != nil {
		return err
	}
	if ok {
		a.mu.Lock()
		a.id = id
		a.mu.Unlock()
		a.client.SetCredentials(agentclient.Credentials{HostID: id.HostID, HostSecret: id.HostSecret})
		a.log.Info("host identity loaded", "host_id", id.HostID)
	} else if err := a.register(ctx, 0); err != nil {
		// register gives up only when ctx ends: a stop before registration is no failure.
		a.notify("STOPPING=1")
		a.log.Info("stopped before registration completed", "err", err)
		return nil
	}
	a.publishStatus()
	a.notify("READY=1")
	a.log.Info("agent ready", "host_id", a.HostID(), "hostname", a.cfg.Hostname)

	a.wg.Go(func() { a.heartbeatLoop(ctx) })
	a.wg.Go(func() { a.watchLoop(ctx) })
	a.wg.Go(func() { a.reportLoop(ctx) })
	if a.cfg.Watchdog > 0 {
		a.wg.Go(func() { a.watchdogLoop(ctx) })
	}
	<-ctx.Done()
	a.notify("STOPPING=1")
	a.log.Info("stopping: waiting for loops and deployments to stop at a step boundary")
	return nil
}

func (a *Agent) gen() (uint64, Identity) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.credGen, a.id
}

// credentialRejected says whether err means the coordinator does not know the host
// credential (it lost the host, or the secret is stale).
func credentialRejected(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodeNotFound:
		return true
	}
	return false
}

// register gets a host credential with the join token, keeping the host ID the host had.
// gen is the credential generation the caller saw fail; when another loop registered since,
// there is nothing to do. It retries until it succeeds or ctx ends.
func (a *Agent) register(ctx context.Context, gen uint64) error {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	cur, id := a.gen()
	if cur != gen {
		return nil
	}
	if id.HostID != "" {
		a.log.Warn("coordinator rejected the host credential; registering again with the join token", "host_id", id.HostID)
	}
	// One request ID for all attempts: an attempt that timed out after the coordinator
	// registered the host is retried into the same host, never a second one.
	reqID := newRequestID()
	for attempt := 0; ; attempt++ {
		err := a.registerOnce(ctx, id.HostID, reqID)
		if err == nil {
			a.setConn("")
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("register: %w", ctx.Err())
		}
		a.log.Error("registration failed; retrying", "err", err, "attempt", attempt+1)
		a.setConn("registering: " + shorten(err.Error(), 120))
		if !sleep(ctx, a.client.Backoff(attempt)) {
			return fmt.Errorf("register: %w (last error: %v)", ctx.Err(), err)
		}
	}
}

func newRequestID() string {
	b := make([]byte, 12)
	_, _ = crand.Read(b) // crypto/rand does not fail on Linux
	return hex.EncodeToString(b)
}

func (a *Agent) registerOnce(ctx context.Context, hostID, requestID string) error {
	b, err := os.ReadFile(a.cfg.JoinTokenFile)
	if err != nil {
		return fmt.Errorf("read join token: %w; put a token with role agent there (captain token create --role agent)", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return fmt.Errorf("join token file %s is empty; put a token with role agent there", a.cfg.JoinTokenFile)
	}
	// The host credential stays set for the calls in flight; Register sends the join token.
	a.client.SetCredentials(agentclient.Credentials{JoinToken: token, HostID: hostID, HostSecret: a.secret()})
	// The client retries across coordinators on its own; the bound makes a failing attempt
	// end, so the journal says why the agent is not ready yet.
	rctx, cancel := context.WithTimeout(ctx, registerAttempt)
	defer cancel()
	res, err := a.client.Register(rctx, &captainv1.RegisterRequest{
		Hostname: a.cfg.Hostname, Labels: a.cfg.Labels, AgentVersion: a.cfg.AgentVersion, HostId: hostID, RequestId: requestID,
	})
	if err != nil {
		return fmt.Errorf("register with the join token: %w", err)
	}
	if res.GetHostId() == "" || res.GetHostSecret() == "" {
		return errors.New("register: the coordinator returned no host ID or secret")
	}
	if hostID != "" && res.GetHostId() != hostID {
		a.log.Warn("coordinator gave this host a new ID", "old_host_id", hostID, "host_id", res.GetHostId())
	}
	id := Identity{HostID: res.GetHostId(), HostSecret: res.GetHostSecret()}
	if err := SaveIdentity(a.cfg.StateDir, id); err != nil {
		return err
	}
	a.client.SetCredentials(agentclient.Credentials{JoinToken: token, HostID: id.HostID, HostSecret: id.HostSecret})
	a.mu.Lock()
	a.id = id
	a.credGen++
	a.setIntervalLocked(res.GetHeartbeatInterval().AsDuration())
	a.mu.Unlock()
	a.log.Info("registered", "host_id", id.HostID, "hostname", a.cfg.Hostname, "labels", a.cfg.Labels)
	return nil
}

func (a *Agent) secret() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.HostSecret
}

func (a *Agent) setIntervalLocked(d time.Duration) {
	if d > 0 && d != a.interval {
		a.log.Debug("heartbeat interval set by coordinator", "interval", d)
		a.interval = d
	}
}

func (a *Agent) setInterval(d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setIntervalLocked(d)
}

// jitter spreads d by ±10 % so a fleet restarted together does not beat in step.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.2-0.1)*float64(d))
}

func (a *Agent) heartbeatLoop(ctx context.Context) {
	for {
		a.mu.Lock()
		interval, index := a.interval, a.desiredIndex
		a.mu.Unlock()
		if !sleep(ctx, jitter(interval)) {
			return
		}
		gen, id := a.gen()
		// A heartbeat later than the interval is worth less than the next one: give up on it.
		hctx, cancel := context.WithTimeout(ctx, max(interval, 2*time.Second))
		res, err := a.client.Heartbeat(hctx, &captainv1.HeartbeatRequest{HostId: id.HostID, DesiredIndex: index})
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case credentialRejected(err):
			if a.register(ctx, gen) != nil {
				return
			}
		case err != nil:
			// One warning when the coordinators go away, not one per interval.
			lvl := slog.LevelDebug
			if a.connProblem() == "" {
				lvl = slog.LevelWarn
			}
			a.log.Log(ctx, lvl, "heartbeat failed; the host keeps running its current releases and retries", "err", err)
			a.setConn("coordinators unreachable, retrying")
		default:
			if a.connProblem() != "" {
				a.log.Info("coordinators answer again")
			}
			a.setConn("")
			a.setInterval(res.GetHeartbeatInterval().AsDuration())
		}
	}
}

func (a *Agent) watchLoop(ctx context.Context) {
	for attempt := 0; ; attempt++ {
		gen, id := a.gen()
		// From 0 every time: a coordinator that lost the host may have restarted its index,
		// and a desired app that is already done here is a no-op.
		err := a.client.Watch(ctx, id.HostID, 0, func(w *captainv1.WatchResponse) error {
			attempt = 0
			a.desired(ctx, w)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		if credentialRejected(err) {
			if a.register(ctx, gen) != nil {
				return
			}
			continue
		}
		a.log.Warn("watch ended; watching again", "err", err)
		if !sleep(ctx, a.client.Backoff(attempt)) {
			return
		}
	}
}

// desired hands each app of a desired state to its pipeline's worker.
func (a *Agent) desired(ctx context.Context, w *captainv1.WatchResponse) {
	a.mu.Lock()
	a.desiredIndex = w.GetIndex()
	a.setIntervalLocked(w.GetHeartbeatInterval().AsDuration())
	a.mu.Unlock()
	a.log.Debug("desired state", "index", w.GetIndex(), "apps", len(w.GetApps()))
	for _, app := range w.GetApps() {
		if app.GetPipeline() == "" {
			a.log.Warn("desired app without a pipeline name ignored", "index", w.GetIndex())
			continue
		}
		// Deployments and command tests alike see the app_root this host uses.
		app = underRoot(a.cfg.RootDir, app)
		a.offer(ctx, app)
		a.runTests(ctx, app)
	}
}

func (a *Agent) reportLoop(ctx context.Context) {
	var last time.Time
	failures := 0
	for {
		if len(a.state.Pending()) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-a.reportWake:
			}
			continue
		}
		// Events that arrive within ReportEvery of the last report go out together.
		if !sleep(ctx, time.Until(last.Add(a.cfg.ReportEvery))) {
			return
		}
		evs := a.state.Pending()
		if len(evs) == 0 {
			continue
		}
		evs = evs[:min(len(evs), maxReportEvents)]
		gen, id := a.gen()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := a.client.Report(rctx, &captainv1.ReportRequest{HostId: id.HostID, Events: evs})
		cancel()
		last = time.Now()
		if ctx.Err() != nil {
			return
		}
		if credentialRejected(err) {
			if a.register(ctx, gen) != nil {
				return
			}
			continue
		}
		if err == nil && res.GetAckedSeq() < evs[0].GetSeq() {
			err = fmt.Errorf("coordinator acknowledged up to seq %d, below the first sent (%d)", res.GetAckedSeq(), evs[0].GetSeq())
		}
		if err == nil {
			err = a.state.Ack(res.GetAckedSeq())
		}
		if err != nil {
			a.log.Warn("report failed; the events stay queued and are sent again", "err", err, "events", len(evs), "first_seq", evs[0].GetSeq())
			if !sleep(ctx, a.client.Backoff(failures)) {
				return
			}
			failures++
			continue
		}
		failures = 0
		a.log.Debug("events reported", "events", len(evs), "acked_seq", res.GetAckedSeq())
	}
}

// watchdogLoop tells systemd the agent lives, at half the watchdog interval. Taking the state
// lock first means a deadlock on local state ends in a restart rather than a silent agent.
func (a *Agent) watchdogLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Watchdog / 2)
	defer t.Stop()
	for {
		a.state.View(func(*localstate.State) {})
		a.notify("WATCHDOG=1")
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sleep waits d or until ctx ends; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
