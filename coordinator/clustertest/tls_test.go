package clustertest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/daemon"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestTLSClusterFormsAndRejectsNodesWithoutTheCA(t *testing.T) {
	ca := NewCA(t, "captain-test-ca")
	c := New(t, 3, Options{Configure: func(i int, cfg *daemon.Config) {
		cfg.TLSCert, cfg.TLSKey = ca.Issue(t, cfg.NodeID)
		cfg.TLSCA = ca.File
	}})
	leader := c.Leader(5 * time.Second)
	follower := c.Followers()[0]

	// The CLI's TLS client (CA file, no client certificate) writes through a follower.
	cfg := &clientcfg.Config{Addr: follower.APIAddr, Token: AdminSecret, CACert: ca.File}
	hc, err := cfg.HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	cl := NewClients(hc, cfg.BaseURL(), AdminSecret)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Pipeline.ApplyPipeline(ctx, connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: spec("web")})); err != nil {
		t.Fatalf("apply through TLS follower %s (leader %s): %v", follower.ID, leader.ID, err)
	}

	// A node holding a certificate from another CA cannot open a Raft connection.
	rogue := NewCA(t, "rogue-ca")
	certFile, keyFile := rogue.Issue(t, "rogue")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(ca.File)
	trustsCluster := x509.NewCertPool()
	trustsCluster.AppendCertsFromPEM(pem)
	for name, conf := range map[string]*tls.Config{
		"rogue cert":     {Certificates: []tls.Certificate{cert}, RootCAs: trustsCluster},
		"no client cert": {RootCAs: trustsCluster},
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", leader.RaftAddr, conf)
			if err == nil {
				// TLS 1.3 reports a rejected client certificate on the first read.
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = conn.Write([]byte{0})
				if err == nil {
					_, err = conn.Read(make([]byte, 1))
				}
				conn.Close()
			}
			if err == nil {
				t.Fatal("raft transport accepted a peer without a certificate from the cluster CA")
			}
		})
	}

	// A token alone does not let a caller add a voter: the node certificate is required.
	_, err = cl.Cluster.Join(ctx, connect.NewRequest(&captainv1.JoinRequest{NodeId: "x", RaftAddress: "127.0.0.1:1", ApiAddress: "127.0.0.1:2"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("join with an admin token but no node certificate: %v, want PermissionDenied", err)
	}

	// And a daemon that trusts the cluster CA but holds a rogue certificate never joins.
	rogueCfg := c.config(&Node{ID: "rogue", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0"})
	rogueCfg.Join, rogueCfg.JoinToken = []string{leader.APIAddr}, AdminSecret
	rogueCfg.TLSCert, rogueCfg.TLSKey, rogueCfg.TLSCA = certFile, keyFile, ca.File
	rc, err := daemon.New(rogueCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Kill()
	if err := rc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The join loop keeps failing its TLS handshake; after several retries the configuration
	// still holds exactly the three members.
	if err := WaitFor(2*time.Second, func() error {
		servers, err := leader.Daemon().Node().Servers()
		if err != nil {
			return err
		}
		for _, s := range servers {
			if s.ID == "rogue" {
				return nil
			}
		}
		return errNotJoined
	}); err != errNotJoined {
		t.Fatalf("rogue node joined (or the check failed: %v)", err)
	}
}

var errNotJoined = &notJoined{}

type notJoined struct{}

func (*notJoined) Error() string { return "rogue not in configuration" }
