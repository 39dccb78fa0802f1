package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/agent/config"
	"github.com/captain-cd/captain/agent/hostsystemd"
	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/artifacts/manifest"
)

const (
	binaryName     = "captain-agent"
	configName     = "agent.yaml"
	joinTokenName  = "join-token"
	trustedKeysDir = "trusted-keys"
)

type installOptions struct {
	coordinators []string
	joinToken    string
	labels       map[string]string
	binaryDir    string
	configDir    string
	stateDir     string
	unitDir      string
	trustedKeys  []string
	s3Endpoint   string
	s3Region     string
	hostname     string
	timeout      time.Duration
}

func newInstallCmd(g *globalOptions) *cobra.Command {
	o := &installOptions{}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install this binary as the captain-agent systemd service and start it",
		Long: `install makes this host a Captain host. It copies this binary to --binary-dir,
copies the join token and trusted keys into --config-dir (so the files you pass may be
deleted afterwards), writes --config-dir/agent.yaml (0600) and the captain-agent.service
unit, then over D-Bus reloads systemd, enables the unit and (re)starts it, and waits
until the agent is active: registered with a coordinator, local state loaded.

Running it again updates binary, config and unit and restarts the agent; the host keeps
its identity and releases. Needs root.`,
		Example: `  captain token create --role agent --name fleet > /tmp/join-token
  captain-agent install \
    --coordinator http://10.0.0.1:7400,http://10.0.0.2:7400,http://10.0.0.3:7400 \
    --join-token-file /tmp/join-token \
    --labels region=us-east-1,az=use1-az1 \
    --trusted-key /tmp/release.pub \
    --s3-endpoint https://s3.us-east-1.amazonaws.com --s3-region us-east-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, g)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.coordinators, "coordinator", nil, "coordinator API URL; repeat or separate with commas (required)")
	f.StringVar(&o.joinToken, "join-token-file", "", "file holding a token with role agent (required)")
	f.StringToStringVar(&o.labels, "labels", nil, "host labels, k=v,k=v (environments select hosts by them)")
	f.StringVar(&o.binaryDir, "binary-dir", "/usr/local/bin", "where the agent binary goes")
	f.StringVar(&o.configDir, "config-dir", "/etc/captain", "where agent.yaml, the join token and trusted keys go")
	f.StringVar(&o.stateDir, "state-dir", localstate.DefaultDir, "agent state directory")
	f.StringVar(&o.unitDir, "unit-dir", "/etc/systemd/system", "where the unit file goes")
	f.StringArrayVar(&o.trustedKeys, "trusted-key", nil, "public key file trusted to sign artifacts; repeatable")
	f.StringVar(&o.s3Endpoint, "s3-endpoint", "", "S3 endpoint URL (empty: AWS S3)")
	f.StringVar(&o.s3Region, "s3-region", "", "S3 region")
	f.StringVar(&o.hostname, "hostname", "", "hostname reported to the coordinators (default: the kernel's)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the agent to become active")
	return cmd
}

func (o *installOptions) run(cmd *cobra.Command, g *globalOptions) error {
	out := cmd.OutOrStdout()
	if len(o.coordinators) == 0 {
		return errors.New("--coordinator is required: the URL of at least one coordinator, e.g. http://10.0.0.1:7400")
	}
	if o.joinToken == "" {
		return errors.New("--join-token-file is required: a file holding a token with role agent (captain token create --role agent)")
	}
	for _, d := range []struct{ flag, v string }{{"--binary-dir", o.binaryDir}, {"--config-dir", o.configDir}, {"--state-dir", o.stateDir}, {"--unit-dir", o.unitDir}} {
		if !filepath.IsAbs(d.v) {
			return fmt.Errorf("%s %q must be an absolute path", d.flag, d.v)
		}
	}
	token, err := os.ReadFile(o.joinToken)
	if err != nil {
		return fmt.Errorf("--join-token-file: %w", err)
	}
	if strings.TrimSpace(string(token)) == "" {
		return fmt.Errorf("--join-token-file %s is empty", o.joinToken)
	}
	if len(o.trustedKeys) > 0 {
		if _, err := manifest.LoadTrustedKeys(o.trustedKeys...); err != nil {
			return fmt.Errorf("--trusted-key: %w", err)
		}
	}
	cfg := &config.Config{
		Coordinators:  o.coordinators,
		JoinTokenFile: filepath.Join(o.configDir, joinTokenName),
		Labels:        o.labels,
		StateDir:      o.stateDir,
		S3:            config.S3{Endpoint: o.s3Endpoint, Region: o.s3Region},
		Hostname:      o.hostname,
		LogLevel:      g.logLevel,
	}
	for _, k := range o.trustedKeys {
		cfg.TrustedKeys = append(cfg.TrustedKeys, filepath.Join(o.configDir, trustedKeysDir, filepath.Base(k)))
	}
	// Check the whole config before touching the host; the hostname default is filled at run.
	check := *cfg
	if check.Hostname == "" {
		check.Hostname = "-"
	}
	if err := check.Validate(); err != nil {
		return fmt.Errorf("the config would be invalid: %w", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("install needs root: it writes /etc, installs a systemd unit and the agent restarts units")
	}

	binary := filepath.Join(o.binaryDir, binaryName)
	if err := installBinary(binary); err != nil {
		return err
	}
	fmt.Fprintln(out, "installed", binary)
	if err := hostsystemd.WriteFileAtomic(cfg.JoinTokenFile, token, 0o600); err != nil {
		return err
	}
	for i, k := range o.trustedKeys {
		b, err := os.ReadFile(k)
		if err != nil {
			return fmt.Errorf("--trusted-key: %w", err)
		}
		if err := hostsystemd.WriteFileAtomic(cfg.TrustedKeys[i], b, 0o644); err != nil {
			return err
		}
	}
	cfgBytes, err := cfg.Marshal()
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(o.configDir, configName)
	if err := hostsystemd.WriteFileAtomic(cfgPath, cfgBytes, 0o600); err != nil {
		return err
	}
	fmt.Fprintln(out, "wrote", cfgPath)
	unitPath := filepath.Join(o.unitDir, hostsystemd.AgentUnit)
	if err := hostsystemd.WriteFileAtomic(unitPath, hostsystemd.AgentUnitFile(binary, cfgPath), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(out, "wrote", unitPath)
	fmt.Fprintf(out, "starting %s (waiting up to %s for it to register and become active)\n", hostsystemd.AgentUnit, o.timeout)
	if err := hostsystemd.EnableAndStart(cmd.Context(), hostsystemd.AgentUnit, o.timeout); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s is active; see `captain-agent status` and `journalctl -u captain-agent`\n", hostsystemd.AgentUnit)
	g.log.Debug("installed", "binary", binary, "config", cfgPath, "unit", unitPath)
	return nil
}

// installBinary copies the running executable to dst atomically, so a running agent keeps
// its old file and the unit starts a complete new one.
func installBinary(dst string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	if s, err := filepath.EvalSymlinks(self); err == nil {
		self = s
	}
	if d, err := filepath.EvalSymlinks(dst); err == nil && d == self {
		return nil
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return fmt.Errorf("read this binary: %w", err)
	}
	return hostsystemd.WriteFileAtomic(dst, b, 0o755)
}

type uninstallOptions struct {
	binaryDir string
	configDir string
	stateDir  string
	unitDir   string
	purge     bool
}

func newUninstallCmd(g *globalOptions) *cobra.Command {
	o := &uninstallOptions{}
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and remove the captain-agent service, binary and config",
		Long: `uninstall stops and disables captain-agent.service over D-Bus, removes the unit file,
reloads systemd, and removes the agent binary and its config (agent.yaml, join token,
trusted keys). Deployed releases, the apps' current symlinks and the agent's state (host
identity, artifact cache) stay, so a later install picks up where this host was.
--purge also removes the state directory; it never removes app roots.

Running it again, or on a host without the agent, does nothing and says so.`,
		Example: `  captain-agent uninstall
  captain-agent uninstall --purge`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, g)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.binaryDir, "binary-dir", "/usr/local/bin", "where install put the agent binary")
	f.StringVar(&o.configDir, "config-dir", "/etc/captain", "where install put agent.yaml")
	f.StringVar(&o.stateDir, "state-dir", "", "agent state directory (default: state_dir of agent.yaml, else "+localstate.DefaultDir+")")
	f.StringVar(&o.unitDir, "unit-dir", "/etc/systemd/system", "where install put the unit file")
	f.BoolVar(&o.purge, "purge", false, "also remove the state directory (host identity, local state, artifact cache)")
	return cmd
}

func (o *uninstallOptions) run(cmd *cobra.Command, g *globalOptions) error {
	out := cmd.OutOrStdout()
	if os.Geteuid() != 0 {
		return errors.New("uninstall needs root: it stops a systemd unit and removes files under /etc")
	}
	cfgPath := filepath.Join(o.configDir, configName)
	stateDir := o.stateDir
	if stateDir == "" {
		stateDir = localstate.DefaultDir
		if cfg, err := config.Load(cfgPath); err == nil {
			stateDir = cfg.StateDir
		} else if !errors.Is(err, fs.ErrNotExist) {
			g.log.Warn("agent config unreadable; using the default state dir", "err", err, "state_dir", stateDir)
		}
	}
	did, err := hostsystemd.StopAndDisable(cmd.Context(), hostsystemd.AgentUnit, filepath.Join(o.unitDir, hostsystemd.AgentUnit))
	for _, d := range did {
		fmt.Fprintln(out, d)
	}
	if err != nil {
		return err
	}
	remove := []string{
		filepath.Join(o.binaryDir, binaryName),
		cfgPath,
		filepath.Join(o.configDir, joinTokenName),
		filepath.Join(o.configDir, trustedKeysDir),
	}
	for _, p := range remove {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		fmt.Fprintln(out, "removed", p)
		did = append(did, p)
	}
	// The config dir goes only when nothing else lives there.
	if err := os.Remove(o.configDir); err == nil {
		fmt.Fprintln(out, "removed", o.configDir)
	}
	if o.purge {
		if err := purgeState(stateDir); err != nil {
			return err
		}
		if _, err := os.Stat(stateDir); err == nil {
			return fmt.Errorf("state dir %s still exists after purge", stateDir)
		}
		fmt.Fprintln(out, "removed", stateDir, "(--purge)")
		did = append(did, stateDir)
	} else if _, err := os.Stat(stateDir); err == nil {
		fmt.Fprintf(out, "kept %s (host identity, local state, artifact cache) and deployed releases; --purge removes the state dir\n", stateDir)
	}
	if len(did) == 0 {
		fmt.Fprintln(out, "captain-agent is not installed here; nothing to do")
	}
	return nil
}

// purgeState removes the state dir unless an app root lives inside it: releases are never
// removed by uninstall.
func purgeState(dir string) error {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) == "/" {
		return fmt.Errorf("refusing to purge state dir %q: not an absolute path below /", dir)
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	st, err := localstate.Load(dir)
	if err != nil {
		return fmt.Errorf("read state before purge: %w; remove %s by hand if that is what you want", err, dir)
	}
	for _, name := range st.Pipelines() {
		root := st.Apps[name].AppRoot
		if rel, err := filepath.Rel(dir, root); err == nil && !strings.HasPrefix(rel, "..") {
			return fmt.Errorf("refusing to purge %s: app root %s of pipeline %s lives inside it", dir, root, name)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("purge state dir: %w", err)
	}
	return nil
}
