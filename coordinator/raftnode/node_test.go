package raftnode

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// countFSM counts applied entries; enough to see Raft work without the real state.
type countFSM struct{ n int }

func (f *countFSM) Apply(*raft.Log) any                 { f.n++; return f.n }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, errors.New("not needed") }
func (f *countFSM) Restore(io.ReadCloser) error         { return nil }

func TestBootstrapOnlyWithoutStateAndFailFastOnLockedDir(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", FSM: &countFSM{}}

	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n.HasExistingState() {
		t.Fatal("fresh dir reports existing state")
	}
	if err := n.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.Apply(ctx, wrapperspb.String("x")); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if _, err := New(Config{NodeID: "n2", DataDir: dir, RaftAddr: "127.0.0.1:0", FSM: &countFSM{}}); !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second node on the same dir: %v, want ErrDataDirInUse", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("lock failure took %s", d)
	}
	if err := n.Shutdown(ctx, true); err != nil {
		t.Fatal(err)
	}

	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Shutdown(ctx, false)
	if !again.HasExistingState() {
		t.Fatal("restarted node sees no state")
	}
	if err := again.Bootstrap(); err != nil {
		t.Fatalf("bootstrap on existing state must be a no-op: %v", err)
	}
	id, err := again.WaitLeader(ctx)
	if err != nil || id != "n1" {
		t.Fatalf("leader after restart = %q, %v", id, err)
	}
	servers, err := again.Servers()
	if err != nil || len(servers) != 1 {
		t.Fatalf("servers = %v, %v; want the one bootstrapped server", servers, err)
	}
}

func TestApplyOnFollowerIsErrNotLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := New(Config{NodeID: "lonely", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", FSM: &countFSM{}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(ctx, false)
	if _, _, err := n.Apply(ctx, wrapperspb.String("x")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("apply without bootstrap = %v, want ErrNotLeader", err)
	}
}

func TestOversizedCommandIsRefusedBeforeRaft(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := &countFSM{}
	n, err := New(Config{NodeID: "n1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", FSM: f})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(ctx, false)
	if err := n.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	big := wrapperspb.Bytes(make([]byte, MaxCommandBytes))
	if _, _, err := n.Apply(ctx, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("apply of %d bytes = %v, want ErrTooLarge", MaxCommandBytes, err)
	}
}
