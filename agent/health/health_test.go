package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func httpCheck(url string, status uint32) *captainv1.HealthCheck {
	return &captainv1.HealthCheck{Name: "http", Check: &captainv1.HealthCheck_Http{Http: &captainv1.HttpCheck{Url: url, ExpectedStatus: status}}, Timeout: durationpb.New(2 * time.Second)}
}

func tcpCheck(addr string) *captainv1.HealthCheck {
	return &captainv1.HealthCheck{Name: "tcp", Check: &captainv1.HealthCheck_Tcp{Tcp: &captainv1.TcpCheck{Address: addr}}, Timeout: durationpb.New(2 * time.Second)}
}

func cmdCheck(timeout time.Duration, argv ...string) *captainv1.HealthCheck {
	return &captainv1.HealthCheck{Name: "cmd", Check: &captainv1.HealthCheck_Command{Command: &captainv1.CommandCheck{Command: argv}}, Timeout: durationpb.New(timeout)}
}

func TestRunReportsEachKindOfCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ready" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		http.Error(w, "warming up caches", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		check      *captainv1.HealthCheck
		wantPassed bool
		wantExit   int32
		wantOutput string
	}{
		{"http expected status", httpCheck(srv.URL+"/ready", 204), true, 204, "204 No Content"},
		{"http default status 200 not met", httpCheck(srv.URL+"/", 0), false, 503, "warming up caches"},
		{"http connection refused", httpCheck("http://"+closedAddr+"/", 200), false, -1, "refused"},
		{"tcp open", tcpCheck(strings.TrimPrefix(srv.URL, "http://")), true, 0, "connected"},
		{"tcp closed", tcpCheck(closedAddr), false, -1, "refused"},
		{"command exit 0 in the release dir", cmdCheck(time.Second, "test", "-f", "marker"), true, 0, ""},
		{"command exit 2 with output", cmdCheck(time.Second, "sh", "-c", "echo not ready; exit 2"), false, 2, "not ready"},
		{"command not found", cmdCheck(time.Second, "/nonexistent/check"), false, -1, "cannot run"},
		{"command timeout", cmdCheck(100*time.Millisecond, "sleep", "30"), false, -1, "did not finish within 100ms"},
		{"no check body", &captainv1.HealthCheck{Name: "empty"}, false, -1, "no http, tcp or command"},
	}
	c := &Checker{Dir: dir}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := c.Run(context.Background(), tt.check)
			if out.GetPassed() != tt.wantPassed || out.GetExitCode() != tt.wantExit || !strings.Contains(out.GetOutput(), tt.wantOutput) || out.GetAt() == nil {
				t.Errorf("got passed=%v exit=%d output=%q at=%v; want passed=%v exit=%d output containing %q", out.GetPassed(), out.GetExitCode(), out.GetOutput(), out.GetAt(), tt.wantPassed, tt.wantExit, tt.wantOutput)
			}
		})
	}
}

func TestExecTruncatesOutputTo4KiB(t *testing.T) {
	out := Exec(context.Background(), Command{Name: "big", Argv: []string{"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' y"}})
	if !out.GetPassed() || !out.GetTruncated() || len(out.GetOutput()) != MaxOutput {
		t.Errorf("passed=%v truncated=%v len=%d", out.GetPassed(), out.GetTruncated(), len(out.GetOutput()))
	}
	small := Exec(context.Background(), Command{Name: "small", Argv: []string{"echo", "hi"}, Env: []string{"X=1"}})
	if small.GetTruncated() || small.GetOutput() != "hi\n" {
		t.Errorf("small output %q truncated=%v", small.GetOutput(), small.GetTruncated())
	}
}

func every(hc *captainv1.HealthCheck, d time.Duration) *captainv1.HealthCheck {
	hc.Interval = durationpb.New(d)
	return hc
}

func TestWaitNeedsEveryCheckPassingForMinHealthyTime(t *testing.T) {
	var calls atomic.Int64
	// Fails three times (a service still starting), then passes.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 3 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	c := &Checker{Dir: t.TempDir()}
	const minHealthy = 150 * time.Millisecond
	start := time.Now()
	res, err := c.Wait(context.Background(), []*captainv1.HealthCheck{
		every(httpCheck(srv.URL, 200), 10*time.Millisecond),
		every(tcpCheck(strings.TrimPrefix(srv.URL, "http://")), 10*time.Millisecond),
	}, minHealthy, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Healthy {
		t.Fatalf("not healthy: %s", res.Message)
	}
	if took := time.Since(start); took < minHealthy {
		t.Errorf("healthy after %s, before min_healthy_time %s", took, minHealthy)
	}
	if calls.Load() < 5 {
		t.Errorf("only %d HTTP checks: three failures, then passes observed for the healthy period", calls.Load())
	}
	if len(res.Outputs) != 2 || !res.Outputs[0].GetPassed() || !res.Outputs[1].GetPassed() {
		t.Errorf("outputs %v", res.Outputs)
	}
}

func TestWaitFailsAtDeadlineWhenAChecksFlaps(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 {
			http.Error(w, "flapping", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	c := &Checker{}
	res, err := c.Wait(context.Background(), []*captainv1.HealthCheck{every(httpCheck(srv.URL, 200), 5*time.Millisecond)}, 300*time.Millisecond, 600*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.Healthy {
		t.Fatalf("a check failing every other run counted healthy: %s", res.Message)
	}
	if n.Load() < 10 {
		t.Errorf("only %d runs", n.Load())
	}
}

func TestWaitWithoutChecksIsHealthyAndCancelStopsIt(t *testing.T) {
	res, err := (&Checker{}).Wait(context.Background(), nil, time.Hour, time.Hour)
	if err != nil || !res.Healthy {
		t.Errorf("no checks: %v %v", res, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := (&Checker{}).Wait(ctx, []*captainv1.HealthCheck{every(cmdCheck(time.Second, "false"), 5*time.Millisecond)}, 0, time.Hour)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Wait after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after cancel")
	}
}
