package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Clock is the time source; tests substitute a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns the current time.
func (SystemClock) Now() time.Time { return time.Now() }

// After waits for the duration to elapse.
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// stateSource gives the FSM's current store (a snapshot restore replaces it).
type stateSource interface {
	State() *state.Store
}

// applier writes a command through Raft and returns once it is applied.
type applier interface {
	Apply(ctx context.Context, cmd proto.Message) (any, uint64, error)
}

// Runner runs the planner on the leader: whenever state changes or a timer is due it plans every
// pipeline and writes the decisions through Raft. Start it when leadership is gained (after a
// Barrier, so it sees every committed entry) and cancel its context when leadership is lost.
type Runner struct {
	Log     *slog.Logger
	Clock   Clock
	State   stateSource
	Applier applier
	// HTTPClient runs HTTP approval tests; nil means a client without a global timeout (each
	// test has its own).
	HTTPClient *http.Client

	planner Planner
	mu      sync.Mutex
	running map[testKey]bool
	results map[testKey]*captainv1.StepOutput
	wakeup  chan struct{}
}

type testKey struct {
	pipeline, stage string
	release         uint64
	name            string
}

// maxIdle bounds how long the runner sleeps without a state change or timer, as a safety net.
const maxIdle = 30 * time.Second

// Run plans until ctx ends. Errors writing a decision are logged and retried after a short
// pause: a failed write changes nothing, and the next plan decides again from fresh state.
func (r *Runner) Run(ctx context.Context) error {
	if r.Clock == nil {
		r.Clock = SystemClock{}
	}
	if r.Log == nil {
		r.Log = slog.Default()
	}
	r.planner = Planner{NewID: NewDeploymentID}
	r.running, r.results = map[testKey]bool{}, map[testKey]*captainv1.StepOutput{}
	r.wakeup = make(chan struct{}, 1)
	var tests sync.WaitGroup
	defer tests.Wait()

	for {
		st := r.State.State()
		index := st.Index()
		wake, err := r.round(ctx, st.Snapshot(), &tests)
		if ctx.Err() != nil {
			return nil
		}
		wait := maxIdle
		if err != nil {
			r.Log.Warn("engine: decision not written; retrying", "err", err)
			wait = time.Second
		} else if !wake.IsZero() {
			wait = min(wait, max(wake.Sub(r.Clock.Now()), 0))
		}
		changed := make(chan struct{})
		waitCtx, cancel := context.WithCancel(ctx)
		go func() {
			if st.Wait(waitCtx, index) == nil {
				close(changed)
			}
		}()
		select {
		case <-ctx.Done():
		case <-changed:
		case <-r.wakeup:
		case <-r.Clock.After(wait):
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// round plans every pipeline once and returns the earliest timer.
func (r *Runner) round(ctx context.Context, rd *state.Reader, tests *sync.WaitGroup) (time.Time, error) {
	pipelines, err := rd.Pipelines()
	if err != nil {
		return time.Time{}, err
	}
	now := r.Clock.Now()
	var wake time.Time
	var errs []error
	for _, p := range pipelines {
		v, err := r.view(rd, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		u := r.planner.Plan(v, now)
		if !u.Wake.IsZero() && (wake.IsZero() || u.Wake.Before(wake)) {
			wake = u.Wake
		}
		r.startTests(ctx, v, tests)
		if u.Empty() {
			continue
		}
		cmd := &raftv1.Command{
			At: timestamppb.New(now), Actor: Actor,
			Body: &raftv1.Command_EngineUpdate{EngineUpdate: &raftv1.EngineUpdate{Stages: u.Stages, Deployments: u.Deployments, Audit: u.Audit}},
		}
		if _, _, err := r.Applier.Apply(ctx, cmd); err != nil {
			errs = append(errs, fmt.Errorf("pipeline %s: %w", p.GetSpec().GetName(), err))
			continue
		}
		r.forgetRecorded(v)
	}
	return wake, errors.Join(errs...)
}

// view gathers one pipeline's state plus the test results waiting to be recorded.
func (r *Runner) view(rd *state.Reader, p *captainv1.Pipeline) (View, error) {
	v, err := ViewOf(rd, p)
	if err != nil {
		return v, err
	}
	name := p.GetSpec().GetName()
	r.mu.Lock()
	for k, out := range r.results {
		if k.pipeline == name {
			v.TestResults = append(v.TestResults, TestResult{Stage: k.stage, Release: k.release, Name: k.name, Output: out})
		}
	}
	r.mu.Unlock()
	return v, nil
}

// ViewOf gathers what Plan needs about one pipeline from a consistent read of the state.
func ViewOf(rd *state.Reader, p *captainv1.Pipeline) (View, error) {
	name := p.GetSpec().GetName()
	v := View{Pipeline: p, Stages: map[string]*captainv1.StageState{}, Deployments: map[string]*captainv1.Deployment{}, Alarms: map[string]*captainv1.Alarm{}}
	var err error
	if v.Latest, err = rd.LastReleaseNumber(name); err != nil && !errors.Is(err, state.ErrNotFound) {
		return v, err
	}
	stages, err := rd.Stages(name)
	if err != nil {
		return v, err
	}
	for _, s := range stages {
		v.Stages[s.GetStage()] = s
		for _, e := range s.GetEnvironments() {
			if id := e.GetDeploymentId(); id != "" {
				d, err := rd.Deployment(id)
				if err != nil {
					return v, fmt.Errorf("deployment %s of stage %s: %w", id, s.GetStage(), err)
				}
				v.Deployments[id] = d
			}
		}
	}
	hosts, err := rd.Hosts()
	if err != nil {
		return v, err
	}
	for _, h := range hosts {
		v.Hosts = append(v.Hosts, h.GetHost())
	}
	alarms, err := rd.Alarms()
	if err != nil {
		return v, err
	}
	for _, a := range alarms {
		v.Alarms[a.GetName()] = a
	}
	return v, nil
}

// forgetRecorded drops test results once their stage no longer waits for them.
func (r *Runner) forgetRecorded(v View) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.results {
		s := v.Stages[k.stage]
		if k.pipeline == v.Pipeline.GetSpec().GetName() && (s == nil || s.GetRelease() != k.release || s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_VERIFYING) {
			delete(r.results, k)
		}
	}
}

// startTests runs the HTTP tests of verifying stages that are pending and not yet running.
// Tests run off the planning loop; their results reach Plan through View.TestResults.
func (r *Runner) startTests(ctx context.Context, v View, wg *sync.WaitGroup) {
	for _, st := range v.Pipeline.GetSpec().GetStages() {
		s := v.Stages[st.GetName()]
		if s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_VERIFYING {
			continue
		}
		for _, t := range st.GetApproval().GetTests() {
			a := findApproval(s, testPrefix+t.GetName())
			if t.GetHttp() == nil || a == nil || a.GetState() != captainv1.ApprovalStepState_APPROVAL_STEP_STATE_PENDING {
				continue
			}
			k := testKey{v.Pipeline.GetSpec().GetName(), st.GetName(), s.GetRelease(), t.GetName()}
			r.mu.Lock()
			busy := r.running[k] || r.results[k] != nil
			r.running[k] = true
			r.mu.Unlock()
			if busy {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := RunHTTPTest(ctx, r.HTTPClient, t)
				r.mu.Lock()
				delete(r.running, k)
				if ctx.Err() == nil {
					r.results[k] = out
				}
				r.mu.Unlock()
				select {
				case r.wakeup <- struct{}{}:
				default:
				}
			}()
		}
	}
}

// RunHTTPTest runs one HTTP test with its retries and returns the last attempt's output.
func RunHTTPTest(ctx context.Context, client *http.Client, t *captainv1.TestStep) *captainv1.StepOutput {
	if client == nil {
		client = &http.Client{}
	}
	timeout := t.GetTimeout().AsDuration()
	if timeout <= 0 {
		timeout = time.Minute
	}
	want := int(t.GetHttp().GetExpectedStatus())
	if want == 0 {
		want = http.StatusOK
	}
	var out *captainv1.StepOutput
	for attempt := 0; attempt <= int(t.GetRetries()); attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return out
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
		out = httpAttempt(ctx, client, t.GetName(), t.GetHttp().GetUrl(), want, timeout)
		out.Output = fmt.Sprintf("attempt %d of %d: %s", attempt+1, t.GetRetries()+1, out.GetOutput())
		if out.GetPassed() {
			break
		}
	}
	return out
}

func httpAttempt(ctx context.Context, client *http.Client, name, url string, want int, timeout time.Duration) *captainv1.StepOutput {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := &captainv1.StepOutput{Name: name, ExitCode: -1}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err == nil {
		var resp *http.Response
		resp, err = client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
			_ = resp.Body.Close()
			out.ExitCode = int32(resp.StatusCode)
			out.Passed = resp.StatusCode == want
			out.Output = fmt.Sprintf("GET %s: %s (want %d)\n%s", url, resp.Status, want, strings.TrimSpace(string(body)))
		}
	}
	if err != nil {
		out.Output = fmt.Sprintf("GET %s: %v", url, err)
	}
	out.At = timestamppb.Now()
	return out
}

// NewDeploymentID returns a fresh random deployment ID (it names directories on hosts).
func NewDeploymentID() string {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return "d" + hex.EncodeToString(b[:])
}
