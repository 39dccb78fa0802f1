package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func spec(name string) *captainv1.PipelineSpec {
	return &captainv1.PipelineSpec{
		Name:   name,
		Deploy: &captainv1.DeploySettings{AppRoot: "/srv/" + name, SystemdUnit: name + ".service"},
		Stages: []*captainv1.Stage{{
			Name: "onebox", Wave: 1,
			Environments: []*captainv1.Environment{{Name: "onebox", Selector: map[string]string{"role": "onebox"}}},
		}},
	}
}

func artifact(pipeline string, n int) *captainv1.ArtifactRef {
	sum := fmt.Sprintf("%064x", n)
	return &captainv1.ArtifactRef{Bucket: "b", Key: "artifacts/" + pipeline + "/" + sum + ".tar.zst", Sha256: sum, Size: 10}
}

func applyPipeline(t *testing.T, c *Clients, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Pipeline.ApplyPipeline(ctx, connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: spec(name)})); err != nil {
		t.Fatalf("apply pipeline %s: %v", name, err)
	}
}

func createRelease(ctx context.Context, c *Clients, pipeline, requestID string, n int) (*captainv1.Release, error) {
	res, err := c.Release.CreateRelease(ctx, connect.NewRequest(&captainv1.CreateReleaseRequest{
		Pipeline: pipeline, Artifact: artifact(pipeline, n), HeadCommit: fmt.Sprintf("%040x", n), RequestId: requestID,
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetRelease(), nil
}

// releasesOn returns the request IDs of a pipeline's releases stored on a node.
func releasesOn(n *Node, pipeline string) (map[string]uint64, error) {
	rels, err := n.State().Snapshot().Releases(pipeline, 0, 0)
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return nil, err
	}
	out := map[string]uint64{}
	for _, r := range rels {
		out[r.GetRequestId()] = r.GetNumber()
	}
	return out, nil
}

// allPresent checks that every acknowledged write is on every running node, numbered alike.
func allPresent(c *Cluster, pipeline string, acked map[string]uint64) error {
	for _, n := range c.Running() {
		got, err := releasesOn(n, pipeline)
		if err != nil {
			return err
		}
		for id, num := range acked {
			if got[id] != num {
				return fmt.Errorf("%s: release for request %s is %d, want %d", n.ID, id, got[id], num)
			}
		}
	}
	return nil
}

func TestThreeNodeClusterFormsAndFollowersForwardWrites(t *testing.T) {
	c := New(t, 3)
	leader := c.Leader(5 * time.Second)
	follower := c.Followers()[0]
	fc := c.Client(follower, "")

	applyPipeline(t, fc, "web")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rel, err := createRelease(ctx, fc, "web", "req-1", 1)
	if err != nil {
		t.Fatalf("create release through follower %s (leader %s): %v", follower.ID, leader.ID, err)
	}
	if rel.GetNumber() != 1 || rel.GetCreatedBy() != "initial-admin" {
		t.Fatalf("release = %d by %q, want 1 by initial-admin", rel.GetNumber(), rel.GetCreatedBy())
	}
	Eventually(t, 5*time.Second, func() error { return allPresent(c, "web", map[string]uint64{"req-1": 1}) })

	peers, err := fc.Cluster.ListPeers(ctx, connect.NewRequest(&captainv1.ListPeersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	leaders := 0
	for _, p := range peers.Msg.GetPeers() {
		if p.GetApiAddress() == "" || p.GetSuffrage() != captainv1.Suffrage_SUFFRAGE_VOTER {
			t.Errorf("peer %s: api address %q, suffrage %s; want an address and voter", p.GetId(), p.GetApiAddress(), p.GetSuffrage())
		}
		if p.GetLeader() {
			leaders++
		}
	}
	if len(peers.Msg.GetPeers()) != 3 || leaders != 1 {
		t.Fatalf("peers = %v, want 3 with one leader", peers.Msg.GetPeers())
	}
}

// writer creates releases through the given nodes until stopped, recording every
// acknowledged one. Clients retry with the same request ID, as the CLI does.
type writer struct {
	mu    sync.Mutex
	acked map[string]uint64
	seq   int
}

func (w *writer) write(ctx context.Context, c *Cluster, via []*Node, pipeline string) error {
	w.mu.Lock()
	w.seq++
	id := fmt.Sprintf("w-%d", w.seq)
	n := w.seq
	w.mu.Unlock()
	var lastErr error
	for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
		node := via[attempt%len(via)]
		if !node.Running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 8*time.Second)
		rel, err := createRelease(cctx, c.Client(node, ""), pipeline, id, n)
		cancel()
		if err == nil {
			w.mu.Lock()
			w.acked[id] = rel.GetNumber()
			w.mu.Unlock()
			return nil
		}
		lastErr = err
	}
	return fmt.Errorf("write %s never acknowledged: %w", id, lastErr)
}

func (w *writer) snapshot() map[string]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]uint64, len(w.acked))
	for k, v := range w.acked {
		out[k] = v
	}
	return out
}

func TestLeaderCrashElectsNewLeaderAndLosesNoAcknowledgedWrite(t *testing.T) {
	c := New(t, 3)
	applyPipeline(t, c.Client(c.Nodes[0], ""), "web")
	w := &writer{acked: map[string]uint64{}}
	ctx := context.Background()
	for range 5 {
		if err := w.write(ctx, c, c.Nodes, "web"); err != nil {
			t.Fatal(err)
		}
	}

	old := c.Leader(5 * time.Second)
	survivors := c.Followers()
	c.Kill(old)
	killed := time.Now()
	newLeader := c.Leader(3 * time.Second)
	t.Logf("new leader %s elected %s after killing %s", newLeader.ID, time.Since(killed).Round(time.Millisecond), old.ID)

	// Writes go to a survivor that may or may not lead; it forwards when it does not.
	for range 5 {
		if err := w.write(ctx, c, survivors, "web"); err != nil {
			t.Fatal(err)
		}
	}
	acked := w.snapshot()
	if len(acked) != 10 {
		t.Fatalf("acknowledged %d writes, want 10", len(acked))
	}
	Eventually(t, 5*time.Second, func() error { return allPresent(c, "web", acked) })

	// Numbers are never reused: 10 acknowledged creates hold 10 distinct numbers.
	seen := map[uint64]bool{}
	for _, num := range acked {
		seen[num] = true
	}
	if len(seen) != 10 {
		t.Fatalf("release numbers %v are not distinct", acked)
	}

	c.Restart(old)
	Eventually(t, 10*time.Second, func() error { return allPresent(c, "web", acked) })
	if id, _ := old.Daemon().Node().Leader(); id == "" {
		t.Fatalf("restarted %s knows no leader", old.ID)
	}
}

func TestWritesContinueDuringContinuousLoadAcrossFailover(t *testing.T) {
	c := New(t, 3)
	applyPipeline(t, c.Client(c.Nodes[0], ""), "api")
	w := &writer{acked: map[string]uint64{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if err := w.write(ctx, c, c.Nodes, "api"); err != nil && ctx.Err() == nil {
				errc <- err
				return
			}
		}
	}()
	Eventually(t, 10*time.Second, func() error {
		if n := len(w.snapshot()); n < 5 {
			return fmt.Errorf("%d writes so far", n)
		}
		return nil
	})
	c.Kill(c.Leader(5 * time.Second))
	c.Leader(3 * time.Second)
	before := len(w.snapshot())
	Eventually(t, 10*time.Second, func() error {
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
		if n := len(w.snapshot()); n < before+5 {
			return fmt.Errorf("only %d writes after failover", n-before)
		}
		return nil
	})
	cancel()
	wg.Wait()
	acked := w.snapshot()
	Eventually(t, 5*time.Second, func() error { return allPresent(c, "api", acked) })
}

func TestFiveNodeClusterSurvivesTwoLosses(t *testing.T) {
	c := New(t, 5)
	applyPipeline(t, c.Client(c.Nodes[0], ""), "web")
	w := &writer{acked: map[string]uint64{}}
	ctx := context.Background()
	if err := w.write(ctx, c, c.Nodes, "web"); err != nil {
		t.Fatal(err)
	}
	c.Kill(c.Leader(5 * time.Second))
	c.Kill(c.Followers()[0])
	c.Leader(3 * time.Second)
	for range 3 {
		if err := w.write(ctx, c, c.Running(), "web"); err != nil {
			t.Fatal(err)
		}
	}
	acked := w.snapshot()
	Eventually(t, 5*time.Second, func() error { return allPresent(c, "web", acked) })
	if len(c.Running()) != 3 {
		t.Fatalf("running = %d, want 3", len(c.Running()))
	}
}

func TestNoLeaderGivesUnavailableAfterElectionWait(t *testing.T) {
	c := New(t, 3, Options{Configure: func(_ int, cfg *daemonConfig) { cfg.ElectionWait = time.Second }})
	applyPipeline(t, c.Client(c.Nodes[0], ""), "web")
	leader := c.Leader(5 * time.Second)
	f := c.Followers()
	c.Kill(leader)
	c.Kill(f[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := createRelease(ctx, c.Client(f[1], ""), "web", "lonely", 1)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "no leader") {
		t.Fatalf("write without quorum: %v, want Unavailable naming no leader", err)
	}
}

// records parses a snapshot into its records, dropping the header and what belongs to the
// cluster rather than to its data: member rows and their audit events.
func records(t *testing.T, snap []byte) (header *raftv1.SnapshotHeader, out []*raftv1.SnapshotRecord) {
	t.Helper()
	r := bytes.NewReader(snap)
	for {
		var rec raftv1.SnapshotRecord
		err := protodelim.UnmarshalFrom(r, &rec)
		if err != nil {
			if r.Len() == 0 {
				return header, out
			}
			t.Fatalf("parse snapshot: %v", err)
		}
		switch {
		case rec.GetHeader() != nil:
			header = rec.GetHeader()
		case rec.GetMember() != nil:
		case strings.HasPrefix(rec.GetAudit().GetAction(), "cluster."):
		default:
			out = append(out, &rec)
		}
	}
}

func TestSnapshotSaveWipeRestoreGivesIdenticalState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := New(t, 3)
	cl := c.Client(c.Nodes[1], "")
	applyPipeline(t, cl, "web")
	applyPipeline(t, cl, "api")
	for i := range 4 {
		if _, err := createRelease(ctx, cl, "web", fmt.Sprintf("r%d", i), i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Token.CreateToken(ctx, connect.NewRequest(&captainv1.CreateTokenRequest{Name: "ci", Role: captainv1.Role_ROLE_DEPLOYER})); err != nil {
		t.Fatal(err)
	}
	saved, err := c.SaveSnapshot(ctx, c.Nodes[2])
	if err != nil {
		t.Fatalf("snapshot save: %v", err)
	}
	head, want := records(t, saved)
	if head.GetFormat() != 1 || len(want) < 10 {
		t.Fatalf("saved snapshot: header %v, %d records", head, len(want))
	}

	// Wipe: a brand-new cluster with empty data dirs, then restore through a follower.
	c.StopAll()
	fresh := New(t, 3)
	if _, err := fresh.RestoreSnapshot(ctx, fresh.Followers()[0], bytes.NewReader(saved)); err != nil {
		t.Fatalf("snapshot restore: %v", err)
	}
	for _, n := range fresh.Nodes {
		Eventually(t, 10*time.Second, func() error {
			var buf bytes.Buffer
			if err := writeState(&buf, n); err != nil {
				return err
			}
			_, got := records(t, buf.Bytes())
			if len(got) != len(want) {
				return fmt.Errorf("%s: %d records after restore, want %d", n.ID, len(got), len(want))
			}
			for i := range want {
				if !proto.Equal(got[i], want[i]) {
					return fmt.Errorf("%s: record %d differs:\n got %v\nwant %v", n.ID, i, got[i], want[i])
				}
			}
			return nil
		})
	}
	// The restored cluster still forwards writes (its member table was kept) and keeps numbering.
	rel, err := createRelease(ctx, fresh.Client(fresh.Followers()[0], ""), "web", "after-restore", 9)
	if err != nil {
		t.Fatalf("write after restore: %v", err)
	}
	if rel.GetNumber() != 5 {
		t.Fatalf("first release after restore = %d, want 5", rel.GetNumber())
	}
}

func TestReadsAfterWritesAreConsistentOrBlockUntilTheIndex(t *testing.T) {
	c := New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	followers := c.Followers()
	writer, readerNode := c.Client(followers[0], ""), c.Client(followers[1], "")

	// Consistent reads on a follower are answered by the leader, so they see every
	// acknowledged write at once.
	for i := range 5 {
		name := fmt.Sprintf("p%d", i)
		applyPipeline(t, writer, name)
		res, err := readerNode.Pipeline.GetPipeline(ctx, connect.NewRequest(&captainv1.GetPipelineRequest{
			Name: name, Read: &captainv1.ReadOptions{Consistent: true},
		}))
		if err != nil {
			t.Fatalf("consistent read of %s right after its write: %v", name, err)
		}
		if res.Msg.GetPipeline().GetVersion() != 1 {
			t.Fatalf("version = %d", res.Msg.GetPipeline().GetVersion())
		}
	}

	// A blocking query returns when the state passes min_index (taken from a consistent
	// read, so it covers every write so far and only the next one can wake it).
	list, err := readerNode.Pipeline.ListPipelines(ctx, connect.NewRequest(&captainv1.ListPipelinesRequest{
		Read: &captainv1.ReadOptions{Consistent: true},
	}))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		res *connect.Response[captainv1.ListPipelinesResponse]
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := readerNode.Pipeline.ListPipelines(ctx, connect.NewRequest(&captainv1.ListPipelinesRequest{
			Read: &captainv1.ReadOptions{MinIndex: list.Msg.GetIndex()},
		}))
		done <- result{res, err}
	}()
	applyPipeline(t, writer, "late")
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.Msg.GetIndex() <= list.Msg.GetIndex() || len(r.res.Msg.GetPipelines()) != 6 {
		t.Fatalf("blocking query returned index %d (from %d) with %d pipelines; want a later index with 6",
			r.res.Msg.GetIndex(), list.Msg.GetIndex(), len(r.res.Msg.GetPipelines()))
	}
}

func TestPeersJSONRecoversASurvivorAfterQuorumLoss(t *testing.T) {
	c := New(t, 3)
	applyPipeline(t, c.Client(c.Nodes[0], ""), "web")
	w := &writer{acked: map[string]uint64{}}
	ctx := context.Background()
	for range 3 {
		if err := w.write(ctx, c, c.Nodes, "web"); err != nil {
			t.Fatal(err)
		}
	}
	acked := w.snapshot()
	Eventually(t, 5*time.Second, func() error { return allPresent(c, "web", acked) })

	// Two of three nodes are lost for good: the survivor alone has no quorum.
	survivor := c.Nodes[2]
	c.Kill(c.Nodes[0])
	c.Kill(c.Nodes[1])
	c.Kill(survivor)
	peers := fmt.Sprintf(`[{"id": %q, "address": %q, "non_voter": false}]`, survivor.ID, survivor.RaftAddr)
	if err := os.WriteFile(filepath.Join(survivor.DataDir, "peers.json"), []byte(peers), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Restart(survivor)
	if l := c.Leader(5 * time.Second); l != survivor {
		t.Fatalf("leader = %s, want the recovered survivor", l.ID)
	}
	if err := allPresent(c, "web", acked); err != nil {
		t.Fatalf("state lost in recovery: %v", err)
	}
	if err := w.write(ctx, c, []*Node{survivor}, "web"); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	if _, err := os.Stat(filepath.Join(survivor.DataDir, "peers.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("peers.json still in place after recovery: %v", err)
	}
}

func TestLeaderTasksRunOnlyOnTheLeaderAndMoveWithIt(t *testing.T) {
	var mu sync.Mutex
	running := map[string]bool{}
	c := New(t, 3, Options{Prepare: func(n *Node, d *daemonT) {
		d.AddLeaderTask(func(ctx context.Context) error {
			mu.Lock()
			running[n.ID] = true
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			running[n.ID] = false
			mu.Unlock()
			return ctx.Err()
		})
	}})
	only := func(id string) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			for n, r := range running {
				if r != (n == id) {
					return fmt.Errorf("task running = %v, want only on %s", running, id)
				}
			}
			if !running[id] {
				return fmt.Errorf("task not running on leader %s: %v", id, running)
			}
			return nil
		}
	}
	old := c.Leader(5 * time.Second)
	Eventually(t, 5*time.Second, only(old.ID))
	c.Kill(old)
	next := c.Leader(3 * time.Second)
	Eventually(t, 5*time.Second, only(next.ID))
}

func TestLeaderReportsWhichPeersItReaches(t *testing.T) {
	c := New(t, 3)
	leader := c.Leader(5 * time.Second)
	down := c.Followers()[0]
	c.Kill(down)
	cl := c.Client(leader, "")
	Eventually(t, 10*time.Second, func() error {
		res, err := cl.Cluster.ListPeers(context.Background(), connect.NewRequest(&captainv1.ListPeersRequest{}))
		if err != nil {
			return err
		}
		for _, p := range res.Msg.GetPeers() {
			if want := p.GetId() != down.ID; p.GetReachable() != want {
				return fmt.Errorf("peer %s reachable = %v, want %v", p.GetId(), p.GetReachable(), want)
			}
		}
		return nil
	})
}

func TestGracefulStopHandsLeadershipOverBeforeLeaving(t *testing.T) {
	c := New(t, 3)
	old := c.Leader(5 * time.Second)
	c.Stop(old)
	// No election timeout has to pass: a survivor leads the moment Stop returns.
	leaders := 0
	for _, n := range c.Running() {
		if n.Daemon().Node().IsLeader() {
			leaders++
		}
	}
	if leaders != 1 {
		t.Fatalf("%d survivors lead right after a graceful stop; want 1 (leadership transferred)", leaders)
	}
}

func TestTransferLeadershipAndRemoveThroughAFollower(t *testing.T) {
	c := New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	old := c.Leader(5 * time.Second)
	f := c.Followers()
	cl := c.Client(f[0], "")
	res, err := cl.Cluster.TransferLeadership(ctx, connect.NewRequest(&captainv1.TransferLeadershipRequest{NodeId: f[1].ID}))
	if err != nil {
		t.Fatalf("transfer leadership to %s via %s: %v", f[1].ID, f[0].ID, err)
	}
	if res.Msg.GetLeader().GetId() != f[1].ID {
		t.Fatalf("new leader = %s, want %s", res.Msg.GetLeader().GetId(), f[1].ID)
	}
	if l := c.Leader(5 * time.Second); l != f[1] {
		t.Fatalf("cluster leader = %s, want %s", l.ID, f[1].ID)
	}

	rm, err := cl.Cluster.Remove(ctx, connect.NewRequest(&captainv1.RemoveRequest{NodeId: old.ID}))
	if err != nil {
		t.Fatalf("remove %s: %v", old.ID, err)
	}
	if len(rm.Msg.GetPeers()) != 2 {
		t.Fatalf("peers after remove = %v", rm.Msg.GetPeers())
	}
	c.Kill(old)
	Eventually(t, 5*time.Second, func() error {
		for _, n := range c.Running() {
			ms, err := n.State().Snapshot().Members()
			if err != nil {
				return err
			}
			if len(ms) != 2 {
				return fmt.Errorf("%s still knows %d members", n.ID, len(ms))
			}
		}
		return nil
	})
	_, err = cl.Cluster.Remove(ctx, connect.NewRequest(&captainv1.RemoveRequest{NodeId: "ghost"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("remove unknown node: %v, want NotFound", err)
	}
	// Two voters still commit writes.
	applyPipeline(t, cl, "after-remove")
}

func TestFollowerBehindACompactedLogCatchesUpFromASnapshot(t *testing.T) {
	c := New(t, 3, Options{Configure: func(_ int, cfg *daemonConfig) {
		cfg.SnapshotThreshold, cfg.SnapshotInterval, cfg.TrailingLogs = 8, 50*time.Millisecond, 2
	}})
	applyPipeline(t, c.Client(c.Nodes[0], ""), "web")
	lagging := c.Followers()[0]
	c.Kill(lagging)
	w := &writer{acked: map[string]uint64{}}
	for range 30 {
		if err := w.write(context.Background(), c, c.Running(), "web"); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until every live node (whichever leads next) compacted its log past the entries
	// the lagging node lacks.
	Eventually(t, 10*time.Second, func() error {
		for _, n := range c.Running() {
			first, err := strconv.ParseUint(n.Daemon().Node().Stats()["last_snapshot_index"], 10, 64)
			if err != nil || first < 20 {
				return fmt.Errorf("%s: last snapshot index %d (%v)", n.ID, first, err)
			}
		}
		return nil
	})
	leader := c.Leader(5 * time.Second)
	c.Restart(lagging)
	acked := w.snapshot()
	Eventually(t, 10*time.Second, func() error { return allPresent(c, "web", acked) })
	if idx := lagging.Daemon().Node().Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatalf("lagging node caught up without installing a snapshot (last_snapshot_index %s)\nlagging %v\nleader %s %v",
			idx, lagging.Daemon().Node().Stats(), leader.ID, leader.Daemon().Node().Stats())
	}
	// The restored follower keeps serving reads and forwarding writes.
	if err := w.write(context.Background(), c, []*Node{lagging}, "web"); err != nil {
		t.Fatal(err)
	}
}

func TestRebuiltNodeRejoinsUnderItsOldIDReplacingTheStaleServer(t *testing.T) {
	c := New(t, 3)
	applyPipeline(t, c.Client(c.Nodes[0], ""), "web")
	old := c.Followers()[0]
	oldRaft := old.RaftAddr
	c.Kill(old)

	// Same ID, empty data dir, new addresses: a replaced machine.
	rebuilt := &Node{ID: old.ID, DataDir: filepath.Join(t.TempDir(), "data"), RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0"}
	c.Nodes = append(c.Nodes, rebuilt)
	cfg := c.config(rebuilt)
	cfg.Join, cfg.JoinToken = []string{c.Leader(5 * time.Second).APIAddr}, AdminSecret
	c.start(rebuilt, cfg)
	c.WaitMembers(3)
	servers, err := c.Leader(5 * time.Second).Daemon().Node().Servers()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if string(s.ID) == old.ID && string(s.Address) != rebuilt.RaftAddr {
			t.Fatalf("server %s still at %s (old %s), want the rebuilt node's %s", s.ID, s.Address, oldRaft, rebuilt.RaftAddr)
		}
	}
	Eventually(t, 5*time.Second, func() error {
		if _, err := rebuilt.State().Snapshot().Pipeline("web", 0); err != nil {
			return fmt.Errorf("rebuilt node has not caught up: %w", err)
		}
		return nil
	})
}

func TestNewTokenWorksAtOnceOnAFollower(t *testing.T) {
	c := New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := c.Client(c.Leader(5*time.Second), "")
	follower := c.Followers()[0]
	for i := range 10 {
		res, err := leader.Token.CreateToken(ctx, connect.NewRequest(&captainv1.CreateTokenRequest{Name: fmt.Sprintf("t%d", i), Role: captainv1.Role_ROLE_VIEWER}))
		if err != nil {
			t.Fatal(err)
		}
		who, err := c.Client(follower, res.Msg.GetSecret()).Token.WhoAmI(ctx, connect.NewRequest(&captainv1.WhoAmIRequest{}))
		if err != nil {
			t.Fatalf("token %d used on follower %s right after creation: %v", i, follower.ID, err)
		}
		if who.Msg.GetToken().GetName() != fmt.Sprintf("t%d", i) {
			t.Fatalf("whoami = %v", who.Msg.GetToken())
		}
	}
	// A token the leader does not know either stays unknown on the follower.
	_, err := c.Client(follower, "cpt_nobody_00").Token.WhoAmI(ctx, connect.NewRequest(&captainv1.WhoAmIRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "unknown token") {
		t.Fatalf("unknown token on follower: %v, want Unauthenticated", err)
	}
}
