package faults

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/integration/harness"
	"github.com/captain-cd/captain/integration/netns"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// writer sets alarms named w-N through one coordinator; an alarm is a small replicated write
// whose presence every node can be asked about.
type writer struct {
	c *harness.Cluster
}

func (w writer) write(ctx context.Context, node *harness.Node, name string) error {
	client := captainv1connect.NewAlarmServiceClient(http.DefaultClient, node.URL(), w.c.Auth())
	_, err := client.SetAlarmState(ctx, connect.NewRequest(&captainv1.SetAlarmStateRequest{Name: name, State: captainv1.AlarmState_ALARM_STATE_OK, Reason: "partition test"}))
	return err
}

// names lists the alarms node itself holds (a local read, not forwarded).
func (w writer) names(ctx context.Context, node *harness.Node) (map[string]bool, error) {
	client := captainv1connect.NewAlarmServiceClient(http.DefaultClient, node.URL(), w.c.Auth())
	res, err := client.ListAlarms(ctx, connect.NewRequest(&captainv1.ListAlarmsRequest{}))
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, a := range res.Msg.GetAlarms() {
		out[a.GetName()] = true
	}
	return out, nil
}

func leaderSeenBy(ctx context.Context, c *harness.Cluster, node *harness.Node) (string, error) {
	client := captainv1connect.NewClusterServiceClient(http.DefaultClient, node.URL(), c.Auth())
	res, err := client.GetLeader(ctx, connect.NewRequest(&captainv1.GetLeaderRequest{}))
	if err != nil {
		return "", err
	}
	return res.Msg.GetLeader().GetId(), nil
}

// A partition isolating the leader (nftables DROP in the namespaces): the isolated node stops
// accepting writes, the other two elect a leader and keep accepting them, and after healing the
// old leader follows and every acknowledged write is on every node, while none of the refused
// ones is anywhere.
func TestPartitionedLeaderStopsAcceptingWritesAndNoAcknowledgedWriteIsLost(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skipf("a partition needs network namespaces: %v", err)
	}
	c, nw, _ := harness.StartClusterAuto(t, harness.Binaries(t), 3, "--election-wait", electionWait)
	w := writer{c: c}
	old := c.WaitLeader(10*time.Second, c.Nodes)
	var majority []*harness.Node
	for _, n := range c.Nodes {
		if n != old {
			majority = append(majority, n)
		}
	}

	var acked []string
	seq := 0
	writeVia := func(node *harness.Node) (string, error) {
		seq++
		name := fmt.Sprintf("w-%03d-via-%s", seq, node.ID)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := w.write(ctx, node, name)
		if err == nil {
			acked = append(acked, name)
		}
		return name, err
	}
	for range 5 {
		for _, n := range c.Nodes {
			if _, err := writeVia(n); err != nil {
				t.Fatalf("write before the partition: %v", err)
			}
		}
	}

	heal := nw.Partition(t, []*netns.Host{old.Host})
	partitioned := time.Now()
	t.Logf("partitioned leader %s from %s and %s", old.ID, majority[0].ID, majority[1].ID)

	// The isolated node is written to for as long as the majority works, from the first
	// moment of the partition: none of these may be acknowledged.
	var (
		mu       sync.Mutex
		refused  []string
		accepted []string
		codes    = map[connect.Code]int{}
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("m-%03d-via-%s", i, old.ID)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := w.write(ctx, old, name)
			cancel()
			mu.Lock()
			if err == nil {
				accepted = append(accepted, name)
			} else {
				refused = append(refused, name)
				codes[connect.CodeOf(err)]++
			}
			mu.Unlock()
		}
	})

	leader := c.WaitLeader(10*time.Second, majority)
	t.Logf("%s leads the majority %s after the partition", leader.ID, time.Since(partitioned).Round(time.Millisecond))
	// A write cut short while the two settle who leads (Unavailable, "may have been applied")
	// is neither acknowledged nor refused by the minority; the majority must take the next one.
	var ambiguous []string
	for range 10 {
		for _, n := range majority {
			deadline := time.Now().Add(10 * time.Second)
			for {
				name, err := writeVia(n)
				if err == nil {
					break
				}
				ambiguous = append(ambiguous, name)
				if connect.CodeOf(err) != connect.CodeUnavailable || time.Now().After(deadline) {
					t.Fatalf("write to the majority through %s: %v", n.ID, err)
				}
			}
		}
	}
	// The old leader must have given up leadership without hearing from anyone.
	harness.Eventually(t, 5*time.Second, "the isolated node stops calling itself leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		id, err := leaderSeenBy(ctx, c, old)
		return err == nil && id != old.ID
	})
	harness.Eventually(t, 15*time.Second, "at least two writes to the isolated node answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(refused)+len(accepted) >= 2
	})
	close(stop)
	wg.Wait()
	if len(accepted) > 0 {
		t.Errorf("the isolated node acknowledged %d writes: %v", len(accepted), accepted)
	}
	for code := range codes {
		if code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded {
			t.Errorf("writes to the isolated node failed with %v (%d times), want Unavailable or DeadlineExceeded", code, codes[code])
		}
	}
	t.Logf("isolated node refused %d writes (%v); the majority acknowledged %d, %d more were cut short", len(refused), codes, len(acked), len(ambiguous))

	heal()
	healed := time.Now()
	harness.Eventually(t, 15*time.Second, fmt.Sprintf("the old leader %s follows %s after healing", old.ID, leader.ID), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		id, err := leaderSeenBy(ctx, c, old)
		return err == nil && id != "" && id != old.ID
	})
	t.Logf("old leader follows %s after healing", time.Since(healed).Round(time.Millisecond))
	for _, n := range c.Nodes {
		if _, err := writeVia(n); err != nil {
			t.Errorf("write through %s after healing: %v", n.ID, err)
		}
	}

	for _, n := range c.Nodes {
		var missing, ghosts []string
		ok := waitUntil(15*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			have, err := w.names(ctx, n)
			if err != nil {
				missing = []string{err.Error()}
				return false
			}
			missing = slices.DeleteFunc(slices.Clone(acked), func(name string) bool { return have[name] })
			ghosts = slices.DeleteFunc(slices.Clone(refused), func(name string) bool { return !have[name] })
			return len(missing) == 0
		})
		if !ok {
			t.Errorf("%s lacks %d of %d acknowledged writes: %v", n.ID, len(missing), len(acked), missing)
		}
		if len(ghosts) > 0 {
			t.Errorf("%s holds writes the isolated node refused: %v", n.ID, ghosts)
		}
	}
}

// waitUntil polls cond until it holds or within passes, and says whether it held.
func waitUntil(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
	return true
}
