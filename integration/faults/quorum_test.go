package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captain-cd/captain/integration/harness"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// hostPicture is what an outage must not change on a host.
type hostPicture struct {
	current     string
	inode       uint64
	modTime     time.Time
	releases    []string
	activations []string
}

func (a *agent) picture() (hostPicture, error) {
	cur, err := a.current()
	if err != nil {
		return hostPicture{}, fmt.Errorf("%s: %w", a.name, err)
	}
	fi, err := os.Stat(filepath.Join(a.appRoot(), cur))
	if err != nil {
		return hostPicture{}, fmt.Errorf("%s: %w", a.name, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	p := hostPicture{current: cur, modTime: fi.ModTime(), releases: a.releaseDirs(), activations: a.activations()}
	if st != nil {
		p.inode = st.Ino
	}
	return p, nil
}

func (p hostPicture) diff(q hostPicture) string {
	var d []string
	if p.current != q.current || p.inode != q.inode || !p.modTime.Equal(q.modTime) {
		d = append(d, fmt.Sprintf("current %s (inode %d, mtime %s) became %s (inode %d, mtime %s)", p.current, p.inode, p.modTime, q.current, q.inode, q.modTime))
	}
	if !slices.Equal(p.releases, q.releases) {
		d = append(d, fmt.Sprintf("releases %v became %v", p.releases, q.releases))
	}
	if !slices.Equal(p.activations, q.activations) {
		d = append(d, fmt.Sprintf("activations %q became %q", p.activations, q.activations))
	}
	return strings.Join(d, "; ")
}

// Two of three coordinators are SIGKILLed: while the cluster has no quorum the agents keep
// running, keep their current release exactly as it was and retry; when the two come back the
// agents reconnect and their heartbeats mark every host up again, still on the same release.
func TestQuorumLostAgentsKeepTheirReleaseUntouchedAndReconnectWhenItReturns(t *testing.T) {
	f := newFleet(t, "100%", "0s", "60s")
	agents := f.startAgents("a", "b", "c")
	f.deployFirst()

	before := map[*agent]hostPicture{}
	failuresBefore := map[*agent]int{}
	for _, a := range agents {
		p, err := a.picture()
		if err != nil {
			t.Fatal(err)
		}
		before[a] = p
		failuresBefore[a] = strings.Count(a.Log(), "heartbeat failed")
	}

	leader := f.cluster.WaitLeader(5*time.Second, f.live())
	var killed []*harness.Node
	killed = append(killed, leader)
	for _, n := range f.cluster.Nodes {
		if n != leader && len(killed) < 2 {
			killed = append(killed, n)
		}
	}
	for _, n := range killed {
		n.Kill()
	}
	lostAt := time.Now()
	t.Logf("SIGKILLed %s and %s; %s is alone", killed[0].ID, killed[1].ID, f.live()[0].ID)

	// Every agent notices and keeps retrying: several failed heartbeats each (a heartbeat to
	// the lone node fails only after it waited election-wait for a leader).
	f.waitFor(30*time.Second, "every agent failing heartbeats repeatedly", func() string {
		var short []string
		for _, a := range agents {
			if n := strings.Count(a.Log(), "heartbeat failed") - failuresBefore[a]; n < 3 {
				short = append(short, fmt.Sprintf("%s %d", a.name, n))
			}
		}
		return strings.Join(short, ", ")
	})
	for _, a := range agents {
		if !strings.Contains(a.Log(), "the host keeps running its current releases and retries") {
			t.Errorf("%s did not log that it keeps its releases and retries", a.name)
		}
		if ok, err := a.Exited(); ok {
			t.Errorf("%s exited during the outage: %v", a.name, err)
		}
		p, err := a.picture()
		if err != nil {
			t.Error(err)
			continue
		}
		if d := before[a].diff(p); d != "" {
			t.Errorf("%s changed during the outage: %s", a.name, d)
		}
		if err := a.checkCurrentIs(1, "", appFiles(1)); err != nil {
			t.Error(err)
		}
	}

	for _, n := range killed {
		f.cluster.Restart(n)
	}
	restored := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, n := range killed {
		if err := harness.WaitReady(ctx, n.URL()); err != nil {
			t.Fatalf("restarted %s: %v", n.ID, err)
		}
	}
	next := f.cluster.WaitLeader(10*time.Second, f.live())
	t.Logf("quorum back with %s leading, %s after it was lost", next.ID, time.Since(lostAt).Round(time.Millisecond))

	f.waitFor(30*time.Second, "every host up again with a heartbeat after the restore", func() string {
		hosts, err := f.hostsFromLeader()
		if err != nil {
			return err.Error()
		}
		var stale []string
		for _, a := range agents {
			h := hosts[a.name]
			if h.GetLiveness() != captainv1.Liveness_LIVENESS_UP || !h.GetLastHeartbeatAt().AsTime().After(restored) {
				stale = append(stale, fmt.Sprintf("%s %s last heartbeat %s", a.name, h.GetLiveness(), h.GetLastHeartbeatAt().AsTime().Format(time.RFC3339Nano)))
			}
		}
		return strings.Join(stale, ", ")
	})
	f.waitFor(10*time.Second, "every agent saying the coordinators answer again", func() string {
		var silent []string
		for _, a := range agents {
			if !strings.Contains(a.Log(), "coordinators answer again") {
				silent = append(silent, a.name)
			}
		}
		return strings.Join(silent, ", ")
	})
	for _, a := range agents {
		p, err := a.picture()
		if err != nil {
			t.Error(err)
			continue
		}
		if d := before[a].diff(p); d != "" {
			t.Errorf("%s changed across the outage: %s", a.name, d)
		}
	}
	hosts, err := f.hostsByName()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		var cur uint64
		for _, app := range hosts[a.name].GetApps() {
			if app.GetPipeline() == pipelineName {
				cur = app.GetCurrentRelease()
			}
		}
		if cur != 1 {
			t.Errorf("%s reports release %d after the outage, want 1", a.name, cur)
		}
	}
}
