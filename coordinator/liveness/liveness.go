// Package liveness keeps the leader's heartbeat deadlines for hosts in memory. Heartbeats never
// touch Raft: only a change of liveness (a host going down, or coming back) is written, in
// batches. After a failover the new leader gives every host a full TTL from the moment it took
// over, so a leader change never marks hosts down by itself.
package liveness

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Clock is the time source; tests substitute a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Tracker holds one deadline per tracked host.
type Tracker struct {
	ttl   time.Duration
	clock Clock

	mu       sync.Mutex
	deadline map[string]time.Time
	last     map[string]time.Time
}

// New returns a tracker whose hosts count down after ttl without a heartbeat. A nil clock is the
// system clock.
func New(ttl time.Duration, clock Clock) *Tracker {
	if clock == nil {
		clock = systemClock{}
	}
	return &Tracker{ttl: ttl, clock: clock, deadline: map[string]time.Time{}, last: map[string]time.Time{}}
}

// TTL is how long a host may stay silent.
func (t *Tracker) TTL() time.Duration { return t.ttl }

// Track starts watching hosts with a full TTL from now (on leadership gain, for every host that
// is up in state).
func (t *Tracker) Track(ids ...string) {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if _, ok := t.deadline[id]; !ok {
			t.deadline[id] = now.Add(t.ttl)
		}
	}
}

// Heartbeat records a heartbeat and reports whether the host was being tracked; an untracked host
// (down, or new to this leader) needs its liveness written as up.
func (t *Tracker) Heartbeat(id string) (tracked bool) {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	_, tracked = t.deadline[id]
	t.deadline[id] = now.Add(t.ttl)
	t.last[id] = now
	return tracked
}

// Forget stops tracking a host (removed, or its up write failed and must be retried).
func (t *Tracker) Forget(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.deadline, id)
}

// LastHeartbeat is when this leader last heard from the host (zero when never).
func (t *Tracker) LastHeartbeat(id string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last[id]
}

// Expired removes and returns, sorted, the hosts whose deadline has passed.
func (t *Tracker) Expired() []string {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for id, d := range t.deadline {
		if !now.Before(d) {
			out = append(out, id)
			delete(t.deadline, id)
		}
	}
	slices.Sort(out)
	return out
}

// Run sweeps for expired hosts every interval until ctx ends and hands each batch to down,
// which writes it through Raft. A batch that cannot be written is tracked again with a full
// TTL rather than lost: the next sweep after that TTL tries again.
func (t *Tracker) Run(ctx context.Context, interval time.Duration, down func(ctx context.Context, ids []string) error) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.clock.After(interval):
		}
		ids := t.Expired()
		if len(ids) == 0 {
			continue
		}
		if err := down(ctx, ids); err != nil {
			t.Track(ids...)
		}
	}
}
