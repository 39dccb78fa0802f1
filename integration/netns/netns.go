// Package netns puts processes on their own hosts: one network namespace per host, all joined to a
// Linux bridge in the root namespace, so tests can cut links with nftables DROP rules inside the
// namespaces.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

const (
	ipBin  = "ip"
	nftBin = "/usr/sbin/nft"
)

// netCounter numbers the nets of this test process. It is package state on purpose: names of
// bridges, veths and namespaces are global to the machine, so they are made unique from the
// process ID and this counter, whichever test asks.
var netCounter atomic.Uint32

// Available reports why namespaced hosts cannot be made here, or nil when they can: it needs
// root, the ip tool and nft.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath(ipBin); err != nil {
		return fmt.Errorf("no ip tool (iproute2): %w", err)
	}
	if _, err := exec.LookPath(nftBin); err != nil {
		return fmt.Errorf("no nft (nftables): %w", err)
	}
	if out, err := exec.Command(ipBin, "netns", "list").CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns list: %w: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command(nftBin, "list", "tables").CombinedOutput(); err != nil {
		return fmt.Errorf("nft list tables: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Net is one bridge and its subnet; every host of the net has one address on it, and the root
// namespace (the test process) has the first.
type Net struct {
	id     string // short and unique on the machine while the net lives
	bridge string
	prefix string // the subnet's first three octets, e.g. "10.213.7"
	table  string // the nftables table each namespace gets, named for the test

	mu         sync.Mutex
	hosts      []*Host
	partitions map[int]*partition
	nextPart   int
}

// Host is one network namespace with a veth on the net's bridge.
type Host struct {
	Name string
	NS   string
	IP   string

	net  *Net
	veth string // the root side of the veth pair
}

// partition is the set of chains one Partition call added, by namespace.
type partition struct {
	chains map[*Host]string
}

// New makes a fresh bridge with its own subnet, removed when the test ends. It skips the test
// when namespaces are not available.
func New(t testing.TB) *Net {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	seq := netCounter.Add(1)
	pid, count := strconv.FormatUint(uint64(os.Getpid()), 36), strconv.FormatUint(uint64(seq), 36)
	// The counter is padded so that pid 1 with net 11 and pid 11 with net 1 differ.
	id := pid + strings.Repeat("0", max(0, 2-len(count))) + count
	n := &Net{id: id, bridge: "cb" + id, table: tableName(t.Name()), partitions: map[int]*partition{}}
	prefix, err := freeSubnet(id)
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	n.prefix = prefix
	if err := run(ipBin, "link", "add", n.bridge, "type", "bridge"); err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() { n.remove(t) })
	for _, args := range [][]string{
		{"addr", "add", prefix + ".1/24", "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	} {
		if err := run(ipBin, args...); err != nil {
			t.Fatalf("netns: %v", err)
		}
	}
	return n
}

// freeSubnet picks a /24 in 10.0.0.0/8 from the net's id that no interface of the root
// namespace uses, so nets of concurrent test processes and the machine's own networks do not
// overlap.
func freeSubnet(id string) (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	seed := h.Sum32()
	for i := uint32(0); i < 4096; i++ {
		v := seed + i*7919
		prefix := fmt.Sprintf("10.%d.%d", 128+(v>>8)%112, v%256)
		_, subnet, _ := net.ParseCIDR(prefix + ".0/24")
		taken := slices.ContainsFunc(addrs, func(a net.Addr) bool {
			ipn, ok := a.(*net.IPNet)
			return ok && (subnet.Contains(ipn.IP) || ipn.Contains(subnet.IP))
		})
		if !taken {
			return prefix, nil
		}
	}
	return "", errors.New("no free /24 in 10.128.0.0/9")
}

// tableName turns a test name into an nftables identifier.
func tableName(test string) string {
	var b strings.Builder
	b.WriteString("captain_")
	for _, r := range strings.ToLower(test) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteRune('_')
		}
	}
	s := b.String()
	if len(s) > 60 {
		h := fnv.New32a()
		_, _ = h.Write([]byte(s))
		s = fmt.Sprintf("%s_%08x", s[:50], h.Sum32())
	}
	return s
}

// AddHost makes a namespace with loopback up and one veth on the bridge, and an nftables table
// for partitions.
func (n *Net) AddHost(t testing.TB, name string) *Host {
	t.Helper()
	n.mu.Lock()
	idx := len(n.hosts)
	if idx >= 250 {
		n.mu.Unlock()
		t.Fatalf("netns: a net holds at most 250 hosts")
	}
	h := &Host{Name: name, NS: fmt.Sprintf("captain-%s-%d", n.id, idx), IP: fmt.Sprintf("%s.%d", n.prefix, idx+2), net: n, veth: fmt.Sprintf("cv%sh%d", n.id, idx)}
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	if err := run(ipBin, "netns", "add", h.NS); err != nil {
		t.Fatalf("netns: %v", err)
	}
	steps := [][]string{
		{"link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"link", "set", h.veth, "master", n.bridge},
		{"link", "set", h.veth, "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
	}
	for _, args := range steps {
		if err := run(ipBin, args...); err != nil {
			t.Fatalf("netns: host %s: %v", name, err)
		}
	}
	if err := h.nft("add table inet " + n.table); err != nil {
		t.Fatalf("netns: host %s: %v", name, err)
	}
	return h
}

// Command runs bin inside the host's namespace. ip netns exec execs bin in place, so the
// command's PID is bin's.
func (h *Host) Command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, ipBin, append([]string{"netns", "exec", h.NS, bin}, args...)...)
}

func (h *Host) nft(script string) error {
	cmd := exec.Command(ipBin, "netns", "exec", h.NS, nftBin, "-f", "-")
	cmd.Stdin = strings.NewReader(script + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s\nscript:\n%s", h.NS, err, bytes.TrimSpace(out), script)
	}
	return nil
}

// Partition drops all traffic between side and every other host of the net, in both
// directions, with rules inside the namespaces; the root namespace still reaches every host.
// heal removes exactly those rules and may be called more than once.
func (n *Net) Partition(t testing.TB, side []*Host) (heal func()) {
	t.Helper()
	n.mu.Lock()
	inSide := map[*Host]bool{}
	for _, h := range side {
		if h.net != n {
			n.mu.Unlock()
			t.Fatalf("netns: host %s is not on this net", h.Name)
		}
		inSide[h] = true
	}
	var rest []*Host
	for _, h := range n.hosts {
		if !inSide[h] {
			rest = append(rest, h)
		}
	}
	k := n.nextPart
	n.nextPart++
	p := &partition{chains: map[*Host]string{}}
	n.partitions[k] = p
	n.mu.Unlock()

	ips := func(hs []*Host) string {
		var s []string
		for _, h := range hs {
			s = append(s, h.IP)
		}
		return strings.Join(s, ", ")
	}
	cut := func(h *Host, others []*Host) {
		if len(others) == 0 {
			return
		}
		chain := fmt.Sprintf("partition%d", k)
		in, out := chain+"_in", chain+"_out"
		script := fmt.Sprintf(`add chain inet %[1]s %[2]s { type filter hook input priority -10; policy accept; }
add rule inet %[1]s %[2]s ip saddr { %[4]s } drop
add chain inet %[1]s %[3]s { type filter hook output priority -10; policy accept; }
add rule inet %[1]s %[3]s ip daddr { %[4]s } drop`, n.table, in, out, ips(others))
		if err := h.nft(script); err != nil {
			t.Fatalf("netns: partition: %v", err)
		}
		n.mu.Lock()
		p.chains[h] = chain
		n.mu.Unlock()
	}
	for _, h := range side {
		cut(h, rest)
	}
	for _, h := range rest {
		cut(h, side)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if err := n.heal(k); err != nil {
				t.Errorf("netns: heal: %v", err)
			}
		})
	}
}

func (n *Net) heal(k int) error {
	n.mu.Lock()
	p := n.partitions[k]
	delete(n.partitions, k)
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	var errs []error
	for h, chain := range p.chains {
		script := fmt.Sprintf("delete chain inet %[1]s %[2]s_in\ndelete chain inet %[1]s %[2]s_out", n.table, chain)
		if err := h.nft(script); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// HealAll removes every partition of the net.
func (n *Net) HealAll(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	var ks []int
	for k := range n.partitions {
		ks = append(ks, k)
	}
	n.mu.Unlock()
	slices.Sort(ks)
	for _, k := range ks {
		if err := n.heal(k); err != nil {
			t.Errorf("netns: heal all: %v", err)
		}
	}
}

// remove deletes the namespaces (their veths and nftables tables go with them) and the bridge.
// Processes still inside a namespace keep it alive, so tests stop them first: cleanups run in
// reverse order, and processes are started after the net.
func (n *Net) remove(t testing.TB) {
	n.mu.Lock()
	hosts := slices.Clone(n.hosts)
	n.mu.Unlock()
	for _, h := range hosts {
		if err := run(ipBin, "netns", "del", h.NS); err != nil && !strings.Contains(err.Error(), "No such file") {
			t.Errorf("netns: %v", err)
		}
		// The veth normally dies with its namespace's end; delete it in case AddHost stopped
		// half-way.
		_ = exec.Command(ipBin, "link", "del", h.veth).Run()
	}
	if err := run(ipBin, "link", "del", n.bridge); err != nil {
		t.Errorf("netns: %v", err)
	}
}

func run(bin string, args ...string) error {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
