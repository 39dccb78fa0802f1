//go:build !linux

package coordcmd

import (
	"os"
	"testing"
)

// terminal: pseudo-terminals are opened the Linux way only; elsewhere the prompt tests are left out.
func terminal(*testing.T) (controller, tty *os.File, ok bool) { return nil, nil, false }
