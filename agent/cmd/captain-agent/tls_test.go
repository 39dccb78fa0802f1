package main

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/agent/config"
	"github.com/captain-cd/captain/coordinator/clustertest"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

type tlsCoordinator struct {
	captainv1connect.UnimplementedAgentServiceHandler
	registered atomic.Int32
}

func (c *tlsCoordinator) Register(context.Context, *connect.Request[captainv1.RegisterRequest]) (*connect.Response[captainv1.RegisterResponse], error) {
	c.registered.Add(1)
	return connect.NewResponse(&captainv1.RegisterResponse{HostId: "h-00000000000a", HostSecret: "s"}), nil
}

func (c *tlsCoordinator) Watch(ctx context.Context, _ *connect.Request[captainv1.WatchRequest], _ *connect.ServerStream[captainv1.WatchResponse]) error {
	<-ctx.Done()
	return nil
}

func (c *tlsCoordinator) Heartbeat(context.Context, *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
	return connect.NewResponse(&captainv1.HeartbeatResponse{}), nil
}

// An agent reaches https coordinators whose certificate comes from a private CA named in
// ca_cert, and refuses them without it.
func TestAgentTrustsCoordinatorsSignedByItsCACert(t *testing.T) {
	ca := clustertest.NewCA(t, "coordinators")
	certFile, keyFile := ca.Issue(t, "coordinator")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	coord := &tlsCoordinator{}
	mux := http.NewServeMux()
	mux.Handle(captainv1connect.NewAgentServiceHandler(coord))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ErrorLog: log.New(io.Discard, "", 0)} // the refused handshakes are the point of the first run
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP2(true)
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	dir := t.TempDir()
	token := filepath.Join(dir, "join-token")
	if err := os.WriteFile(token, []byte("cpt_x_y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runWith := func(caCert string, wait time.Duration) error {
		cfg := &config.Config{
			Coordinators: []string{"https://" + ln.Addr().String()}, JoinTokenFile: token,
			StateDir: filepath.Join(t.TempDir(), "state"), CACert: caCert, LogLevel: "info",
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- runAgent(ctx, cfg, slog.New(slog.DiscardHandler)) }()
		deadline := time.Now().Add(wait)
		for coord.registered.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		return <-done
	}
	if err := runWith("", 2*time.Second); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("without ca_cert the agent ended with %v", err)
	}
	if n := coord.registered.Load(); n != 0 {
		t.Fatalf("registered %d times without trusting the CA; a TLS check is missing", n)
	}
	if err := runWith(ca.File, 10*time.Second); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("agent ended with %v", err)
	}
	if coord.registered.Load() != 1 {
		t.Fatalf("registered %d times with ca_cert, want 1", coord.registered.Load())
	}
}
