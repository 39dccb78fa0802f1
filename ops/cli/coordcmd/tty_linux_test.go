//go:build linux

package coordcmd

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/captain-cd/captain/ops/cli/statuscmd"
)

// openPTY opens a real pseudo-terminal pair: what a person's terminal is to the CLI. The
// caller writes answers to the controller side and hands the terminal side to the command.
// It fails only when the system has no pseudo-terminals.
func openPTY(t *testing.T) (controller, terminal *os.File, err error) {
	t.Helper()
	controller, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { controller.Close() })
	fd := int(controller.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	terminal, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { terminal.Close() })
	return controller, terminal, nil
}

func TestColourOnlyOnATerminalWithoutNoColor(t *testing.T) {
	_, tty, err := openPTY(t)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	pipeR, pipeW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pipeR.Close()
	defer pipeW.Close()

	t.Setenv("NO_COLOR", "")
	if !statuscmd.StyleFor(tty).Color {
		t.Error("a terminal gets no colour")
	}
	if statuscmd.StyleFor(pipeW).Color {
		t.Error("a pipe gets colour")
	}
	t.Setenv("NO_COLOR", "1")
	if statuscmd.StyleFor(tty).Color {
		t.Error("NO_COLOR set, still colour")
	}
	if !isTerminal(tty) || isTerminal(pipeR) {
		t.Error("isTerminal tells a terminal from a pipe wrongly")
	}
}

// terminal gives a test a terminal for stdin when the system has pseudo-terminals.
func terminal(t *testing.T) (controller, tty *os.File, ok bool) {
	t.Helper()
	controller, tty, err := openPTY(t)
	if err != nil {
		t.Logf("no pseudo-terminals here, prompt not tested: %v", err)
		return nil, nil, false
	}
	return controller, tty, true
}
