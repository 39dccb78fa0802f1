// Package harness runs Captain's real binaries for multi-process tests: it builds captaind,
// captain-agent and captain once per test process, starts coordinator clusters on free loopback
// ports, and stops every process it started when the test ends.
package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/captain-cd/captain/integration/netns"
)

// Bins are the paths of the built binaries.
type Bins struct {
	Captaind string
	Agent    string
	Captain  string
}

// builder builds the binaries once per test process. It is package state on purpose: every
// test of a package shares one build, and Run removes it when the tests end.
var builder struct {
	once sync.Once
	dir  string
	bins Bins
	err  error
}

// Run is the TestMain of packages that use Binaries: it runs the tests, then removes the built
// binaries.
func Run(m *testing.M) int {
	code := m.Run()
	if builder.dir != "" {
		_ = os.RemoveAll(builder.dir)
	}
	return code
}

// Binaries builds the three binaries once per test process (see Run).
func Binaries(t testing.TB) Bins {
	t.Helper()
	builder.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			builder.err = err
			return
		}
		dir, err := os.MkdirTemp("", "captain-bins-")
		if err != nil {
			builder.err = err
			return
		}
		builder.dir = dir
		built := &builder.bins
		*built = Bins{Captaind: filepath.Join(dir, "captaind"), Agent: filepath.Join(dir, "captain-agent"), Captain: filepath.Join(dir, "captain")}
		for out, pkg := range map[string]string{built.Captaind: "./coordinator/cmd/captaind", built.Agent: "./agent/cmd/captain-agent", built.Captain: "./ops/cmd/captain"} {
			cmd := exec.Command("go", "build", "-o", out, pkg)
			cmd.Dir = root
			if b, err := cmd.CombinedOutput(); err != nil {
				builder.err = fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
				return
			}
		}
	})
	if builder.err != nil {
		t.Fatalf("build binaries: %v", builder.err)
	}
	return builder.bins
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the Captain module")
	}
	return filepath.Dir(mod), nil
}

// FreeAddr returns a loopback address with a port nothing listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Process is one started binary.
type Process struct {
	Name string
	Args []string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs a binary; its output is kept and printed when the test fails. The process is
// killed when the test ends.
func Start(t testing.TB, name, bin string, env []string, args ...string) *Process {
	t.Helper()
	return launch(t, name, bin, exec.Command(bin, args...), env, args)
}

// StartCmd is Start for a command the caller prepared: its Env, when set, replaces this
// process's environment instead of adding to it.
func StartCmd(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	return launch(t, name, cmd.Path, cmd, nil, cmd.Args[1:])
}

// launch starts cmd, which runs bin with args (directly or through a wrapper such as
// ip netns exec that execs bin in place), as Start describes.
func launch(t testing.TB, name, bin string, cmd *exec.Cmd, env, args []string) *Process {
	t.Helper()
	p := &Process{Name: name, Args: args, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = cmd
	if p.cmd.Env == nil {
		p.cmd.Env = os.Environ()
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- output of %s (%s %s):\n%s", name, filepath.Base(bin), strings.Join(args, " "), tail(p.log.String(), 6000))
		}
	})
	return p
}

// PID is the process ID of the started binary.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Log returns what the process printed so far.
func (p *Process) Log() string { return p.log.String() }

// Exited reports whether the process ended, and its error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits for the process to end, up to d.
func (p *Process) Wait(d time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// Signal sends sig to the process alone, as a terminal's Ctrl-C (os.Interrupt) would.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL to the process group and waits for the process.
func (p *Process) Kill() {
	if ok, _ := p.Exited(); ok {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to d, then kills.
func (p *Process) Stop(d time.Duration) {
	if ok, _ := p.Exited(); ok {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if ok, _ := p.Wait(d); !ok {
		p.Kill()
	}
}

// Node is one captaind of a cluster.
type Node struct {
	ID       string
	APIAddr  string
	RaftAddr string
	DataDir  string
	// Host is the network namespace the node runs in; nil on loopback.
	Host *netns.Host
	*Process
}

// URL is the node's API base URL.
func (n *Node) URL() string { return "http://" + n.APIAddr }

// Cluster is a set of captaind processes.
type Cluster struct {
	Bins       Bins
	Nodes      []*Node
	AdminToken string
	tokenFile  string
	t          testing.TB
	dir        string
	// extra are flags every node gets, e.g. --heartbeat-interval.
	extra []string
	// used are the addresses handed to nodes: a node binds its ports only after it started,
	// so until then the kernel may offer the same free port again.
	used map[string]bool
}

// StartCluster starts n coordinators on loopback: the first bootstraps with an initial admin
// token, the others join through it. It returns once every node reports ready.
func StartCluster(t testing.TB, bins Bins, n int) *Cluster {
	t.Helper()
	return StartClusterArgs(t, bins, n)
}

// StartClusterArgs is StartCluster with extra captaind flags for every node (now and when
// added or restarted), e.g. "--heartbeat-interval", "200ms".
func StartClusterArgs(t testing.TB, bins Bins, n int, extra ...string) *Cluster {
	t.Helper()
	c := &Cluster{Bins: bins, t: t, dir: t.TempDir(), AdminToken: "cpt_admin_" + randomHex(16), extra: extra}
	c.tokenFile = filepath.Join(c.dir, "admin.token")
	if err := os.WriteFile(c.tokenFile, []byte(c.AdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		c.AddNode(i == 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, node := range c.Nodes {
		if err := WaitReady(ctx, node.URL()); err != nil {
			t.Fatalf("node %s not ready: %v", node.ID, err)
		}
	}
	return c
}

// AddNode starts one more node: bootstrapping the cluster when first, else joining it.
func (c *Cluster) AddNode(bootstrap bool) *Node {
	c.t.Helper()
	id := fmt.Sprintf("n%d", len(c.Nodes)+1)
	node := &Node{ID: id, APIAddr: c.freeAddr(), RaftAddr: c.freeAddr(), DataDir: filepath.Join(c.dir, id)}
	c.startNode(node, bootstrap)
	c.Nodes = append(c.Nodes, node)
	return node
}

func (c *Cluster) freeAddr() string {
	if c.used == nil {
		c.used = map[string]bool{}
	}
	for {
		if a := FreeAddr(c.t); !c.used[a] {
			c.used[a] = true
			return a
		}
	}
}

func (c *Cluster) startNode(node *Node, bootstrap bool) {
	args := []string{"--node-id", node.ID, "--data-dir", node.DataDir, "--raft-addr", node.RaftAddr, "--api-addr", node.APIAddr, "--log-level", "debug"}
	if bootstrap {
		args = append(args, "--bootstrap", "--initial-admin-token-file", c.tokenFile)
	} else {
		var peers []string
		for _, other := range c.Nodes {
			if other != node {
				peers = append(peers, other.APIAddr)
			}
		}
		args = append(args, "--join", strings.Join(peers, ","), "--join-token-file", c.tokenFile)
	}
	args = append(args, c.extra...)
	if node.Host != nil {
		node.Process = StartIn(c.t, node.Host, "captaind "+node.ID, c.Bins.Captaind, nil, args...)
		return
	}
	node.Process = Start(c.t, "captaind "+node.ID, c.Bins.Captaind, nil, args...)
}

// Restart starts a stopped node again from its data directory.
func (c *Cluster) Restart(node *Node) {
	c.t.Helper()
	node.Kill()
	c.startNode(node, false)
}

// Addrs lists every node's API URL.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.URL()
	}
	return out
}

// Captain runs the CLI against the cluster as admin and returns its combined output.
func (c *Cluster) Captain(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Bins.Captain, args...)
	cmd.Env = append(os.Environ(), "CAPTAIN_ADDR="+c.Nodes[0].APIAddr, "CAPTAIN_TOKEN="+c.AdminToken)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// WaitReady polls /readyz until it answers 200.
func WaitReady(ctx context.Context, base string) error {
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last answer: %s)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Eventually polls cond until it holds or the deadline passes.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
