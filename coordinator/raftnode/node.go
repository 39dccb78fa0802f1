// Package raftnode runs one coordinator's Raft: bolt log store, file snapshots, TCP or mutual
// TLS transport, bootstrap, membership changes, leadership transfer and snapshots.
package raftnode

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

// Sentinel errors; coordinator/api maps them to connect codes.
var (
	// ErrNotLeader means this node cannot accept writes; forward to the leader.
	ErrNotLeader = errors.New("not the leader")
	// ErrNoLeader means the cluster has no leader (election running or quorum lost).
	ErrNoLeader = errors.New("no leader")
	// ErrDataDirInUse means another process holds the data directory.
	ErrDataDirInUse = errors.New("data dir in use")
	// ErrUnknownServer means the named server is not in the configuration.
	ErrUnknownServer = errors.New("unknown server")
	// ErrShutdown means the node is shutting down.
	ErrShutdown = errors.New("raft node shut down")
	// ErrTooLarge means a command exceeds MaxCommandBytes.
	ErrTooLarge = errors.New("command too large")
	// ErrConflict means a membership change contradicts the current configuration.
	ErrConflict = errors.New("conflicts with the cluster configuration")
	// ErrAmbiguous means leadership was lost while a write was in flight: it may or may not
	// have been applied. Retry with the same request ID.
	ErrAmbiguous = errors.New("leadership lost while writing; the write may have been applied")
)

// Config describes one Raft node.
type Config struct {
	// NodeID is the Raft server ID; stable across restarts.
	NodeID string
	// DataDir holds raft.db and snapshots/.
	DataDir string
	// RaftAddr is the transport bind address (host:port; port 0 picks one).
	RaftAddr string
	// RaftAdvertise is the address peers dial, when it differs from RaftAddr.
	RaftAdvertise string
	// TLS enables mutual TLS on the transport: the config needs Certificates, RootCAs and ClientCAs.
	TLS *tls.Config
	// FSM applies committed entries.
	FSM raft.FSM
	// SnapshotThreshold is how many entries trigger a snapshot (default 8192).
	SnapshotThreshold uint64
	// SnapshotInterval is how often the threshold is checked (default 2m).
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries a snapshot leaves in the log so slow followers catch
	// up without a full snapshot transfer (default 10240).
	TrailingLogs uint64
	// HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout tune failure detection
	// (defaults 500ms, 500ms, 250ms: a new leader within ~2s of a crash).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// Logger receives Raft's logs.
	Logger *slog.Logger
	// ObserveApply, when set, is called with the duration of every successful Apply.
	ObserveApply func(time.Duration)
}

// Node is one running Raft server.
type Node struct {
	cfg       Config
	logger    *slog.Logger
	raft      *raft.Raft
	transport *raft.NetworkTransport
	bolt      *raftboltdb.BoltStore
	snaps     *raft.FileSnapshotStore
	leaderCh  chan bool
	existing  bool

	observer    *raft.Observer
	observed    chan raft.Observation
	stopObserve chan struct{}
	observeDone chan struct{}
	mu          sync.Mutex
	unreachable map[string]bool // followers whose heartbeats fail, as seen by this leader
	// readTerm is the term in which this leader last had a barrier applied; see CaughtUp.
	readTerm atomic.Uint64

	shutdownOnce sync.Once
	shutdownErr  error
}

// New opens the data directory and starts Raft. It fails at once, with ErrDataDirInUse,
// when another process holds the directory.
func New(cfg Config) (*Node, error) {
	if cfg.NodeID == "" || cfg.DataDir == "" || cfg.FSM == nil {
		return nil, errors.New("raftnode: NodeID, DataDir and FSM are required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	dbPath := filepath.Join(cfg.DataDir, "raft.db")
	bolt, err := raftboltdb.New(raftboltdb.Options{
		Path:        dbPath,
		BoltOptions: &bbolt.Options{Timeout: time.Second},
	})
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, fmt.Errorf("data dir %s is in use by another captaind (lock on %s held): stop it or choose another --data-dir: %w",
				cfg.DataDir, dbPath, ErrDataDirInUse)
		}
		return nil, fmt.Errorf("open raft log %s: %w", dbPath, err)
	}
	n := &Node{cfg: cfg, logger: logger, bolt: bolt, leaderCh: make(chan bool, 16)}
	ok := false
	defer func() {
		if !ok {
			n.closeStores()
		}
	}()

	hlog := hclog.New(&hclog.LoggerOptions{
		Name:        "raft",
		Level:       hclog.Info,
		DisableTime: true,
		Output:      &slogWriter{logger: logger.With("component", "raft")},
	})
	n.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		return nil, fmt.Errorf("open snapshot store in %s: %w", cfg.DataDir, err)
	}
	logs, err := raft.NewLogCache(512, bolt)
	if err != nil {
		return nil, fmt.Errorf("log cache: %w", err)
	}
	layer, err := newStreamLayer(cfg.RaftAddr, cfg.RaftAdvertise, cfg.TLS)
	if err != nil {
		return nil, err
	}
	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: layer, MaxPool: 3, Timeout: 10 * time.Second, Logger: hlog,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.NotifyCh = n.leaderCh
	rc.HeartbeatTimeout = orDefault(cfg.HeartbeatTimeout, 500*time.Millisecond)
	rc.ElectionTimeout = orDefault(cfg.ElectionTimeout, 500*time.Millisecond)
	rc.LeaderLeaseTimeout = orDefault(cfg.LeaderLeaseTimeout, 250*time.Millisecond)
	rc.SnapshotInterval = orDefault(cfg.SnapshotInterval, 2*time.Minute)
	rc.SnapshotThreshold = 8192
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}
	n.existing, err = raft.HasExistingState(logs, bolt, n.snaps)
	if err != nil {
		return nil, fmt.Errorf("check existing raft state: %w", err)
	}
	if err := n.recoverFromPeersJSON(rc, logs); err != nil {
		return nil, err
	}
	n.raft, err = raft.NewRaft(rc, cfg.FSM, logs, bolt, n.snaps, n.transport)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.watchHeartbeats()
	ok = true
	logger.Info("raft started", "raft_addr", n.Addr(), "existing_state", n.existing)
	return n, nil
}

// MaxCommandBytes bounds one Raft entry.
const MaxCommandBytes = 512 << 10

// transferWait bounds how long a leadership transfer may take to produce a new leader.
const transferWait = 3 * time.Second

// PeersFile is the name, inside the data dir, of the manual recovery file: when present at
// start, it replaces the cluster configuration (see ops/docs/peers-json-recovery.md).
const PeersFile = "peers.json"

// recoverFromPeersJSON forces the configuration in peers.json onto this node's log, for a
// cluster that lost its quorum for good, then renames the file so it is applied only once.
func (n *Node) recoverFromPeersJSON(rc *raft.Config, logs raft.LogStore) error {
	path := filepath.Join(n.cfg.DataDir, PeersFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	conf, err := raft.ReadConfigJSON(path)
	if err != nil {
		return fmt.Errorf("read %s (format: [{\"id\": ..., \"address\": ..., \"non_voter\": false}]): %w", path, err)
	}
	if !n.existing {
		return fmt.Errorf("%s found but the data dir has no Raft state to recover; remove it and --bootstrap or --join instead", path)
	}
	if err := raft.RecoverCluster(rc, n.cfg.FSM, logs, n.bolt, n.snaps, n.transport, conf); err != nil {
		return fmt.Errorf("recover cluster from %s: %w", path, err)
	}
	done := path + ".applied-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, done); err != nil {
		return fmt.Errorf("recovered from %s but could not rename it (remove it before the next start): %w", path, err)
	}
	n.logger.Warn("cluster configuration replaced from peers.json", "servers", len(conf.Servers), "renamed_to", done)
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (n *Node) closeStores() {
	if n.transport != nil {
		n.transport.Close()
	}
	if n.bolt != nil {
		n.bolt.Close()
	}
}

// ID is this node's server ID.
func (n *Node) ID() string { return n.cfg.NodeID }

// Addr is the transport address peers dial.
func (n *Node) Addr() string { return string(n.transport.LocalAddr()) }

// HasExistingState reports whether the data dir held Raft state when the node started.
func (n *Node) HasExistingState() bool { return n.existing }

// LeaderChanges delivers true when this node becomes leader and false when it stops.
// The owner of the Node must keep reading it.
func (n *Node) LeaderChanges() <-chan bool { return n.leaderCh }

// Bootstrap makes this node a one-server cluster unless it already has Raft state, in which
// case it does nothing: bootstrapping twice would fork the cluster's history.
func (n *Node) Bootstrap() error {
	if n.existing {
		n.logger.Info("existing raft state found; not bootstrapping")
		return nil
	}
	f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raft.ServerID(n.cfg.NodeID), Address: n.transport.LocalAddr(),
	}}})
	if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap: %w", err)
	}
	return nil
}

// watchHeartbeats tracks which followers the leader cannot reach, for `cluster peers`.
// The goroutine ends in Shutdown.
func (n *Node) watchHeartbeats() {
	n.unreachable = map[string]bool{}
	n.observed = make(chan raft.Observation, 64)
	n.stopObserve, n.observeDone = make(chan struct{}), make(chan struct{})
	n.observer = raft.NewObserver(n.observed, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(n.observer)
	go func() {
		defer close(n.observeDone)
		for {
			select {
			case <-n.stopObserve:
				return
			case o := <-n.observed:
				n.mu.Lock()
				switch d := o.Data.(type) {
				case raft.FailedHeartbeatObservation:
					n.unreachable[string(d.PeerID)] = true
				case raft.ResumedHeartbeatObservation:
					delete(n.unreachable, string(d.PeerID))
				case raft.LeaderObservation:
					// A new term starts with no failures known.
					clear(n.unreachable)
				}
				n.mu.Unlock()
			}
		}
	}()
}

// Reachable reports whether this leader hears from server id; false on followers.
func (n *Node) Reachable(id string) bool {
	if !n.IsLeader() {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.unreachable[id]
}

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// State is the Raft state (Follower, Candidate, Leader, Shutdown).
func (n *Node) State() raft.RaftState { return n.raft.State() }

// Leader returns the leader's ID and address; empty when unknown.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// WaitLeader waits until a leader is known and returns its ID.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	return poll(ctx, func() (string, bool) {
		id, _ := n.Leader()
		return id, id != ""
	}, ErrNoLeader)
}

// poll checks cond every few milliseconds until it holds or ctx ends. Raft offers no
// notification for "a leader is known" on followers, so polling is the simple honest way.
func poll[T any](ctx context.Context, cond func() (T, bool), onTimeout error) (T, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if v, ok := cond(); ok {
			return v, nil
		}
		select {
		case <-ctx.Done():
			var zero T
			return zero, fmt.Errorf("%w: %w", onTimeout, ctx.Err())
		case <-t.C:
		}
	}
}

// Term is the current Raft term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// CommitIndex is the last committed index this node knows.
func (n *Node) CommitIndex() uint64 { return n.raft.CommitIndex() }

// AppliedIndex is the last index applied to the FSM.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// LastLogIndex is the index of the last entry in this node's log (committed or not).
func (n *Node) LastLogIndex() uint64 { return n.raft.LastIndex() }

// LastContact is when a follower last heard from the leader.
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// Stats returns Raft's own counters.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

func timeout(ctx context.Context, def time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return def
}

func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: %w", ErrAmbiguous, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %w", ErrShutdown, err)
	default:
		return err
	}
}

// Apply replicates a command and returns the FSM's response once it is applied here.
func (n *Node) Apply(ctx context.Context, cmd proto.Message) (any, uint64, error) {
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, 0, fmt.Errorf("encode command: %w", err)
	}
	if len(data) > MaxCommandBytes {
		// Big entries stall replication and heartbeats for everyone; batch smaller instead.
		return nil, 0, fmt.Errorf("command of %d bytes exceeds %d: %w", len(data), MaxCommandBytes, ErrTooLarge)
	}
	start := time.Now()
	f := n.raft.Apply(data, timeout(ctx, 10*time.Second))
	if err := f.Error(); err != nil {
		return nil, 0, mapErr(err)
	}
	if n.cfg.ObserveApply != nil {
		n.cfg.ObserveApply(time.Since(start))
	}
	return f.Response(), f.Index(), nil
}

// Barrier waits until every entry before it is applied here (leader only).
func (n *Node) Barrier(ctx context.Context) error {
	return mapErr(n.raft.Barrier(timeout(ctx, 10*time.Second)).Error())
}

// CaughtUp returns once this leader's state holds every entry of earlier terms.
//
// A leader's commit index only covers the previous leader's last entries once an entry of its
// own term is committed: until then a write the old leader acknowledged just before it died
// can be in this log yet above the commit index, and a leader that just restarted may not have
// applied the log after its snapshot. A read, or a check made before a write ("does this
// pipeline exist?"), would miss them. So the first call of each term waits for a barrier; the
// others cost an atomic load.
func (n *Node) CaughtUp(ctx context.Context) error {
	if term := n.raft.CurrentTerm(); n.readTerm.Load() != term {
		if err := n.Barrier(ctx); err != nil {
			return err
		}
		n.readTerm.Store(term)
	}
	return nil
}

// ConsistentRead waits until reads on this leader reflect every acknowledged write: it waits
// until the leader caught up with earlier terms, confirms leadership with a quorum, then waits
// until the FSM applied the commit index.
func (n *Node) ConsistentRead(ctx context.Context) error {
	if err := n.CaughtUp(ctx); err != nil {
		return err
	}
	if err := mapErr(n.raft.VerifyLeader().Error()); err != nil {
		return err
	}
	commit := n.raft.CommitIndex()
	_, err := poll(ctx, func() (struct{}, bool) { return struct{}{}, n.raft.AppliedIndex() >= commit }, ErrNoLeader)
	return err
}

// Servers returns the current configuration.
func (n *Node) Servers() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, mapErr(err)
	}
	return f.Configuration().Servers, nil
}

// AddVoter adds a server as a voter. A different server with the same ID or address is
// removed first (a node rebuilt with a new address, or an address reused by a new node).
// Adding a server that is already present with the same address is a no-op.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		sameID, sameAddr := string(s.ID) == id, string(s.Address) == addr
		if sameID && sameAddr && s.Suffrage == raft.Voter {
			return nil
		}
		if (sameID || sameAddr) && string(s.ID) == n.cfg.NodeID {
			return fmt.Errorf("server %s at %s would replace the leader itself: give the joining node its own --node-id and --raft-addr: %w",
				id, addr, ErrConflict)
		}
		if sameID || sameAddr {
			n.logger.Info("removing stale server before join", "id", s.ID, "addr", s.Address)
			if err := mapErr(n.raft.RemoveServer(s.ID, 0, timeout(ctx, 10*time.Second)).Error()); err != nil {
				return fmt.Errorf("remove stale server %s: %w", s.ID, err)
			}
		}
	}
	if err := mapErr(n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout(ctx, 10*time.Second)).Error()); err != nil {
		return fmt.Errorf("add voter %s at %s: %w", id, addr, err)
	}
	n.logger.Info("server joined", "id", id, "addr", addr)
	return nil
}

// RemoveServer removes a server from the configuration.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	found := false
	for _, s := range servers {
		found = found || string(s.ID) == id
	}
	if !found {
		return fmt.Errorf("server %q: %w", id, ErrUnknownServer)
	}
	return mapErr(n.raft.RemoveServer(raft.ServerID(id), 0, timeout(ctx, 10*time.Second)).Error())
}

// TransferLeadership hands leadership to id (or to the most up-to-date voter when empty)
// and waits until another node leads.
func (n *Node) TransferLeadership(ctx context.Context, id string) (string, error) {
	var f raft.Future
	if id == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		servers, err := n.Servers()
		if err != nil {
			return "", err
		}
		var target *raft.Server
		for i := range servers {
			if string(servers[i].ID) == id {
				target = &servers[i]
			}
		}
		if target == nil {
			return "", fmt.Errorf("server %q: %w", id, ErrUnknownServer)
		}
		f = n.raft.LeadershipTransferToServer(target.ID, target.Address)
	}
	if err := f.Error(); err != nil {
		return "", mapErr(err)
	}
	// The target was told to campaign; if no other leader shows up soon (it is going away
	// too, say) the transfer failed and waiting longer only delays the caller.
	ctx, cancel := context.WithTimeout(ctx, transferWait)
	defer cancel()
	return poll(ctx, func() (string, bool) {
		lid, _ := n.Leader()
		return lid, lid != "" && lid != n.cfg.NodeID
	}, ErrNoLeader)
}

// Snapshot takes a snapshot now and returns its bytes (the FSM's snapshot format).
func (n *Node) Snapshot(ctx context.Context) (io.ReadCloser, error) {
	f := n.raft.Snapshot()
	if err := f.Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil, fmt.Errorf("take snapshot: %w", mapErr(err))
	} else if err == nil {
		_, rc, err := f.Open()
		if err != nil {
			return nil, fmt.Errorf("open snapshot: %w", err)
		}
		return rc, nil
	}
	// Nothing new since the last snapshot: the newest one on disk is current.
	metas, err := n.snaps.List()
	if err != nil || len(metas) == 0 {
		return nil, fmt.Errorf("no snapshot available: %w", err)
	}
	_, rc, err := n.snaps.Open(metas[0].ID)
	if err != nil {
		return nil, fmt.Errorf("open snapshot %s: %w", metas[0].ID, err)
	}
	return rc, nil
}

// Restore replaces the cluster's state with a snapshot (leader only); followers receive it
// through Raft's snapshot installation.
func (n *Node) Restore(ctx context.Context, r io.Reader, size int64) (uint64, error) {
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size}
	if err := n.raft.Restore(meta, r, timeout(ctx, time.Minute)); err != nil {
		return 0, fmt.Errorf("restore snapshot: %w", mapErr(err))
	}
	return n.raft.AppliedIndex(), nil
}

// Shutdown stops the node. With transfer set and this node leading, it first hands
// leadership to another voter so the cluster does not wait for an election timeout.
// Calling it again returns the first result.
func (n *Node) Shutdown(ctx context.Context, transfer bool) error {
	n.shutdownOnce.Do(func() {
		if transfer && n.IsLeader() {
			if servers, _ := n.Servers(); len(servers) > 1 {
				if _, err := n.TransferLeadership(ctx, ""); err != nil {
					n.logger.Warn("leadership transfer before shutdown failed", "err", err)
				}
			}
		}
		n.shutdownErr = n.raft.Shutdown().Error()
		n.raft.DeregisterObserver(n.observer)
		close(n.stopObserve)
		<-n.observeDone
		n.closeStores()
	})
	return n.shutdownErr
}

// slogWriter turns hclog lines into slog records.
type slogWriter struct{ logger *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		line := sc.Text()
		level := slog.LevelInfo
		for tag, lv := range map[string]slog.Level{
			"[ERROR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo,
			"[DEBUG]": slog.LevelDebug, "[TRACE]": slog.LevelDebug,
		} {
			if rest, ok := strings.CutPrefix(line, tag); ok {
				level, line = lv, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), "raft:"))
				break
			}
		}
		w.logger.Log(context.Background(), level, line)
	}
	return len(p), nil
}
