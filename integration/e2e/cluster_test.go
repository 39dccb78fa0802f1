package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/captain-cd/captain/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Run(m)) }

func TestThreeProcessClusterFormsAndServesTheCLI(t *testing.T) {
	bins := harness.Binaries(t)
	c := harness.StartCluster(t, bins, 3)
	for _, n := range c.Nodes {
		resp, err := http.Get(n.URL() + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("node %s /healthz: %v %v", n.ID, resp, err)
		}
		_ = resp.Body.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.Captain(ctx, "cluster", "peers", "-o", "json")
	if err != nil {
		t.Fatalf("captain cluster peers: %v\n%s", err, out)
	}
	var peers struct {
		Peers []struct {
			ID     string `json:"id"`
			Leader bool   `json:"leader"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		t.Fatalf("peers output is not JSON: %v\n%s", err, out)
	}
	leaders := 0
	for _, p := range peers.Peers {
		if p.Leader {
			leaders++
		}
	}
	if len(peers.Peers) != 3 || leaders != 1 {
		t.Fatalf("peers = %+v, want 3 with one leader", peers.Peers)
	}
}
