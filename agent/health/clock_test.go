package health

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// fakeClock moves only when the test advances it. Timers are told apart by duration, so a
// test can wait until the code under test armed the timer it expects.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	changed *sync.Cond
	created map[time.Duration]int
}

type fakeTimer struct {
	d      time.Duration
	at     time.Time
	c      chan time.Time
	active bool
}

func newFakeClock() *fakeClock {
	f := &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), created: map[time.Duration]int{}}
	f.changed = sync.NewCond(&f.mu)
	return f
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{d: d, at: f.now.Add(d), c: make(chan time.Time, 1), active: true}
	f.timers = append(f.timers, t)
	f.created[d]++
	f.changed.Broadcast()
	return t.c, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		was := t.active
		t.active = false
		f.changed.Broadcast()
		return was
	}
}

// advance moves time forward and fires the timers that are due.
func (f *fakeClock) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	for _, t := range f.timers {
		if t.active && !t.at.After(f.now) {
			t.active = false
			t.c <- f.now
		}
	}
	f.changed.Broadcast()
}

// waitFor blocks until cond holds (checked under the clock's lock) or the real-time limit
// passes.
func (f *fakeClock) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.AfterFunc(10*time.Second, func() {
		f.mu.Lock()
		f.changed.Broadcast()
		f.mu.Unlock()
	})
	defer deadline.Stop()
	start := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !cond() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("timed out waiting for %s", what)
		}
		f.changed.Wait()
	}
}

func (f *fakeClock) activeLocked(d time.Duration) int {
	n := 0
	for _, t := range f.timers {
		if t.active && t.d == d {
			n++
		}
	}
	return n
}

func TestWaitRestartsTheHealthyPeriodWhenACheckFails(t *testing.T) {
	const (
		interval   = time.Second
		minHealthy = 10 * time.Second
		deadline   = time.Minute
	)
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	setHealthy := func(healthy bool) {
		t.Helper()
		if healthy {
			if err := os.WriteFile(ok, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		} else if err := os.Remove(ok); err != nil {
			t.Fatal(err)
		}
	}
	clock := newFakeClock()
	c := &Checker{Dir: dir, Clock: clock}
	check := &captainv1.HealthCheck{
		Name:     "ok-file",
		Check:    &captainv1.HealthCheck_Command{Command: &captainv1.CommandCheck{Command: []string{"test", "-f", "ok"}}},
		Interval: durationpb.New(interval),
		Timeout:  durationpb.New(5 * time.Second),
	}
	type outcome struct {
		res Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := c.Wait(context.Background(), []*captainv1.HealthCheck{check}, minHealthy, deadline)
		done <- outcome{res, err}
	}()
	notDone := func(when string) {
		t.Helper()
		select {
		case o := <-done:
			t.Fatalf("%s: Wait returned early: %+v %v", when, o.res, o.err)
		default:
		}
	}
	// tick advances one interval and waits until the check ran and re-armed its timer, and
	// the healthy timer is armed (or not) as wantHealthyTimer says.
	tick := func(wantHealthyTimer bool) {
		t.Helper()
		clock.mu.Lock()
		before := clock.created[interval]
		clock.mu.Unlock()
		clock.advance(interval)
		want := 0
		if wantHealthyTimer {
			want = 1
		}
		clock.waitFor(t, "the next check run", func() bool {
			return clock.created[interval] > before && clock.activeLocked(minHealthy) == want
		})
	}

	t0 := clock.Now()
	clock.waitFor(t, "the first check run", func() bool { return clock.activeLocked(interval) == 1 })
	setHealthy(true)
	tick(true) // healthy period starts at t=1s
	for range 5 {
		tick(true)
	}
	notDone("6s into a 10s healthy period")
	setHealthy(false)
	tick(false) // t=7s: failure cancels the healthy period
	setHealthy(true)
	tick(true)    // t=8s: a new healthy period starts, ending at t=18s
	for range 9 { // t=9s..17s
		tick(true)
		notDone("inside the second healthy period")
	}
	clock.advance(interval) // t=18s
	select {
	case o := <-done:
		if o.err != nil || !o.res.Healthy {
			t.Fatalf("Wait: %+v %v", o.res, o.err)
		}
		if got := clock.Now().Sub(t0); got != 18*time.Second {
			t.Errorf("healthy at fake t=%s, want 18s", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not report healthy when the second healthy period ended")
	}
}
