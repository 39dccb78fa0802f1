// Package fsm applies the coordinator's Raft log to the state store. It is deterministic:
// every timestamp and ID comes from the command, never from the clock or I/O.
package fsm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
)

// Semantic errors returned as apply responses (the entry is still part of the log).
var (
	// ErrAlreadyExists means the command would create a row that exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict means the command does not fit the current state.
	ErrConflict = errors.New("conflict with current state")
	// ErrInvalid means the command is missing something it needs.
	ErrInvalid = errors.New("invalid command")
)

// SnapshotFormat is the version written in every snapshot header.
const SnapshotFormat = 1

// maxRecordSize bounds one snapshot record; rows are far smaller, this only stops garbage.
const maxRecordSize = 64 << 20

// Result is what Apply returns for every command: the row(s) written, or a semantic error.
type Result struct {
	// Value is the command's main row (e.g. *captainv1.Release), nil when none.
	Value proto.Message
	// Created is false when the command changed nothing because an identical row or an
	// earlier request with the same ID exists.
	Created bool
	// Err is the semantic error, if any; nothing was written then.
	Err error
}

// FSM is the raft.FSM of the coordinator.
type FSM struct {
	logger *slog.Logger

	mu    sync.RWMutex
	store *state.Store
	// appliedBytes counts the command bytes applied here: what each change costs the log,
	// the followers and the disk.
	appliedBytes atomic.Uint64
}

// New returns an FSM over an empty store.
func New(logger *slog.Logger) *FSM {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &FSM{logger: logger, store: state.New()}
}

// State returns the current store. A restore replaces it: long waits should watch
// its AbandonCh and fetch the store again.
func (f *FSM) State() *state.Store {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.store
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	f.appliedBytes.Add(uint64(len(l.Data)))
	var cmd raftv1.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		// A replica that cannot read its log must stop rather than diverge.
		panic(fmt.Sprintf("fsm: cannot decode Raft entry %d: %v", l.Index, err))
	}
	return f.ApplyCommand(l.Index, &cmd)
}

// AppliedBytes is the total size of the commands this FSM applied since it started.
func (f *FSM) AppliedBytes() uint64 { return f.appliedBytes.Load() }

// ApplyCommand applies one decoded command at index; exported for tests and tools.
func (f *FSM) ApplyCommand(index uint64, cmd *raftv1.Command) *Result {
	res := &Result{}
	err := f.State().Write(index, func(tx *state.Txn) error {
		v, created, err := apply(tx, cmd)
		res.Value, res.Created = v, created
		return err
	})
	if err != nil {
		res.Value, res.Created, res.Err = nil, false, err
		f.logger.Debug("command rejected", "index", index, "kind", fmt.Sprintf("%T", cmd.GetBody()), "err", err)
	}
	return res
}

// Snapshot implements raft.FSM; it captures a read view without blocking Apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{r: f.State().Snapshot()}, nil
}

// Restore implements raft.FSM: it builds a new store from the snapshot, swaps it in and
// abandons the old one so blocked readers wake and re-read.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := ReadSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	old := f.store
	f.store = st
	f.mu.Unlock()
	old.Abandon()
	f.logger.Info("state restored from snapshot", "index", st.Index())
	return nil
}

type snapshot struct{ r *state.Reader }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(sink, s.r); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() {}

// WriteSnapshot writes a header and every row as length-delimited SnapshotRecords.
func WriteSnapshot(w io.Writer, r *state.Reader) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	// Deterministic map order, so equal states give equal snapshot bytes.
	opts := protodelim.MarshalOptions{MarshalOptions: proto.MarshalOptions{Deterministic: true}}
	write := func(rec *raftv1.SnapshotRecord) error {
		if _, err := opts.MarshalTo(bw, rec); err != nil {
			return fmt.Errorf("write snapshot record: %w", err)
		}
		return nil
	}
	header := &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Header{Header: &raftv1.SnapshotHeader{
		Format: SnapshotFormat, Index: r.Index(),
	}}}
	if err := write(header); err != nil {
		return err
	}
	if err := r.Records(write); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// ReadSnapshot builds a new store from a snapshot stream, checking its header.
func ReadSnapshot(r io.Reader) (*state.Store, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	opts := protodelim.UnmarshalOptions{MaxSize: maxRecordSize}
	var head raftv1.SnapshotRecord
	if err := opts.UnmarshalFrom(br, &head); err != nil {
		return nil, fmt.Errorf("read snapshot header: %w (is this a captaind snapshot?)", err)
	}
	h := head.GetHeader()
	if h == nil {
		return nil, fmt.Errorf("snapshot does not start with a header: %w", ErrInvalid)
	}
	if h.GetFormat() != SnapshotFormat {
		return nil, fmt.Errorf("snapshot format %d, this captaind reads %d: %w", h.GetFormat(), SnapshotFormat, ErrInvalid)
	}
	st := state.New()
	err := st.Write(h.GetIndex(), func(tx *state.Txn) error {
		for n := 1; ; n++ {
			var rec raftv1.SnapshotRecord
			err := opts.UnmarshalFrom(br, &rec)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read snapshot record %d: %w", n, err)
			}
			if err := tx.PutRecord(&rec); err != nil {
				return fmt.Errorf("snapshot record %d: %w", n, err)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}
