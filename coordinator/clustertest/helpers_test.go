package clustertest

import (
	"io"

	"github.com/captain-cd/captain/coordinator/daemon"
	"github.com/captain-cd/captain/coordinator/fsm"
)

type (
	daemonConfig = daemon.Config
	daemonT      = daemon.Daemon
)

func writeState(w io.Writer, n *Node) error { return fsm.WriteSnapshot(w, n.State().Snapshot()) }
