// Package faults injects faults into a running Captain: a coordinator cluster (in network
// namespaces when root, on loopback otherwise), agents as separate processes with their own root
// dirs, and a real S3 gateway. Each scenario kills, cuts or stops one part and asserts where
// the deployments, the hosts' app roots and the replicated state end up.
package faults

import (
	"os"
	"testing"

	"github.com/captain-cd/captain/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Run(m)) }
