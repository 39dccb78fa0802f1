// Package daemon assembles one coordinator node: Raft, state, the Connect API, health and
// metrics endpoints, bootstrap and join. captaind and the in-process test cluster share it.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/store"
	"github.com/captain-cd/captain/buildinfo"
	"github.com/captain-cd/captain/coordinator/api"
	"github.com/captain-cd/captain/coordinator/engine"
	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/coordinator/raftnode"
	"github.com/captain-cd/captain/coordinator/ui"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

// Config is everything a node needs; captaind fills it from flags and the config file.
type Config struct {
	NodeID        string
	DataDir       string
	RaftAddr      string
	RaftAdvertise string
	APIAddr       string
	APIAdvertise  string
	// Bootstrap makes this node a one-node cluster when it has no Raft state.
	Bootstrap bool
	// Join lists API addresses of existing members to ask for admission.
	Join []string
	// JoinToken is the admin token used to join.
	JoinToken string
	// InitialAdminSecret becomes the first admin token once this node leads and no token exists.
	InitialAdminSecret string
	// TLS files; all empty for plain TCP and h2c.
	TLSCert, TLSKey, TLSCA string

	SnapshotThreshold  uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// ElectionWait bounds how long a write waits for a leader (default 5s).
	ElectionWait time.Duration
	// HeartbeatInterval and HeartbeatTTL tell agents how often to heartbeat and when a silent
	// host counts down (defaults 5s and 20s).
	HeartbeatInterval, HeartbeatTTL time.Duration

	// S3Endpoint or S3Region, when set, let the API read artifact manifests to show file
	// changes in release diffs and rollback previews; S3Credentials default to the standard
	// chain. TrustedKeyFiles, when given, must sign a manifest before it is used.
	S3Endpoint, S3Region string
	S3Credentials        *credentials.Credentials
	TrustedKeyFiles      []string
	// EnablePprof serves Go's runtime profiles at /debug/pprof/ on the API address, to admin
	// tokens only: a profile of a busy leader is how a slow path gets found in production.
	EnablePprof bool

	Logger *slog.Logger
}

// Daemon is one running coordinator node.
type Daemon struct {
	cfg     Config
	logger  *slog.Logger
	fsm     *fsm.FSM
	node    *raftnode.Node
	api     *api.Server
	metrics *metrics
	ln      net.Listener
	srv     *http.Server
	client  *http.Client
	apiAddr string
	tls     bool

	leaderTasks []func(context.Context) error

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// AddLeaderTask registers work that runs only while this node leads (the pipeline engine,
// heartbeat timers): started after the new leader's Barrier and setup, its context cancelled
// when leadership is lost. A task that fails is restarted after a second while still leading.
// Call before Start.
func (d *Daemon) AddLeaderTask(fn func(context.Context) error) {
	d.leaderTasks = append(d.leaderTasks, fn)
}

// New opens the data dir, starts Raft and listens on the API address. It fails at once when
// another process holds the data dir. Call Start to serve and to bootstrap or join.
func New(cfg Config) (*Daemon, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("node_id", cfg.NodeID)
	if cfg.Bootstrap && len(cfg.Join) > 0 {
		return nil, errors.New("--bootstrap and --join exclude each other: bootstrap the first node, join the others")
	}
	serverTLS, peerTLS, err := loadTLS(cfg)
	if err != nil {
		return nil, err
	}
	artifacts, err := artifactStore(cfg)
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, logger: logger, fsm: fsm.New(logger), metrics: newMetrics()}
	d.client = peerClient(peerTLS)

	// The data dir first: a second captaind on it must fail with that, not a port clash.
	d.node, err = raftnode.New(raftnode.Config{
		NodeID: cfg.NodeID, DataDir: cfg.DataDir, RaftAddr: cfg.RaftAddr, RaftAdvertise: cfg.RaftAdvertise,
		TLS: peerTLS, FSM: d.fsm, SnapshotThreshold: cfg.SnapshotThreshold, SnapshotInterval: cfg.SnapshotInterval,
		TrailingLogs:     cfg.TrailingLogs,
		HeartbeatTimeout: cfg.HeartbeatTimeout, ElectionTimeout: cfg.ElectionTimeout, LeaderLeaseTimeout: cfg.LeaderLeaseTimeout,
		Logger:       logger,
		ObserveApply: func(dur time.Duration) { d.metrics.apply.Observe(dur.Seconds()) },
	})
	if err != nil {
		return nil, err
	}
	d.ln, err = net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		_ = d.node.Shutdown(context.Background(), false)
		return nil, fmt.Errorf("listen for the API on %s: %w", cfg.APIAddr, err)
	}
	d.apiAddr = cfg.APIAdvertise
	if d.apiAddr == "" {
		d.apiAddr = d.ln.Addr().String()
		if tcp, ok := d.ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
			d.ln.Close()
			_ = d.node.Shutdown(context.Background(), false)
			return nil, fmt.Errorf("API address %s is not reachable by peers: set --api-advertise", cfg.APIAddr)
		}
	}
	d.metrics.registerNode(d.node)
	d.metrics.registerFSM(d.fsm)
	d.api = api.New(api.Config{
		Node: d.node, FSM: d.fsm, APIAddr: d.apiAddr, HTTPClient: d.client, TLS: serverTLS != nil,
		ElectionWait: cfg.ElectionWait, HeartbeatInterval: cfg.HeartbeatInterval, HeartbeatTTL: cfg.HeartbeatTTL, Artifacts: artifacts, Interceptors: []connect.Interceptor{d.metrics.interceptor()}, Logger: logger,
	})
	// Leader-only duties: heartbeat deadlines and the pipeline engine.
	d.AddLeaderTask(d.api.RunLiveness)
	runner := &engine.Runner{Log: logger.With("component", "engine"), State: d.fsm, Applier: d.node}
	d.AddLeaderTask(runner.Run)
	mux := http.NewServeMux()
	mux.Handle("/", d.api.Handler())
	mux.Handle(api.AlertmanagerPath, d.api.AlertmanagerHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", d.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	// The web UI calls this node's own API with the signed-in person's token, so roles and
	// forwarding to the leader apply to it as to any client.
	apiBase := "http://" + d.apiAddr
	if serverTLS != nil {
		apiBase = "https://" + d.apiAddr
	}
	webUI, err := ui.New(ui.Config{API: apiBase, HTTPClient: d.client, Secure: serverTLS != nil, Logger: logger.With("component", "ui")})
	if err != nil {
		d.ln.Close()
		_ = d.node.Shutdown(context.Background(), false)
		return nil, err
	}
	mux.Handle(ui.Prefix, webUI)
	mux.Handle("GET /ui", http.RedirectHandler(ui.Prefix, http.StatusMovedPermanently))
	if cfg.EnablePprof {
		mux.Handle("/debug/pprof/", d.api.RequireAdmin(pprofHandler()))
	}
	d.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	if serverTLS != nil {
		d.tls = true
		protocols.SetHTTP2(true)
		d.srv.TLSConfig = serverTLS
		d.ln = tls.NewListener(d.ln, serverTLS)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	d.srv.Protocols = protocols
	return d, nil
}

// Start serves the API and bootstraps or joins in the background; it returns at once.
// The goroutines it starts end with Shutdown or Kill.
func (d *Daemon) Start(ctx context.Context) error {
	ctx, d.cancel = context.WithCancel(ctx)
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		if err := d.srv.Serve(d.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logger.Error("API server stopped", "err", err)
		}
	}()
	go func() {
		defer d.wg.Done()
		d.watchLeadership(ctx)
	}()
	if d.cfg.Bootstrap {
		if err := d.node.Bootstrap(); err != nil {
			return err
		}
	}
	if len(d.cfg.Join) > 0 {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.joinLoop(ctx)
		}()
	}
	d.logger.Info("captaind started", "version", buildinfo.Version(), "api_addr", d.apiAddr, "raft_addr", d.node.Addr(),
		"tls", d.tls)
	return nil
}

// watchLeadership runs the new leader's duties while this node leads.
func (d *Daemon) watchLeadership(ctx context.Context) {
	duties := &leaderRun{}
	defer duties.stop()
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-d.node.LeaderChanges():
			duties.stop()
			if !leader {
				d.logger.Info("lost leadership")
				continue
			}
			d.logger.Info("gained leadership", "term", d.node.Term())
			duties.start(ctx, d.leaderDuties)
		}
	}
}

// leaderRun owns the goroutine doing leader duties for one term.
type leaderRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (l *leaderRun) start(ctx context.Context, fn func(context.Context)) {
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		fn(ctx)
	}()
}

func (l *leaderRun) stop() {
	if l.cancel != nil {
		l.cancel()
		<-l.done
		l.cancel, l.done = nil, nil
	}
}

func (d *Daemon) leaderDuties(ctx context.Context) {
	for {
		err := d.api.OnLeadership(ctx, d.cfg.InitialAdminSecret)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		d.logger.Warn("leader setup failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	var wg sync.WaitGroup
	for i, task := range d.leaderTasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := task(ctx)
				if ctx.Err() != nil {
					return
				}
				d.logger.Error("leader task stopped; restarting", "task", i, "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	wg.Wait()
}

// joinLoop asks the given members to admit this node until one does.
func (d *Daemon) joinLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		for _, addr := range d.cfg.Join {
			err := d.joinVia(ctx, addr)
			if err == nil {
				d.logger.Info("joined the cluster", "via", addr)
				return
			}
			if ctx.Err() != nil {
				return
			}
			d.logger.Warn("join attempt failed", "via", addr, "err", err)
			var ce *connect.Error
			if errors.As(err, &ce) && (ce.Code() == connect.CodeUnauthenticated || ce.Code() == connect.CodePermissionDenied) {
				d.logger.Warn("join refused; still retrying: the token is unknown here or not an admin token; pass an admin token with CAPTAIN_TOKEN or --join-token-file")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (d *Daemon) joinVia(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	base := addr
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "http://" + addr
		if d.tls {
			base = "https://" + addr
		}
	}
	client := captainv1connect.NewClusterServiceClient(d.client, base)
	req := connect.NewRequest(&captainv1.JoinRequest{NodeId: d.cfg.NodeID, RaftAddress: d.node.Addr(), ApiAddress: d.apiAddr})
	req.Header().Set("Authorization", "Bearer "+d.cfg.JoinToken)
	_, err := client.Join(ctx, req)
	return err
}

// readyz is ready when a leader is known and this node applied everything committed.
func (d *Daemon) readyz(w http.ResponseWriter, _ *http.Request) {
	id, _ := d.node.Leader()
	applied, commit := d.node.AppliedIndex(), d.node.CommitIndex()
	switch {
	case id == "":
		http.Error(w, "not ready: no leader", http.StatusServiceUnavailable)
	case applied < commit:
		http.Error(w, fmt.Sprintf("not ready: applied index %d behind commit index %d", applied, commit), http.StatusServiceUnavailable)
	default:
		fmt.Fprintf(w, "ready: leader %s, applied index %d\n", id, applied)
	}
}

// Node returns the Raft node.
func (d *Daemon) Node() *raftnode.Node { return d.node }

// FSM returns the state machine.
func (d *Daemon) FSM() *fsm.FSM { return d.fsm }

// APIAddr is the advertised API address.
func (d *Daemon) APIAddr() string { return d.apiAddr }

// BaseURL is the API's URL.
func (d *Daemon) BaseURL() string {
	if d.tls {
		return "https://" + d.apiAddr
	}
	return "http://" + d.apiAddr
}

// HTTPClient returns a client that speaks to peers' APIs (h2c, or TLS with the cluster CA).
func (d *Daemon) HTTPClient() *http.Client { return d.client }

// Shutdown stops serving, hands leadership over when leading (transfer), and stops Raft.
func (d *Daemon) Shutdown(ctx context.Context, transfer bool) error {
	var err error
	d.stopOnce.Do(func() {
		if transfer {
			// Hand leadership over first, then drain requests in flight (they can still be
			// forwarded to the new leader), and stop Raft last.
			if d.node.IsLeader() {
				if servers, serr := d.node.Servers(); serr == nil && len(servers) > 1 {
					if _, terr := d.node.TransferLeadership(ctx, ""); terr != nil {
						d.logger.Warn("leadership transfer before shutdown failed", "err", terr)
					}
				}
			}
			_ = d.srv.Shutdown(ctx)
			err = d.node.Shutdown(ctx, false)
		} else {
			_ = d.srv.Close()
			err = d.node.Shutdown(ctx, false)
		}
		if d.cancel != nil {
			d.cancel()
		}
		d.wg.Wait()
		d.logger.Info("captaind stopped")
	})
	return err
}

// Kill stops the node abruptly, as close to SIGKILL as a process can do to itself: no
// leadership transfer, connections dropped.
func (d *Daemon) Kill() { _ = d.Shutdown(context.Background(), false) }

func loadTLS(cfg Config) (server, peer *tls.Config, err error) {
	if cfg.TLSCert == "" && cfg.TLSKey == "" && cfg.TLSCA == "" {
		return nil, nil, nil
	}
	if cfg.TLSCert == "" || cfg.TLSKey == "" {
		return nil, nil, errors.New("TLS needs both --tls-cert and --tls-key")
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("load TLS key pair %s, %s: %w", cfg.TLSCert, cfg.TLSKey, err)
	}
	pool := x509.NewCertPool()
	if cfg.TLSCA != "" {
		pem, err := os.ReadFile(cfg.TLSCA)
		if err != nil {
			return nil, nil, fmt.Errorf("read --tls-ca: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--tls-ca %s: no PEM certificates found", cfg.TLSCA)
		}
	} else if pool, err = x509.SystemCertPool(); err != nil {
		return nil, nil, fmt.Errorf("system CA pool: %w (pass --tls-ca)", err)
	}
	server = &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert},
		ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven, NextProtos: []string{"h2", "http/1.1"},
	}
	peer = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool}
	return server, peer, nil
}

// peerClient speaks HTTP/2 to peers: h2c without TLS so streaming RPCs work, TLS otherwise.
func peerClient(peer *tls.Config) *http.Client {
	protocols := new(http.Protocols)
	t := &http.Transport{Protocols: protocols, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 8}
	if peer != nil {
		protocols.SetHTTP2(true)
		t.TLSClientConfig = peer
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	return &http.Client{Transport: t}
}

// artifactStore turns the S3 settings into the API's manifest source; nil when none is set.
func artifactStore(cfg Config) (*api.ArtifactStore, error) {
	if cfg.S3Endpoint == "" && cfg.S3Region == "" {
		if len(cfg.TrustedKeyFiles) > 0 {
			return nil, errors.New("--trusted-key is for reading artifact manifests: also give --s3-endpoint or --s3-region")
		}
		return nil, nil
	}
	a := &api.ArtifactStore{Endpoint: cfg.S3Endpoint, Region: cfg.S3Region, Credentials: cfg.S3Credentials}
	// Clients are made per bucket when a release names one; a malformed endpoint fails here, at
	// start, rather than in every preview. store.New does not contact the server.
	if _, err := store.New(store.Config{Endpoint: a.Endpoint, Region: a.Region, Bucket: "any", Credentials: credentials.NewStaticV4("", "", "")}); err != nil {
		return nil, fmt.Errorf("--s3-endpoint: %w", err)
	}
	if len(cfg.TrustedKeyFiles) > 0 {
		keys, err := manifest.LoadTrustedKeys(cfg.TrustedKeyFiles...)
		if err != nil {
			return nil, fmt.Errorf("--trusted-key: %w", err)
		}
		a.TrustedKeys = keys
	}
	return a, nil
}

// pprofHandler serves net/http/pprof on a mux of its own, not on http.DefaultServeMux.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
