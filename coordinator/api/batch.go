package api

import (
	"context"
	"sync"
	"time"

	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
)

// Host reports are batched on the leader: reports arriving within batchWindow of each other go
// into one Raft command, so a fleet reporting at once costs a few log entries, not one per host.
const (
	batchWindow = 50 * time.Millisecond
	// batchMaxEvents keeps one command far below the 512 KB bound (an event is well under 256 B
	// without outputs; outputs are capped at 4 KiB each by the agent and rare).
	batchMaxEvents = 512
	// batchApplyTimeout bounds the write of one batch; the callers' own contexts may be shorter.
	batchApplyTimeout = 10 * time.Second
)

type pendingReport struct {
	report *raftv1.HostReport
	done   chan error
}

// reportBatcher collects host reports and writes them together.
type reportBatcher struct {
	s *Server

	mu      sync.Mutex
	pending []*pendingReport
	events  int
	timer   *time.Timer
}

// submit queues one host's report and waits until the batch holding it is applied (or failed).
// An agent sends its next report only after the previous one was acknowledged, so one host's
// reports never race each other across batches.
func (b *reportBatcher) submit(ctx context.Context, r *raftv1.HostReport) error {
	p := &pendingReport{report: r, done: make(chan error, 1)}
	b.mu.Lock()
	b.pending = append(b.pending, p)
	b.events += len(r.GetEvents())
	switch {
	case b.events >= batchMaxEvents:
		if b.timer != nil {
			b.timer.Stop()
			b.timer = nil
		}
		batch := b.take()
		b.mu.Unlock()
		go b.write(batch)
	case b.timer == nil:
		b.timer = time.AfterFunc(batchWindow, b.flush)
		b.mu.Unlock()
	default:
		b.mu.Unlock()
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take empties the queue; b.mu must be held.
func (b *reportBatcher) take() []*pendingReport {
	batch := b.pending
	b.pending, b.events = nil, 0
	return batch
}

func (b *reportBatcher) flush() {
	b.mu.Lock()
	b.timer = nil
	batch := b.take()
	b.mu.Unlock()
	b.write(batch)
}

func (b *reportBatcher) write(batch []*pendingReport) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchApplyTimeout)
	defer cancel()
	reports := make([]*raftv1.HostReport, len(batch))
	for i, p := range batch {
		reports[i] = p.report
	}
	cmd := b.s.command(ctx, "", "")
	cmd.Actor = "agents"
	cmd.Body = &raftv1.Command_HostReports{HostReports: &raftv1.HostReports{Reports: reports}}
	_, err := b.s.apply(ctx, cmd)
	for _, p := range batch {
		p.done <- err
	}
}
