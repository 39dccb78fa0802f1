package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/coordinator/raftnode"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

type clusterService struct{ s *Server }

func (c *clusterService) peers() ([]*captainv1.Peer, error) {
	servers, err := c.s.node.Servers()
	if err != nil {
		return nil, err
	}
	r := c.s.readerOf()
	leaderID, _ := c.s.node.Leader()
	out := make([]*captainv1.Peer, 0, len(servers))
	for _, sv := range servers {
		p := &captainv1.Peer{Id: string(sv.ID), RaftAddress: string(sv.Address), Leader: string(sv.ID) == leaderID}
		switch sv.Suffrage {
		case raft.Voter:
			p.Suffrage = captainv1.Suffrage_SUFFRAGE_VOTER
		default:
			p.Suffrage = captainv1.Suffrage_SUFFRAGE_NONVOTER
		}
		if m, err := r.Member(p.Id); err == nil {
			p.ApiAddress = m.GetApiAddress()
		}
		// Known on the leader only, from Raft's heartbeat observations.
		p.Reachable = c.s.node.Reachable(p.Id)
		out = append(out, p)
	}
	return out, nil
}

func (c *clusterService) ListPeers(context.Context, *connect.Request[captainv1.ListPeersRequest]) (*connect.Response[captainv1.ListPeersResponse], error) {
	ps, err := c.peers()
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&captainv1.ListPeersResponse{Peers: ps}), nil
}

func (c *clusterService) leaderPeer() (*captainv1.Peer, error) {
	ps, err := c.peers()
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		if p.Leader {
			return p, nil
		}
	}
	return nil, nil
}

func (c *clusterService) GetLeader(context.Context, *connect.Request[captainv1.GetLeaderRequest]) (*connect.Response[captainv1.GetLeaderResponse], error) {
	p, err := c.leaderPeer()
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&captainv1.GetLeaderResponse{Leader: p, Term: c.s.node.Term(), CommitIndex: c.s.node.CommitIndex()}), nil
}

func (c *clusterService) Join(ctx context.Context, req *connect.Request[captainv1.JoinRequest]) (*connect.Response[captainv1.JoinResponse], error) {
	m := req.Msg
	for _, f := range []struct{ name, v string }{{"node_id", m.GetNodeId()}, {"raft_address", m.GetRaftAddress()}, {"api_address", m.GetApiAddress()}} {
		if err := required(f.name, f.v); err != nil {
			return nil, err
		}
	}
	if c.s.scheme == "https" && !hasNodeCert(ctx) {
		// A voter the others cannot reach over mutual TLS would only cost quorum.
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New(
			"joining a TLS cluster needs a node certificate signed by the cluster CA (--tls-cert, --tls-key)"))
	}
	return onLeader(c.s, func(ctx context.Context, req *connect.Request[captainv1.JoinRequest]) (*connect.Response[captainv1.JoinResponse], error) {
		// Configuration first: a refused join must not touch the member table. Until the row
		// lands the new node cannot lead anyway (it is still catching up); a failure here makes
		// the joiner retry, and the retry finds the voter in place.
		if err := c.s.node.AddVoter(ctx, m.GetNodeId(), m.GetRaftAddress()); err != nil {
			return nil, err
		}
		cmd := c.s.command(ctx, "", "node joined")
		cmd.Body = &raftv1.Command_SetMember{SetMember: &raftv1.SetMember{Member: &raftv1.ClusterMember{
			NodeId: m.GetNodeId(), RaftAddress: m.GetRaftAddress(), ApiAddress: m.GetApiAddress(),
		}}}
		if _, err := c.s.apply(ctx, cmd); err != nil {
			return nil, err
		}
		c.s.logger.Info("node joined", "joined_id", m.GetNodeId(), "raft_addr", m.GetRaftAddress(), "api_addr", m.GetApiAddress(), "by", actor(ctx))
		ps, err := c.peers()
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.JoinResponse{Peers: ps}), nil
	})(ctx, req)
}

func (c *clusterService) Remove(ctx context.Context, req *connect.Request[captainv1.RemoveRequest]) (*connect.Response[captainv1.RemoveResponse], error) {
	if err := required("node_id", req.Msg.GetNodeId()); err != nil {
		return nil, err
	}
	return onLeader(c.s, func(ctx context.Context, req *connect.Request[captainv1.RemoveRequest]) (*connect.Response[captainv1.RemoveResponse], error) {
		id := req.Msg.GetNodeId()
		servers, err := c.s.node.Servers()
		if err != nil {
			return nil, err
		}
		inConfig := false
		for _, sv := range servers {
			inConfig = inConfig || string(sv.ID) == id
		}
		_, memberErr := c.s.readerOf().Member(id)
		if !inConfig && memberErr != nil {
			return nil, fmt.Errorf("node %q is not a member (see `captain cluster peers`): %w", id, raftnode.ErrUnknownServer)
		}
		// Forget the member while this node still leads, even when it removes itself. A member
		// row without a server (left over by a peers.json recovery) is just forgotten.
		if memberErr == nil {
			cmd := c.s.command(ctx, "", "node removed")
			cmd.Body = &raftv1.Command_SetMember{SetMember: &raftv1.SetMember{Member: &raftv1.ClusterMember{NodeId: id}, Remove: true}}
			if _, err := c.s.apply(ctx, cmd); err != nil {
				return nil, err
			}
		}
		if inConfig {
			if err := c.s.node.RemoveServer(ctx, id); err != nil {
				return nil, err
			}
		}
		ps, err := c.peers()
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.RemoveResponse{Peers: ps}), nil
	})(ctx, req)
}

func (c *clusterService) TransferLeadership(ctx context.Context, req *connect.Request[captainv1.TransferLeadershipRequest]) (*connect.Response[captainv1.TransferLeadershipResponse], error) {
	return onLeader(c.s, func(ctx context.Context, req *connect.Request[captainv1.TransferLeadershipRequest]) (*connect.Response[captainv1.TransferLeadershipResponse], error) {
		if _, err := c.s.node.TransferLeadership(ctx, req.Msg.GetNodeId()); err != nil {
			return nil, err
		}
		p, err := c.leaderPeer()
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.TransferLeadershipResponse{Leader: p}), nil
	})(ctx, req)
}

// snapshotChunk keeps stream messages well under gRPC's default 4 MiB limit.
const snapshotChunk = 1 << 20

// SnapshotSave streams a snapshot taken on the leader after a barrier, so it holds every
// write acknowledged before the call; a follower relays the leader's stream.
func (c *clusterService) SnapshotSave(ctx context.Context, req *connect.Request[captainv1.SnapshotSaveRequest], stream *connect.ServerStream[captainv1.SnapshotSaveResponse]) error {
	if !c.s.node.IsLeader() {
		if req.Header().Get(forwardedHeader) != "" {
			return toConnect(fmt.Errorf("%w: snapshot save forwarded to %s, which does not lead", raftnode.ErrNotLeader, c.s.node.ID()))
		}
		return c.forwardSave(ctx, req, stream)
	}
	if err := c.s.node.Barrier(ctx); err != nil {
		return toConnect(err)
	}
	rc, err := c.s.node.Snapshot(ctx)
	if err != nil {
		return toConnect(err)
	}
	defer rc.Close()
	buf := make([]byte, snapshotChunk)
	for {
		n, err := io.ReadFull(rc, buf)
		if n > 0 {
			if err := stream.Send(&captainv1.SnapshotSaveResponse{Chunk: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return toConnect(fmt.Errorf("read snapshot: %w", err))
		}
	}
}

// SnapshotRestore spools the upload to a temporary file, checks that it parses as a
// snapshot, then restores it through Raft on the leader (forwarding when not leading).
func (c *clusterService) SnapshotRestore(ctx context.Context, stream *connect.ClientStream[captainv1.SnapshotRestoreRequest]) (*connect.Response[captainv1.SnapshotRestoreResponse], error) {
	f, err := os.CreateTemp("", "captain-restore-*.snap")
	if err != nil {
		return nil, toConnect(fmt.Errorf("spool snapshot: %w", err))
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var size int64
	for stream.Receive() {
		n, err := f.Write(stream.Msg().GetChunk())
		if err != nil {
			return nil, toConnect(fmt.Errorf("spool snapshot: %w", err))
		}
		size += int64(n)
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, toConnect(err)
	}
	if _, err := fsm.ReadSnapshot(f); err != nil {
		return nil, invalid(fmt.Errorf("not a valid captaind snapshot: %w", err))
	}
	if !c.s.node.IsLeader() {
		if stream.RequestHeader().Get(forwardedHeader) != "" {
			return nil, toConnect(fmt.Errorf("restore forwarded to %s, which does not lead: retry", c.s.node.ID()))
		}
		return c.forwardRestore(ctx, stream.RequestHeader().Get("Authorization"), f)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, toConnect(err)
	}
	members, err := c.s.readerOf().Members()
	if err != nil {
		return nil, toConnect(err)
	}
	idx, err := c.s.node.Restore(ctx, f, size)
	if err != nil {
		return nil, toConnect(err)
	}
	if err := c.keepMembers(ctx, members); err != nil {
		return nil, toConnect(fmt.Errorf("state restored at index %d, but re-recording the cluster's API addresses failed: %w", idx, err))
	}
	c.s.logger.Warn("state replaced by snapshot restore", "by", actor(ctx), "index", idx, "bytes", size)
	return connect.NewResponse(&captainv1.SnapshotRestoreResponse{Index: idx}), nil
}

// keepMembers puts the live cluster's member table back after a restore: a snapshot may come
// from another cluster, and its addresses would send forwarded writes astray.
func (c *clusterService) keepMembers(ctx context.Context, live []*raftv1.ClusterMember) error {
	servers, err := c.s.node.Servers()
	if err != nil {
		return err
	}
	inConfig := map[string]bool{}
	for _, sv := range servers {
		inConfig[string(sv.ID)] = true
	}
	restored, err := c.s.readerOf().Members()
	if err != nil {
		return err
	}
	var changes []*raftv1.SetMember
	for _, m := range restored {
		if !inConfig[m.GetNodeId()] {
			changes = append(changes, &raftv1.SetMember{Member: &raftv1.ClusterMember{NodeId: m.GetNodeId()}, Remove: true})
		}
	}
	for _, m := range live {
		if inConfig[m.GetNodeId()] {
			changes = append(changes, &raftv1.SetMember{Member: &raftv1.ClusterMember{
				NodeId: m.GetNodeId(), RaftAddress: m.GetRaftAddress(), ApiAddress: m.GetApiAddress(),
			}})
		}
	}
	for _, ch := range changes {
		cmd := c.s.command(ctx, "", "keep cluster membership across a snapshot restore")
		cmd.Body = &raftv1.Command_SetMember{SetMember: ch}
		if _, err := c.s.apply(ctx, cmd); err != nil {
			return err
		}
	}
	return nil
}

func (c *clusterService) forwardSave(ctx context.Context, req *connect.Request[captainv1.SnapshotSaveRequest], stream *connect.ServerStream[captainv1.SnapshotSaveResponse]) error {
	base, err := c.s.leaderAPI()
	if err != nil {
		return toConnect(err)
	}
	out := connect.NewRequest(req.Msg)
	out.Header().Set("Authorization", req.Header().Get("Authorization"))
	out.Header().Set(forwardedHeader, c.s.node.ID())
	down, err := captainv1connect.NewClusterServiceClient(c.s.httpClient, base).SnapshotSave(ctx, out)
	if err != nil {
		return err
	}
	defer down.Close()
	for down.Receive() {
		if err := stream.Send(down.Msg()); err != nil {
			return err
		}
	}
	return down.Err()
}

func (c *clusterService) forwardRestore(ctx context.Context, auth string, f *os.File) (*connect.Response[captainv1.SnapshotRestoreResponse], error) {
	base, err := c.s.leaderAPI()
	if err != nil {
		return nil, toConnect(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, toConnect(err)
	}
	client := captainv1connect.NewClusterServiceClient(c.s.httpClient, base)
	up := client.SnapshotRestore(ctx)
	up.RequestHeader().Set("Authorization", auth)
	up.RequestHeader().Set(forwardedHeader, c.s.node.ID())
	buf := make([]byte, snapshotChunk)
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			if err := up.Send(&captainv1.SnapshotRestoreRequest{Chunk: buf[:n]}); err != nil {
				break // the real error comes from CloseAndReceive
			}
		}
		if rerr != nil {
			break
		}
	}
	return up.CloseAndReceive()
}
