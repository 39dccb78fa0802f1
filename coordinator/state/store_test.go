package state

import (
	"context"
	"errors"
	"testing"
	"time"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func putPipeline(t *testing.T, s *Store, index uint64, name string, version uint64) {
	t.Helper()
	err := s.Write(index, func(tx *Txn) error {
		return tx.PutPipeline(&captainv1.Pipeline{Spec: &captainv1.PipelineSpec{Name: name}, Version: version, Index: tx.Index()})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWaitReturnsOnceTheIndexPassesMinIndex(t *testing.T) {
	s := New()
	putPipeline(t, s, 5, "web", 1)
	if err := s.Wait(t.Context(), 4); err != nil {
		t.Fatalf("index 5 > 4 should not block: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(t.Context(), 5) }()
	putPipeline(t, s, 6, "web", 2)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken by the write at index 6")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := s.Wait(ctx, 6); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait without writes = %v, want deadline exceeded", err)
	}
}

func TestFailedWriteLeavesNoTrace(t *testing.T) {
	s := New()
	boom := errors.New("boom")
	err := s.Write(3, func(tx *Txn) error {
		if err := tx.PutPipeline(&captainv1.Pipeline{Spec: &captainv1.PipelineSpec{Name: "web"}, Version: 1}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Snapshot().Pipeline("web", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("aborted write is visible: %v", err)
	}
}

func TestPipelineQueriesKeepNamesApart(t *testing.T) {
	s := New()
	putPipeline(t, s, 1, "web", 1)
	putPipeline(t, s, 2, "web-2", 1)
	putPipeline(t, s, 3, "web", 2)
	putPipeline(t, s, 4, "api", 1)
	r := s.Snapshot()
	cur, err := r.Pipeline("web", 0)
	if err != nil || cur.GetVersion() != 2 {
		t.Fatalf("current web = %v, %v; want version 2", cur, err)
	}
	vs, _ := r.PipelineVersions("web")
	if len(vs) != 2 {
		t.Fatalf("web versions = %d, want 2 (web-2 must not count)", len(vs))
	}
	all, _ := r.Pipelines()
	var names []string
	for _, p := range all {
		names = append(names, p.GetSpec().GetName())
	}
	if len(names) != 3 || names[0] != "api" || names[1] != "web" || names[2] != "web-2" {
		t.Fatalf("pipelines = %v, want [api web web-2]", names)
	}
	if _, err := r.Pipeline("we", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("prefix of a name matched: %v", err)
	}
}

func TestReadersSeeASnapshotNotLaterWrites(t *testing.T) {
	s := New()
	putPipeline(t, s, 1, "web", 1)
	r := s.Snapshot()
	putPipeline(t, s, 2, "web", 2)
	if p, _ := r.Pipeline("web", 0); p.GetVersion() != 1 || r.Index() != 1 {
		t.Fatalf("snapshot saw a later write: version %d at index %d", p.GetVersion(), r.Index())
	}
}
