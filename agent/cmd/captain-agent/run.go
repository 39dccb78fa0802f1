package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/agent/agentclient"
	"github.com/captain-cd/captain/agent/config"
	"github.com/captain-cd/captain/agent/deploy"
	"github.com/captain-cd/captain/agent/hostsystemd"
	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/agent/loop"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/store"
	"github.com/captain-cd/captain/buildinfo"
)

func newRunCmd(g *globalOptions) *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: register, heartbeat, watch desired state, deploy and report",
		Long: `run is what the captain-agent systemd unit starts. It takes the state directory,
finishes any deployment a previous run left half done, registers with a coordinator
(join token) unless state_dir/identity.json exists, then heartbeats, watches the host's
desired state and deploys each pipeline's newest desired release, one at a time per
pipeline, reporting every step.

When no coordinator answers, the host keeps running what it runs and the agent retries.
SIGTERM or SIGINT stops it at the next step boundary; a restarted agent resumes there.`,
		Example: `  # As systemd runs it:
  captain-agent run --config /etc/captain/agent.yaml

  # In the foreground with debug logs:
  captain-agent run --config ./agent.yaml --log-level debug`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("log-level") && cfg.LogLevel != "" {
				g.logLevel = cfg.LogLevel
				if err := g.setup(); err != nil {
					return err
				}
			}
			return runAgent(cmd.Context(), cfg, g.log)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", config.DefaultPath, "agent config file (YAML)")
	return cmd
}

func runAgent(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	notifier := hostsystemd.Notifier{Logger: log}
	st, err := localstate.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	defer st.Close()

	var trusted manifest.TrustedKeys
	if len(cfg.TrustedKeys) > 0 {
		if trusted, err = manifest.LoadTrustedKeys(cfg.TrustedKeys...); err != nil {
			return fmt.Errorf("trusted_keys: %w", err)
		}
	} else {
		log.Warn("no trusted_keys configured: every deployment will fail signature verification; add public keys to the config")
	}
	cache := filepath.Join(cfg.StateDir, "cache")
	d := &deploy.Deployer{
		State:     st,
		Fetcher:   &bucketFetchers{cfg: cfg.S3, cache: cache, trusted: trusted, log: log},
		Restarter: hostsystemd.NewRestarter(),
		Logger:    log,
		CacheDir:  cache,
	}
	// HTTP/2 only: h2c to plain http coordinators, ALPN h2 over TLS; one connection per
	// coordinator carries the watch stream and the unary calls.
	h2 := new(http.Protocols)
	h2.SetHTTP2(true)
	h2.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: h2}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return fmt.Errorf("ca_cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("ca_cert %s: no PEM certificate in it", cfg.CACert)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	client, err := agentclient.New(cfg.Coordinators, agentclient.Credentials{}, agentclient.Options{
		HTTPClient: &http.Client{Transport: tr},
	})
	if err != nil {
		return err
	}
	a := loop.New(loop.Config{
		StateDir:      cfg.StateDir,
		RootDir:       cfg.RootDir,
		JoinTokenFile: cfg.JoinTokenFile,
		Hostname:      cfg.Hostname,
		Labels:        cfg.Labels,
		AgentVersion:  buildinfo.Version(),
		Watchdog:      hostsystemd.WatchdogInterval(),
		Notify:        notifier.Notify,
	}, client, d, st, log)
	d.OnEvent = a.OnEvent
	log.Info("agent starting", "version", buildinfo.Version(), "state_dir", cfg.StateDir, "coordinators", strings.Join(cfg.Coordinators, ","))
	start := time.Now()
	err = a.Run(ctx)
	log.Info("agent stopped", "uptime", time.Since(start).Round(time.Second))
	return err
}

// bucketFetchers keeps one verified-cache fetcher per bucket a desired app names: the bucket
// is part of each artifact reference, the endpoint and credentials are the host's.
type bucketFetchers struct {
	cfg     config.S3
	cache   string
	trusted manifest.TrustedKeys
	log     *slog.Logger

	mu sync.Mutex
	by map[string]*fetch.Fetcher
}

func (b *bucketFetchers) Fetch(ctx context.Context, ref store.Ref) (*fetch.Artifact, error) {
	f, err := b.fetcher(ref.Bucket)
	if err != nil {
		return nil, err
	}
	return f.Fetch(ctx, ref)
}

func (b *bucketFetchers) fetcher(bucket string) (*fetch.Fetcher, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f := b.by[bucket]; f != nil {
		return f, nil
	}
	s, err := store.New(store.Config{Endpoint: b.cfg.Endpoint, Region: b.cfg.Region, Bucket: bucket, Credentials: store.DefaultCredentials()})
	if err != nil {
		return nil, fmt.Errorf("artifact bucket %q: %w (check s3.endpoint in the agent config)", bucket, err)
	}
	f := &fetch.Fetcher{Store: s, CacheDir: b.cache, Trusted: b.trusted, Retry: fetch.DefaultRetry(), Logger: b.log}
	if b.by == nil {
		b.by = map[string]*fetch.Fetcher{}
	}
	b.by[bucket] = f
	return f, nil
}
