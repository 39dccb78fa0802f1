package netns_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/captain-cd/captain/integration/netns"
)

// helperEnv makes the test binary act as a tiny network tool inside a namespace: "listen ADDR"
// answers every connection with the host's name, "dial ADDR" prints what the peer answered.
const helperEnv = "CAPTAIN_NETNS_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

func helper(mode string) int {
	verb, addr, _ := strings.Cut(mode, " ")
	switch verb {
	case "listen":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("listening")
		for {
			c, err := l.Accept()
			if err != nil {
				return 1
			}
			_, _ = io.WriteString(c, os.Getenv("HOST_NAME")+"\n")
			_ = c.Close()
		}
	case "dial":
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			fmt.Println("unreachable")
			return 0
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Println("unreachable")
			return 0
		}
		fmt.Print(line)
		return 0
	}
	return 2
}

const port = "7070"

// listen starts a listener inside h that answers with h's name.
func listen(t *testing.T, h *netns.Host) {
	t.Helper()
	cmd := h.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=listen "+net.JoinHostPort(h.IP, port), "HOST_NAME="+h.Name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "listening\n" {
		t.Fatalf("listener in %s: %q %v", h.Name, line, err)
	}
}

// dialFrom says which host answered at to's address when dialled from inside from.
func dialFrom(t *testing.T, from, to *netns.Host) string {
	t.Helper()
	cmd := from.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=dial "+net.JoinHostPort(to.IP, port))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dial from %s: %v", from.Name, err)
	}
	return strings.TrimSpace(string(out))
}

// dialFromRoot is dialFrom for the test process itself.
func dialFromRoot(to *netns.Host) string {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(to.IP, port), time.Second)
	if err != nil {
		return "unreachable"
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "unreachable"
	}
	return strings.TrimSpace(line)
}

// reach maps "from->to" to whether to answered.
func reach(t *testing.T, hosts []*netns.Host) map[string]bool {
	t.Helper()
	got := map[string]bool{}
	for _, from := range hosts {
		for _, to := range hosts {
			if from != to {
				got[from.Name+"->"+to.Name] = dialFrom(t, from, to) == to.Name
			}
		}
		got["root->"+from.Name] = dialFromRoot(from) == from.Name
	}
	return got
}

func TestPartitionCutsOnlyTheSideFromTheRestAndHealRestoresIt(t *testing.T) {
	n := netns.New(t)
	a, b, c := n.AddHost(t, "a"), n.AddHost(t, "b"), n.AddHost(t, "c")
	hosts := []*netns.Host{a, b, c}
	for _, h := range hosts {
		listen(t, h)
	}
	all := map[string]bool{"a->b": true, "a->c": true, "b->a": true, "b->c": true, "c->a": true, "c->b": true, "root->a": true, "root->b": true, "root->c": true}
	aCut := map[string]bool{"a->b": false, "a->c": false, "b->a": false, "b->c": true, "c->a": false, "c->b": true, "root->a": true, "root->b": true, "root->c": true}

	check := func(when string, want map[string]bool) {
		t.Helper()
		got := reach(t, hosts)
		for k, w := range want {
			if got[k] != w {
				t.Errorf("%s: %s reachable = %v, want %v", when, k, got[k], w)
			}
		}
	}
	check("before any partition", all)
	heal := n.Partition(t, []*netns.Host{a})
	check("a partitioned", aCut)
	heal()
	check("healed", all)
	heal()
	check("healed twice", all)

	n.Partition(t, []*netns.Host{a})
	n.Partition(t, []*netns.Host{c})
	check("a and c partitioned", map[string]bool{"a->b": false, "b->c": false, "a->c": false, "root->a": true, "root->c": true})
	n.HealAll(t)
	check("after HealAll", all)
}

func TestHostsGetDistinctNamespacesAndNetsGetDistinctSubnets(t *testing.T) {
	n1, n2 := netns.New(t), netns.New(t)
	h1, h2, h3 := n1.AddHost(t, "x"), n1.AddHost(t, "y"), n2.AddHost(t, "x")
	if h1.NS == h2.NS || h1.NS == h3.NS || h1.IP == h2.IP {
		t.Fatalf("hosts share a namespace or address: %+v %+v %+v", h1, h2, h3)
	}
	subnet := func(ip string) string { return ip[:strings.LastIndex(ip, ".")] }
	if subnet(h1.IP) != subnet(h2.IP) || subnet(h1.IP) == subnet(h3.IP) {
		t.Fatalf("want one subnet per net: %s %s %s", h1.IP, h2.IP, h3.IP)
	}
	out, err := h1.Command(context.Background(), "ip", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), h1.IP+"/24") {
		t.Fatalf("inside %s: %v %s", h1.NS, err, out)
	}
}

func TestCleanupRemovesNamespacesAndBridge(t *testing.T) {
	var ns, bridgeIP string
	t.Run("net", func(t *testing.T) {
		n := netns.New(t)
		h := n.AddHost(t, "h")
		ns, bridgeIP = h.NS, h.IP
	})
	if ns == "" {
		t.Skip("the subtest made no net")
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), ns) {
		t.Errorf("namespace %s left behind: %s", ns, out)
	}
	prefix := bridgeIP[:strings.LastIndex(bridgeIP, ".")] + ".1/24"
	addrs, err := exec.Command("ip", "-o", "addr").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(addrs), prefix) {
		t.Errorf("bridge address %s left behind", prefix)
	}
}
