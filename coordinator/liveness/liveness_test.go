package liveness

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
	ch  chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), ch: make(chan time.Time)}
}
func (c *fakeClock) Now() time.Time                       { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) After(time.Duration) <-chan time.Time { return c.ch }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestHostsGoDownOnlyAfterTheirTTL(t *testing.T) {
	clk := newFakeClock()
	tr := New(10*time.Second, clk)
	tr.Track("a", "b", "c")
	clk.advance(6 * time.Second)
	if tr.Heartbeat("a") != true {
		t.Fatal("a tracked host's heartbeat must report tracked")
	}
	clk.advance(3 * time.Second)
	if got := tr.Expired(); len(got) != 0 {
		t.Fatalf("expired after 9s: %v", got)
	}
	clk.advance(time.Second)
	if got := tr.Expired(); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("expired after 10s = %v, want [b c]", got)
	}
	if got := tr.Expired(); len(got) != 0 {
		t.Fatalf("a host expired twice: %v", got)
	}
	clk.advance(6 * time.Second)
	if got := tr.Expired(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("a should expire 10s after its heartbeat, got %v", got)
	}
	if tr.Heartbeat("b") {
		t.Fatal("a host that went down reports untracked on its next heartbeat, so it is written up")
	}
	if tr.LastHeartbeat("b") != clk.Now() {
		t.Fatal("last heartbeat not recorded")
	}
}

func TestFailoverGivesEveryHostAFullTTL(t *testing.T) {
	clk := newFakeClock()
	tr := New(10*time.Second, clk)
	clk.advance(time.Hour) // the new leader takes over long after the last heartbeats anywhere
	tr.Track("a", "b")
	clk.advance(9 * time.Second)
	if got := tr.Expired(); len(got) != 0 {
		t.Fatalf("hosts marked down by the failover itself: %v", got)
	}
}

func TestRunBatchesAndRetriesFailedWrites(t *testing.T) {
	clk := newFakeClock()
	tr := New(time.Second, clk)
	tr.Track("a", "b")
	var mu sync.Mutex
	var batches [][]string
	fail := true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Run(ctx, 50*time.Millisecond, func(_ context.Context, ids []string) error {
			mu.Lock()
			defer mu.Unlock()
			batches = append(batches, ids)
			if fail {
				fail = false
				return errors.New("not leader")
			}
			return nil
		})
	}()
	clk.advance(2 * time.Second)
	clk.ch <- clk.Now() // sweep: write fails, hosts tracked again with a full TTL
	clk.ch <- clk.Now() // sweep: nothing expired yet
	clk.advance(2 * time.Second)
	clk.ch <- clk.Now() // sweep: written
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(batches) != 2 || !slices.Equal(batches[0], []string{"a", "b"}) || !slices.Equal(batches[1], []string{"a", "b"}) {
		t.Fatalf("batches = %v, want the failed batch retried once whole", batches)
	}
}
