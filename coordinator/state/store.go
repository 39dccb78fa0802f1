// Package state is the coordinator's replicated state: go-memdb tables written only by the
// FSM, read through consistent snapshots, with a store-wide index readers can block on.
package state

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-memdb"
)

// Sentinel errors; coordinator/api maps them to connect codes.
var (
	// ErrNotFound means the named row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAbandoned means the store was replaced by a snapshot restore; re-read from the new one.
	ErrAbandoned = errors.New("state store abandoned by a snapshot restore")
)

// Store holds the tables. Every write runs in one memdb transaction tagged with the Raft
// index that caused it.
type Store struct {
	db *memdb.MemDB

	mu      sync.Mutex
	index   uint64
	changed chan struct{} // closed and replaced after every commit

	abandonOnce sync.Once
	abandon     chan struct{}
}

// New returns an empty store.
func New() *Store {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		// The schema is static; an error here is a programming mistake caught by every test.
		panic(fmt.Sprintf("state: invalid schema: %v", err))
	}
	return &Store{db: db, changed: make(chan struct{}), abandon: make(chan struct{})}
}

// Index is the Raft index of the last write applied to the store.
func (s *Store) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// Snapshot returns a consistent read view; it never blocks writers.
func (s *Store) Snapshot() *Reader {
	s.mu.Lock()
	idx := s.index
	s.mu.Unlock()
	return &Reader{txn: s.db.Txn(false), index: idx}
}

// Write applies fn in one transaction recorded at index. When fn fails nothing is written,
// but the store index still advances so blocking readers see the log position move.
func (s *Store) Write(index uint64, fn func(tx *Txn) error) error {
	txn := s.db.Txn(true)
	tx := &Txn{Reader: Reader{txn: txn, index: index}, index: index}
	if err := fn(tx); err != nil {
		txn.Abort()
		s.advance(index)
		return err
	}
	txn.Commit()
	s.advance(index)
	return nil
}

func (s *Store) advance(index uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Raft indexes only grow within one history; a snapshot restored from another cluster
	// may carry a higher index, and the next write must still move readers to this one's.
	s.index = index
	close(s.changed)
	s.changed = make(chan struct{})
}

// SetIndex sets the store index without a write (after a restore).
func (s *Store) SetIndex(index uint64) { s.advance(index) }

// Wait blocks until the store index is greater than minIndex, the context ends, or the store
// is abandoned (ErrAbandoned: the caller should fetch the current store and wait again).
func (s *Store) Wait(ctx context.Context, minIndex uint64) error {
	for {
		s.mu.Lock()
		idx, ch := s.index, s.changed
		s.mu.Unlock()
		if idx > minIndex {
			return nil
		}
		select {
		case <-ch:
		case <-s.abandon:
			return ErrAbandoned
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Abandon wakes every reader blocked on this store; called once it has been replaced.
func (s *Store) Abandon() { s.abandonOnce.Do(func() { close(s.abandon) }) }

// AbandonCh is closed when the store has been replaced.
func (s *Store) AbandonCh() <-chan struct{} { return s.abandon }
