// Package ui drives the web UI of real captaind processes with headless Chromium: the
// pipeline page, live updates, sign-in, rollback with preview and confirm, role checks and
// the commit page. State is scripted through the real API, with simulated hosts that use the
// agent's own client.
package ui

import (
	"os"
	"testing"

	"github.com/captain-cd/captain/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Run(m)) }
