// Package health runs a pipeline's health checks on the host (HTTP status, TCP connect,
// command exit 0) until every check has passed continuously for the minimum healthy time,
// or the deadline passes.
package health

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Defaults for fields a spec leaves empty (pipelinespec fills them in; a DesiredApp built
// by hand may not).
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = 5 * time.Second
)

// Clock is the time source; tests may replace it.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Checker runs health checks.
type Checker struct {
	// Dir and Env are used for command checks (the release directory and the CAPTAIN_* variables).
	Dir    string
	Env    []string
	Client *http.Client // nil: a client without keep-alives, so every check opens a connection
	Clock  Clock        // nil: the real clock
	Logger *slog.Logger
}

// Result is how a wait for health ended.
type Result struct {
	Healthy bool
	// Outputs holds the last output of every check.
	Outputs []*captainv1.StepOutput
	// Message says why it failed, or that it passed.
	Message string
}

type report struct {
	idx int
	out *captainv1.StepOutput
}

// Wait runs every check on its interval until all of them have passed continuously for
// minHealthy (measured from the moment the last of them started passing), or until
// deadline has passed since Wait began. A failing check resets the healthy period. With no
// checks the host is healthy at once. ctx cancellation returns ctx.Err().
func (c *Checker) Wait(ctx context.Context, checks []*captainv1.HealthCheck, minHealthy, deadline time.Duration) (Result, error) {
	if len(checks) == 0 {
		return Result{Healthy: true, Message: "no health checks configured"}, nil
	}
	clock := c.Clock
	if clock == nil {
		clock = realClock{}
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	reports := make(chan report)
	done := make(chan struct{})
	defer func() {
		cancel()
		// Every check loop ends on cancel; wait so none outlives Wait.
		for range checks {
			<-done
		}
	}()
	for i, hc := range checks {
		go func() {
			defer func() { done <- struct{}{} }()
			c.loop(ctx, clock, i, hc, reports)
		}()
	}

	start := clock.Now()
	deadlineC, stopDeadline := clock.NewTimer(deadline)
	defer stopDeadline()
	last := make([]*captainv1.StepOutput, len(checks))
	passingSince := make([]time.Time, len(checks)) // zero: not passing now
	var healthyC <-chan time.Time
	stopHealthy := func() bool { return false }
	defer func() { stopHealthy() }()

	for {
		select {
		case <-ctx.Done():
			return Result{Outputs: last}, ctx.Err()
		case <-deadlineC:
			return Result{Outputs: last, Message: failMessage(checks, last, deadline)}, nil
		case <-healthyC:
			return Result{Healthy: true, Outputs: last, Message: fmt.Sprintf("all %d health checks passed for %s", len(checks), minHealthy)}, nil
		case r := <-reports:
			last[r.idx] = r.out
			if !r.out.GetPassed() {
				log.Info("health check failed", "check", r.out.GetName(), "exit_code", r.out.GetExitCode(), "output", r.out.GetOutput())
			}
			now := clock.Now()
			wasAll := allPassing(passingSince)
			if r.out.GetPassed() {
				if passingSince[r.idx].IsZero() {
					passingSince[r.idx] = now
				}
			} else {
				passingSince[r.idx] = time.Time{}
			}
			isAll := allPassing(passingSince)
			switch {
			case isAll && !wasAll:
				// The healthy period starts when the last check started passing.
				if minHealthy <= 0 {
					return Result{Healthy: true, Outputs: last, Message: fmt.Sprintf("all %d health checks passed after %s", len(checks), now.Sub(start).Round(time.Millisecond))}, nil
				}
				stopHealthy()
				healthyC, stopHealthy = clock.NewTimer(minHealthy)
			case !isAll && wasAll:
				stopHealthy()
				healthyC = nil
			}
		}
	}
}

func allPassing(since []time.Time) bool {
	for _, t := range since {
		if t.IsZero() {
			return false
		}
	}
	return true
}

func failMessage(checks []*captainv1.HealthCheck, last []*captainv1.StepOutput, deadline time.Duration) string {
	var failing []string
	for i, o := range last {
		if o == nil {
			failing = append(failing, checks[i].GetName()+" (no result)")
		} else if !o.GetPassed() {
			failing = append(failing, checks[i].GetName())
		}
	}
	if len(failing) == 0 {
		return fmt.Sprintf("health checks did not stay healthy for the minimum healthy time within the %s deadline", deadline)
	}
	return fmt.Sprintf("not healthy within %s: failing checks %v; see their outputs", deadline, failing)
}

// loop runs one check now and then every interval, sending each result.
func (c *Checker) loop(ctx context.Context, clock Clock, idx int, hc *captainv1.HealthCheck, reports chan<- report) {
	interval := orDefault(hc.GetInterval().AsDuration(), DefaultInterval)
	for {
		out := c.Run(ctx, hc)
		select {
		case reports <- report{idx, out}:
		case <-ctx.Done():
			return
		}
		t, stop := clock.NewTimer(interval)
		select {
		case <-t:
		case <-ctx.Done():
			stop()
			return
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Run runs one check once with its timeout.
func (c *Checker) Run(ctx context.Context, hc *captainv1.HealthCheck) *captainv1.StepOutput {
	timeout := orDefault(hc.GetTimeout().AsDuration(), DefaultTimeout)
	name := hc.GetName()
	switch k := hc.GetCheck().(type) {
	case *captainv1.HealthCheck_Http:
		return c.runHTTP(ctx, name, k.Http, timeout)
	case *captainv1.HealthCheck_Tcp:
		return runTCP(ctx, name, k.Tcp.GetAddress(), timeout)
	case *captainv1.HealthCheck_Command:
		return Exec(ctx, Command{Name: name, Argv: k.Command.GetCommand(), Dir: c.Dir, Env: c.Env, Timeout: timeout})
	default:
		return &captainv1.StepOutput{Name: name, ExitCode: -1, Output: "health check has no http, tcp or command part; fix the pipeline spec", At: timestamppb.Now()}
	}
}

func (c *Checker) runHTTP(ctx context.Context, name string, h *captainv1.HttpCheck, timeout time.Duration) *captainv1.StepOutput {
	out := &captainv1.StepOutput{Name: name, ExitCode: -1}
	defer func() { out.At = timestamppb.Now() }()
	want := int32(h.GetExpectedStatus())
	if want == 0 {
		want = http.StatusOK
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.GetUrl(), nil)
	if err != nil {
		out.Output = fmt.Sprintf("bad health check URL %q: %v", h.GetUrl(), err)
		return out
	}
	client := c.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	}
	resp, err := client.Do(req)
	if err != nil {
		out.Output = fmt.Sprintf("GET %s: %v", h.GetUrl(), err)
		return out
	}
	defer resp.Body.Close()
	buf := &capped{max: MaxOutput}
	fmt.Fprintf(buf, "GET %s: %s (want %d)\n", h.GetUrl(), resp.Status, want)
	_, _ = io.Copy(buf, io.LimitReader(resp.Body, MaxOutput+1))
	out.ExitCode = int32(resp.StatusCode)
	out.Passed = out.ExitCode == want
	out.Output, out.Truncated = buf.String(), buf.truncated
	return out
}

func runTCP(ctx context.Context, name, addr string, timeout time.Duration) *captainv1.StepOutput {
	out := &captainv1.StepOutput{Name: name, ExitCode: -1}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		out.Output = fmt.Sprintf("connect %s: %v", addr, err)
	} else {
		conn.Close()
		out.ExitCode, out.Passed = 0, true
		out.Output = fmt.Sprintf("connected to %s", addr)
	}
	out.At = timestamppb.Now()
	return out
}
