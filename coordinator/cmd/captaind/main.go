// Command captaind runs one Captain coordinator node.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/captain-cd/captain/buildinfo"
	"github.com/captain-cd/captain/coordinator/daemon"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "captaind:", err)
		os.Exit(1)
	}
}

type options struct {
	cfg                daemon.Config
	configFile         string
	adminTokenFile     string
	joinTokenFile      string
	logLevel           string
	logFormat          string
	shutdownTimeout    time.Duration
	heartbeatTimeout   time.Duration
	electionTimeout    time.Duration
	leaderLeaseTimeout time.Duration
}

func newCommand() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "captaind --node-id ID --data-dir DIR --raft-addr HOST:PORT --api-addr HOST:PORT [--bootstrap | --join ADDR,...]",
		Short: "Run one Captain coordinator node",
		Long: `captaind runs one node of the Captain coordinator cluster: Raft, the replicated state and
the Connect API (Connect, gRPC, gRPC-Web), with /healthz, /readyz and /metrics on the API address.

Start the first node with --bootstrap and --initial-admin-token-file; start the others with
--join pointing at any member's API address and an admin token (CAPTAIN_TOKEN or
--join-token-file). A node restarted from its data dir needs neither.

Every flag may also be set in a YAML file given with --config, using the flag names as keys;
flags on the command line win.`,
		Example: `  # first node
  captaind --node-id c1 --data-dir /var/lib/captain --raft-addr 10.0.0.1:7401 --api-addr 10.0.0.1:7400 \
    --bootstrap --initial-admin-token-file /etc/captain/admin-token
  # further nodes
  CAPTAIN_TOKEN=$(cat /etc/captain/admin-token) captaind --node-id c2 --data-dir /var/lib/captain \
    --raft-addr 10.0.0.2:7401 --api-addr 10.0.0.2:7400 --join 10.0.0.1:7400
  # from a file
  captaind --config /etc/captain/captaind.yaml`,
		Version:       buildinfo.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.configFile != "" {
				if err := applyConfigFile(cmd.Flags(), o.configFile); err != nil {
					return err
				}
			}
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configFile, "config", "", "YAML file with flag values (keys are flag names)")
	f.StringVar(&o.cfg.NodeID, "node-id", "", "stable Raft server ID of this node (required)")
	f.StringVar(&o.cfg.DataDir, "data-dir", "", "directory for the Raft log and snapshots (required)")
	f.StringVar(&o.cfg.RaftAddr, "raft-addr", "127.0.0.1:7401", "Raft transport listen address")
	f.StringVar(&o.cfg.RaftAdvertise, "raft-advertise", "", "Raft address peers dial, when it differs from --raft-addr")
	f.StringVar(&o.cfg.APIAddr, "api-addr", "127.0.0.1:7400", "API listen address (Connect, gRPC, health, metrics)")
	f.StringVar(&o.cfg.APIAdvertise, "api-advertise", "", "API address peers use, when it differs from --api-addr")
	f.BoolVar(&o.cfg.Bootstrap, "bootstrap", false, "start a new cluster with this node (ignored when the data dir has Raft state)")
	f.StringSliceVar(&o.cfg.Join, "join", nil, "API addresses of existing members to join through (comma-separated)")
	f.StringVar(&o.adminTokenFile, "initial-admin-token-file", "", "file whose content becomes the first admin token's secret")
	f.StringVar(&o.joinTokenFile, "join-token-file", "", "file holding an admin token for --join (default: $CAPTAIN_TOKEN)")
	f.StringVar(&o.cfg.TLSCert, "tls-cert", "", "PEM certificate for the API and the Raft transport")
	f.StringVar(&o.cfg.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	f.StringVar(&o.cfg.TLSCA, "tls-ca", "", "PEM CA that signs every node's certificate (mutual TLS between nodes)")
	f.Uint64Var(&o.cfg.SnapshotThreshold, "snapshot-threshold", 8192, "Raft entries between snapshots")
	f.DurationVar(&o.cfg.SnapshotInterval, "snapshot-interval", 2*time.Minute, "how often to check whether a snapshot is due")
	f.Uint64Var(&o.cfg.TrailingLogs, "snapshot-trailing-logs", 10240, "entries kept in the log after a snapshot, for followers that fall behind")
	f.DurationVar(&o.heartbeatTimeout, "raft-heartbeat-timeout", 500*time.Millisecond, "follower heartbeat timeout")
	f.DurationVar(&o.electionTimeout, "raft-election-timeout", 500*time.Millisecond, "candidate election timeout")
	f.DurationVar(&o.leaderLeaseTimeout, "raft-leader-lease-timeout", 250*time.Millisecond, "leader lease timeout")
	f.DurationVar(&o.cfg.ElectionWait, "election-wait", 5*time.Second, "how long a write waits for a leader before failing with Unavailable")
	f.DurationVar(&o.cfg.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "how often agents heartbeat")
	f.DurationVar(&o.cfg.HeartbeatTTL, "heartbeat-ttl", 20*time.Second, "how long a host may go without a heartbeat before it counts down")
	f.StringVar(&o.cfg.S3Endpoint, "s3-endpoint", "", "`URL` (http(s)://host:port) of the S3-compatible artifact store whose manifests give the file changes in release diffs and rollback previews; credentials from the standard chain (AWS_* env vars, shared files, instance role); without it or --s3-region those show commits only")
	f.StringVar(&o.cfg.S3Region, "s3-region", "", "`REGION` of the artifact store (without --s3-endpoint: AWS S3 in that region)")
	f.StringSliceVar(&o.cfg.TrustedKeyFiles, "trusted-key", nil, "public key `FILE` (captain keygen) that must have signed a manifest before the coordinator uses it (repeatable); without any, manifests are read as stored, unverified")
	f.BoolVar(&o.cfg.EnablePprof, "enable-pprof", false, "serve Go runtime profiles at /debug/pprof/ on the API address (admin tokens only)")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "text or json")
	return cmd
}

// applyConfigFile sets every flag named in the YAML file that the command line left unset.
func applyConfigFile(fs *pflag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read --config: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	for key, v := range values {
		fl := fs.Lookup(key)
		if fl == nil || key == "config" {
			return fmt.Errorf("--config %s: unknown key %q; keys are flag names such as node-id, data-dir, join", path, key)
		}
		if fl.Changed {
			continue
		}
		var s string
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			s = strings.Join(parts, ",")
		case float64:
			// YAML numbers arrive as float64; write integers without an exponent.
			s = strings.TrimSuffix(fmt.Sprintf("%f", x), ".000000")
		default:
			s = fmt.Sprint(x)
		}
		if err := fs.Set(key, s); err != nil {
			return fmt.Errorf("--config %s: %s: %w", path, key, err)
		}
	}
	return nil
}

func readSecret(path, what string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s %s is empty", what, path)
	}
	return s, nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}

func run(parent context.Context, o *options) error {
	logger, err := newLogger(o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	cfg := o.cfg
	if cfg.NodeID == "" || cfg.DataDir == "" {
		return errors.New("--node-id and --data-dir are required (see captaind --help)")
	}
	cfg.Logger = logger
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = o.heartbeatTimeout, o.electionTimeout, o.leaderLeaseTimeout
	if o.adminTokenFile != "" {
		if cfg.InitialAdminSecret, err = readSecret(o.adminTokenFile, "--initial-admin-token-file"); err != nil {
			return err
		}
	}
	if len(cfg.Join) > 0 {
		cfg.JoinToken = os.Getenv("CAPTAIN_TOKEN")
		if o.joinTokenFile != "" {
			if cfg.JoinToken, err = readSecret(o.joinTokenFile, "--join-token-file"); err != nil {
				return err
			}
		}
		if cfg.JoinToken == "" {
			return errors.New("--join needs an admin token: set CAPTAIN_TOKEN or --join-token-file")
		}
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		d.Kill()
		return err
	}
	<-ctx.Done()
	logger.Info("shutting down", "reason", context.Cause(ctx))
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	return d.Shutdown(sctx, true)
}
