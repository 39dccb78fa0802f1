package coordcmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// NewClusterCommand returns `captain cluster`.
func NewClusterCommand(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect and operate the coordinator cluster",
		Example: `  captain cluster peers
  captain cluster snapshot save backup.snap`,
	}
	cmd.AddCommand(clusterPeers(cfg), clusterLeader(cfg), clusterRemove(cfg), clusterTransfer(cfg), clusterSnapshot(cfg))
	return cmd
}

func printPeers(w io.Writer, peers []*captainv1.Peer) error {
	rows := [][]string{}
	for _, p := range peers {
		role := "follower"
		if p.GetLeader() {
			role = "leader"
		}
		if p.GetSuffrage() == captainv1.Suffrage_SUFFRAGE_NONVOTER {
			role += " (non-voter)"
		}
		rows = append(rows, []string{p.GetId(), role, p.GetRaftAddress(), orDash(p.GetApiAddress())})
	}
	return table(w, "ID\tROLE\tRAFT ADDRESS\tAPI ADDRESS", rows)
}

func clusterPeers(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:     "peers",
		Short:   "List the coordinator nodes and which one leads",
		Example: "  captain cluster peers\n  captain cluster peers -o json",
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			res, err := c.cluster.ListPeers(cmd.Context(), connect.NewRequest(&captainv1.ListPeersRequest{}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			return printPeers(cmd.OutOrStdout(), res.Msg.GetPeers())
		}),
	}
}

func clusterLeader(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:     "leader",
		Short:   "Show the current leader, term and commit index",
		Example: "  captain cluster leader",
		Args:    cobra.NoArgs,
		RunE: run(cfg, func(cmd *cobra.Command, _ []string, c *clients) error {
			res, err := c.cluster.GetLeader(cmd.Context(), connect.NewRequest(&captainv1.GetLeaderRequest{}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			l := res.Msg.GetLeader()
			if l == nil {
				return errors.New("no leader: an election is running or quorum is lost; check `captain cluster peers` on every node")
			}
			fmt.Fprintf(cmd.OutOrStdout(), "leader %s (raft %s, api %s), term %d, commit index %d\n",
				l.GetId(), l.GetRaftAddress(), orDash(l.GetApiAddress()), res.Msg.GetTerm(), res.Msg.GetCommitIndex())
			return nil
		}),
	}
}

func clusterRemove(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NODE_ID",
		Short: "Remove a node from the cluster configuration",
		Long: `Remove a node from the Raft configuration, e.g. a machine that is gone for good.
The cluster's quorum shrinks with it. A removed node that comes back must join again.`,
		Example: "  captain cluster remove c3",
		Args:    cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			res, err := c.cluster.Remove(cmd.Context(), connect.NewRequest(&captainv1.RemoveRequest{NodeId: args[0]}))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s; %d nodes remain\n", args[0], len(res.Msg.GetPeers()))
			return nil
		}),
	}
}

func clusterTransfer(cfg *clientcfg.Config) *cobra.Command {
	return &cobra.Command{
		Use:   "transfer-leadership [NODE_ID]",
		Short: "Hand leadership to another node (before maintenance on the leader)",
		Example: `  captain cluster transfer-leadership      # Raft picks the most up-to-date voter
  captain cluster transfer-leadership c2`,
		Args: cobra.MaximumNArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			req := &captainv1.TransferLeadershipRequest{}
			if len(args) == 1 {
				req.NodeId = args[0]
			}
			res, err := c.cluster.TransferLeadership(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "leader is now %s\n", res.Msg.GetLeader().GetId())
			return nil
		}),
	}
}

func clusterSnapshot(cfg *clientcfg.Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save or restore the replicated state",
		Example: `  captain cluster snapshot save backup.snap
  captain cluster snapshot restore backup.snap --yes`,
	}
	save := &cobra.Command{
		Use:     "save FILE",
		Short:   "Save a snapshot of the replicated state to FILE",
		Example: "  captain cluster snapshot save /backup/captain-$(date +%F).snap",
		Args:    cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			stream, err := c.cluster.SnapshotSave(cmd.Context(), connect.NewRequest(&captainv1.SnapshotSaveRequest{}))
			if err != nil {
				return err
			}
			defer stream.Close()
			// Write beside the target and rename, so FILE is never a partial snapshot.
			tmp, err := os.CreateTemp(filepath.Dir(args[0]), filepath.Base(args[0])+".partial-*")
			if err != nil {
				return fmt.Errorf("create snapshot file: %w", err)
			}
			defer os.Remove(tmp.Name())
			var n int64
			for stream.Receive() {
				k, err := tmp.Write(stream.Msg().GetChunk())
				if err != nil {
					tmp.Close()
					return fmt.Errorf("write %s: %w", tmp.Name(), err)
				}
				n += int64(k)
			}
			if err := stream.Err(); err != nil {
				tmp.Close()
				return err
			}
			if err := tmp.Sync(); err != nil {
				tmp.Close()
				return err
			}
			if err := tmp.Close(); err != nil {
				return err
			}
			if err := os.Rename(tmp.Name(), args[0]); err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintAnyJSON(cmd.OutOrStdout(), map[string]any{"file": args[0], "bytes": n})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "saved %d bytes to %s\n", n, args[0])
			return nil
		}),
	}
	var yes bool
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the whole replicated state with a saved snapshot",
		Long: `Replace the replicated state of every node with a snapshot saved by "snapshot save".
Everything written since the snapshot is lost; the cluster membership stays as it is.
Pass --yes to confirm.`,
		Example: "  captain cluster snapshot restore backup.snap --yes",
		Args:    cobra.ExactArgs(1),
		RunE: run(cfg, func(cmd *cobra.Command, args []string, c *clients) error {
			if !yes {
				return errors.New("restore replaces all replicated state; pass --yes to confirm")
			}
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("open snapshot: %w", err)
			}
			defer f.Close()
			up := c.cluster.SnapshotRestore(cmd.Context())
			buf := make([]byte, 1<<20)
			for {
				k, rerr := f.Read(buf)
				if k > 0 {
					if err := up.Send(&captainv1.SnapshotRestoreRequest{Chunk: buf[:k]}); err != nil {
						break // CloseAndReceive reports why
					}
				}
				if errors.Is(rerr, io.EOF) {
					break
				}
				if rerr != nil {
					return fmt.Errorf("read %s: %w", args[0], rerr)
				}
			}
			res, err := up.CloseAndReceive()
			if err != nil {
				return err
			}
			if cfg.JSON() {
				return clientcfg.PrintJSON(cmd.OutOrStdout(), res.Msg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s; state is at Raft index %s\n", args[0], strconv.FormatUint(res.Msg.GetIndex(), 10))
			return nil
		}),
	}
	restore.Flags().BoolVar(&yes, "yes", false, "confirm replacing all replicated state")
	cmd.AddCommand(save, restore)
	return cmd
}
