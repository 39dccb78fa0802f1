package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// MaxOutput is how much of a command's combined output is kept in a StepOutput; the rest is
// dropped and the output is marked truncated. Reports travel through Raft, so they stay small.
const MaxOutput = 4 << 10

// killGrace is how long a command's process group gets after SIGKILL to close its pipes
// before Wait gives up on them (a daemonized grandchild may hold them open forever).
const killGrace = 2 * time.Second

// Command describes one program run by the agent: a hook or a command check.
type Command struct {
	Name    string
	Argv    []string
	Dir     string
	Env     []string // added to the agent's environment
	Timeout time.Duration
}

// Exec runs c and reports its exit code and output. It never returns an error: a command
// that cannot start or times out is a failed StepOutput with exit code -1 and the reason
// in the output.
func Exec(ctx context.Context, c Command) *captainv1.StepOutput {
	out := &captainv1.StepOutput{Name: c.Name, ExitCode: -1}
	defer func() { out.At = timestamppb.Now() }()
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		out.Output = "no command given"
		return out
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	buf := &capped{max: MaxOutput}
	cmd := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = buf, buf
	// Its own process group, so a timeout kills what the command started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = killGrace
	err := cmd.Run()
	out.Output, out.Truncated = buf.String(), buf.truncated
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		out.Output = appendNote(out.Output, fmt.Sprintf("killed: did not finish within %s", c.Timeout))
	case errors.As(err, &exitErr):
		out.ExitCode = int32(exitErr.ExitCode())
	case err != nil:
		out.Output = appendNote(out.Output, fmt.Sprintf("cannot run %q: %v", c.Argv[0], err))
	default:
		out.ExitCode = 0
		out.Passed = true
	}
	return out
}

func appendNote(s, note string) string {
	if s != "" && s[len(s)-1] != '\n' {
		s += "\n"
	}
	return s + "[captain-agent] " + note
}

// capped keeps the first max bytes written to it.
type capped struct {
	max       int
	buf       bytes.Buffer
	truncated bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room < len(p) {
		c.truncated = true
		c.buf.Write(p[:max(room, 0)])
	} else {
		c.buf.Write(p)
	}
	return len(p), nil
}

func (c *capped) String() string { return c.buf.String() }
