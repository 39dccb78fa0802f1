// Package devcmd is `captain dev`: a whole Captain installation on one machine — three
// coordinators, an S3-compatible store (versitygw, or one embedded for development) and eight
// agents — that deploys three releases of a sample app through a pipeline while it prints
// what happens, then stays up for the other commands.
package devcmd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// host is one agent of the demo fleet and the labels that put it in an environment.
type host struct {
	name   string
	labels map[string]string
}

// demoFleet is a one-box and three zones in us-east-1 and two zones in us-west-2, matching the
// selectors of ops/examples/pipeline-dev.yaml.
func demoFleet() []host {
	return []host{
		{"use1-onebox-1", map[string]string{"region": "us-east-1", "az": "use1-az1", "role": "onebox"}},
		{"use1-az1-1", map[string]string{"region": "us-east-1", "az": "use1-az1", "role": "fleet"}},
		{"use1-az2-1", map[string]string{"region": "us-east-1", "az": "use1-az2", "role": "fleet"}},
		{"use1-az3-1", map[string]string{"region": "us-east-1", "az": "use1-az3", "role": "fleet"}},
		{"usw2-az1-1", map[string]string{"region": "us-west-2", "az": "usw2-az1"}},
		{"usw2-az1-2", map[string]string{"region": "us-west-2", "az": "usw2-az1"}},
		{"usw2-az2-1", map[string]string{"region": "us-west-2", "az": "usw2-az2"}},
		{"usw2-az2-2", map[string]string{"region": "us-west-2", "az": "usw2-az2"}},
	}
}

const (
	pipelineName = "web"
	bucket       = "captain-artifacts"
	// appRootInPipeline is deploy.app_root of pipeline-dev.yaml; each agent's root_dir
	// prefixes it.
	appRootInPipeline = "srv/web"
	// s3Region is the region every client signs with and the store expects.
	s3Region = "us-east-1"
)

type options struct {
	dir      string
	keep     bool
	noWait   bool
	pipeline string
	s3       string
	timeout  time.Duration
}

// The artifact stores `captain dev` can run, chosen with --s3.
const (
	s3Auto      = "auto"
	s3Versitygw = "versitygw"
	s3Embedded  = "embedded"
)

// NewDevCommand returns `captain dev`.
func NewDevCommand(cfg *clientcfg.Config) *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a whole Captain on this machine and watch three releases go through a pipeline",
		Long: `captain dev starts, on this machine and with nothing installed but Go:

  - a 3-node coordinator cluster (captaind) on loopback,
  - an S3-compatible artifact store: the gateway versitygw when it is installed (on PATH or in
    $(go env GOPATH)/bin), else an S3 endpoint embedded in this process that keeps objects in
    memory, for development only (--s3 picks one),
  - 8 agents, each its own process with its own app root: a one-box and three zones in
    us-east-1, two zones in us-west-2.

It applies ops/examples/pipeline-dev.yaml (pipeline.yaml's shape with bake times of seconds),
builds the sample app ops/examples/app three times and pushes three releases: two good ones and
a third whose health check fails, which the one-box rolls back by itself before blocking the
stage. It prints a timeline of every stage as it moves, then the web UI's URL, a line
"export CAPTAIN_ADDR=… CAPTAIN_TOKEN=…" to paste into another terminal (and one with the
artifact store's endpoint and keys for captain artifact), and keeps everything running until
Ctrl-C. Then it stops every process it started and removes its state unless --keep.

captain dev runs from a checkout of Captain (it needs the sample app's source). It uses
captaind and captain-agent from its own directory (make build puts them there) and builds
them with go build otherwise.`,
		Example: `  make demo                            # make build, then bin/captain dev
  bin/captain dev --dir /tmp/demo --keep  # keep logs, Raft data and app roots after Ctrl-C
  bin/captain dev --no-wait               # stop after the three releases (tests, CI)
  bin/captain dev --s3 embedded           # the in-process S3 even when versitygw is installed

  # in another terminal, while it runs:
  export CAPTAIN_ADDR=127.0.0.1:PORT CAPTAIN_TOKEN=cpt_admin_...   # printed by captain dev
  captain status web
  captain history --pipeline web --env use1-onebox
  captain promotions enable --pipeline web --stage use1-onebox`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// With output piped (`make demo | tee demo.log`), a Ctrl-C ends the reader too, and
			// the next line written would kill this process by SIGPIPE in the middle of its
			// teardown, leaving every child running. Catching SIGPIPE turns that into a write
			// error, ignored; unlike ignoring the signal, catching it is not inherited by the
			// children.
			pipe := make(chan os.Signal, 1)
			signal.Notify(pipe, syscall.SIGPIPE)
			defer signal.Stop(pipe)
			return run(ctx, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "put all state (binaries, logs, Raft data, app roots) under DIR, which must be empty or absent (default: a new temp dir)")
	f.BoolVar(&o.keep, "keep", false, "keep the state directory when stopping")
	f.BoolVar(&o.noWait, "no-wait", false, "stop everything once the three releases are through instead of waiting for Ctrl-C")
	f.StringVar(&o.pipeline, "pipeline", "", "pipeline file to apply (default: ops/examples/pipeline-dev.yaml of the checkout)")
	f.StringVar(&o.s3, "s3", s3Auto, "artifact store: versitygw, embedded (in this process, in memory, for development only) or auto (versitygw when installed, else embedded)")
	f.DurationVar(&o.timeout, "scripted-timeout", 3*time.Minute, "give up when the scripted part takes longer")
	_ = cfg // the demo makes its own cluster; it prints the address and token for the other commands
	return cmd
}

// demo is one run of `captain dev`.
type demo struct {
	o        *options
	out      io.Writer
	dir      string
	checkout string
	self     string // this executable: the captain CLI the demo drives like CI would
	captaind string
	agent    string
	procs    procs
	start    time.Time
	// built is how long building captaind and captain-agent took, when they were not next to
	// this executable.
	built time.Duration

	adminToken string
	apiAddrs   []string
	s3Endpoint string
	s3Env      []string
	// embedded is the in-process S3 when versitygw is not used, and its log file.
	embedded    *embeddedS3
	embeddedLog *os.File
	signKey     string
	appPorts    map[string]string
	appRoots    map[string]string
	fleet       []host
}

func run(ctx context.Context, o *options, out io.Writer) (err error) {
	d := &demo{o: o, out: out, start: time.Now(), appPorts: map[string]string{}, appRoots: map[string]string{}, fleet: demoFleet()}
	// What is missing is found out before anything starts.
	if err := d.findCheckout(); err != nil {
		return err
	}
	versitygw, why, err := chooseS3(o.s3)
	if err != nil {
		return err
	}
	if err := d.makeDir(); err != nil {
		return err
	}
	defer func() {
		if cerr := d.teardown(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	scripted, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if why != "" {
		d.say("%s", why)
	}
	if err := d.scripted(scripted, versitygw); err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C during the script: stop quietly
		}
		return err
	}
	d.printAccess(ctx)
	if o.noWait {
		return nil
	}
	d.say("running until Ctrl-C")
	<-ctx.Done()
	fmt.Fprintln(out)
	return nil
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (d *demo) makeDir() error {
	if d.o.dir == "" {
		dir, err := os.MkdirTemp("", "captain-dev-")
		if err != nil {
			return fmt.Errorf("create state dir: %w", err)
		}
		d.dir = dir
		return nil
	}
	dir, err := filepath.Abs(d.o.dir)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create --dir: %w", err)
		}
	case err != nil:
		return fmt.Errorf("--dir: %w", err)
	case len(entries) > 0:
		// A kept run's Raft data names ports of processes long gone; starting over is simpler
		// and honest.
		return fmt.Errorf("--dir %s is not empty (state of an earlier run?); remove it or pick another directory", dir)
	}
	d.dir = dir
	return nil
}

// scripted is everything up to the end of the third release.
func (d *demo) scripted(ctx context.Context, versitygw string) error {
	d.say("captain dev: state under %s (%s)", d.dir, map[bool]string{true: "kept on exit: --keep", false: "removed on exit; --keep keeps it"}[d.o.keep])
	builds := d.buildReleases(ctx)
	if err := d.findBinaries(ctx); err != nil {
		return err
	}
	if err := d.startS3(ctx, versitygw); err != nil {
		return err
	}
	if err := d.startCluster(ctx); err != nil {
		return err
	}
	c, err := newClient(d.apiAddrs[0], d.adminToken)
	if err != nil {
		return err
	}
	d.signKey = filepath.Join(d.dir, "release.key")
	if _, err := d.captain(ctx, nil, "keygen", "--out", d.signKey); err != nil {
		return err
	}
	pipelineFile := d.o.pipeline
	if pipelineFile == "" {
		pipelineFile = filepath.Join(d.checkout, "ops", "examples", "pipeline-dev.yaml")
	}
	if _, err := d.captain(ctx, nil, "pipeline", "apply", "-f", pipelineFile); err != nil {
		return err
	}
	d.say("pipeline %s applied from %s", pipelineName, pipelineFile)
	if err := d.startAgents(ctx); err != nil {
		return err
	}
	if err := d.waitFor(ctx, 30*time.Second, "every agent registered", func(ctx context.Context) (string, error) {
		cur, err := c.currentReleases(ctx)
		if err != nil {
			return "", err
		}
		if len(cur) < len(d.fleet) {
			return fmt.Sprintf("%d of %d agents registered", len(cur), len(d.fleet)), nil
		}
		return "", nil
	}); err != nil {
		return err
	}
	d.say("%d agents registered; setup took %s", len(d.fleet), since(d.start))

	tl := newTimeline(d.out, c)
	tlCtx, stopTimeline := context.WithCancel(ctx)
	tlDone := make(chan struct{})
	go func() {
		defer close(tlDone)
		tl.run(tlCtx)
	}()
	defer func() {
		stopTimeline()
		<-tlDone
	}()

	for n := 1; n <= 3; n++ {
		var b build
		select {
		case b = <-builds[n-1]:
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.err != nil {
			return b.err
		}
		if err := d.release(ctx, n, b); err != nil {
			return err
		}
		if n < 3 {
			if err := d.waitFor(ctx, 60*time.Second, fmt.Sprintf("release #%d on every host", n), c.everyHostOn(d.fleet, uint64(n))); err != nil {
				return err
			}
			tl.flush(ctx)
			d.say("release #%d is on all %d hosts (%s since start)", n, len(d.fleet), since(d.start))
			continue
		}
		if err := d.waitFor(ctx, 60*time.Second, "release #3 rolled back on the one-box and the stage blocked", c.rolledBackAndBlocked(3, 2)); err != nil {
			return err
		}
	}
	tl.flush(ctx)
	stopTimeline()
	<-tlDone
	return d.summary(ctx, c)
}

// findCheckout finds the Captain source tree: the sample app and the dev pipeline live there.
// The current directory's module comes first, then the module holding this executable
// (bin/captain of a checkout).
func (d *demo) findCheckout() error {
	var candidates []string
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		if mod := string(trimSpace(out)); mod != "" && mod != os.DevNull {
			candidates = append(candidates, filepath.Dir(mod))
		}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this executable: %w", err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return fmt.Errorf("find this executable: %w", err)
	}
	d.self = self
	candidates = append(candidates, filepath.Dir(filepath.Dir(self)))
	for _, c := range candidates {
		b, err := os.ReadFile(filepath.Join(c, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/captain-cd/captain\n") {
			d.checkout = c
			return nil
		}
	}
	return errors.New("captain dev runs from a checkout of github.com/captain-cd/captain (it builds the sample app ops/examples/app); cd into one and run `make demo`")
}

// findBinaries uses captaind and captain-agent next to this executable, else builds them.
func (d *demo) findBinaries(ctx context.Context) error {
	dir := filepath.Dir(d.self)
	d.captaind, d.agent = filepath.Join(dir, "captaind"), filepath.Join(dir, "captain-agent")
	if isExecutable(d.captaind) && isExecutable(d.agent) {
		d.say("binaries: captaind and captain-agent next to %s", d.self)
		return nil
	}
	bin := filepath.Join(d.dir, "bin")
	d.say("binaries: no captaind and captain-agent next to %s; building them into %s", d.self, bin)
	d.captaind, d.agent = filepath.Join(bin, "captaind"), filepath.Join(bin, "captain-agent")
	started := time.Now()
	defer func() { d.built = time.Since(started).Round(100 * time.Millisecond) }()
	for out, pkg := range map[string]string{d.captaind: "./coordinator/cmd/captaind", d.agent: "./agent/cmd/captain-agent"} {
		if err := goBuild(ctx, d.checkout, out, pkg, "", nil); err != nil {
			return err
		}
	}
	return nil
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

func goBuild(ctx context.Context, dir, out, pkg, ldflags string, env []string) error {
	args := []string{"build", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// chooseS3 resolves --s3 to the versitygw binary to run, or "" for the embedded store, and
// says why when auto falls back to the embedded one.
func chooseS3(mode string) (versitygw, why string, err error) {
	switch mode {
	case s3Embedded:
		return "", "", nil
	case s3Versitygw:
		bin, err := lookVersitygw()
		return bin, "", err
	case s3Auto:
		bin, err := lookVersitygw()
		if err != nil {
			return "", "versitygw is not installed (neither on PATH nor in $(go env GOPATH)/bin): using the embedded S3 instead", nil
		}
		return bin, "", nil
	}
	return "", "", fmt.Errorf("--s3 %q: want %s, %s or %s", mode, s3Auto, s3Versitygw, s3Embedded)
}

// startS3 starts the artifact store: versitygw when bin is set, else the embedded one.
func (d *demo) startS3(ctx context.Context, bin string) error {
	access, secret := "captaindev", randomHex(16)
	d.s3Env = []string{"AWS_ACCESS_KEY_ID=" + access, "AWS_SECRET_ACCESS_KEY=" + secret, "AWS_REGION=" + s3Region}
	if bin == "" {
		return d.startEmbeddedS3(s3Auth{access: access, secret: secret, region: s3Region})
	}
	return d.startVersitygw(ctx, bin, access, secret)
}

func (d *demo) startEmbeddedS3(auth s3Auth) error {
	logPath := filepath.Join(d.dir, "s3.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open the embedded S3's log: %w", err)
	}
	e, err := startEmbeddedS3(auth, bucket, slog.New(slog.NewTextHandler(logf, nil)))
	if err != nil {
		_ = logf.Close()
		return err
	}
	d.embedded, d.embeddedLog = e, logf
	d.s3Endpoint = e.endpoint
	d.say("artifact store: EMBEDDED S3 on %s, bucket %s, in this process and in memory (log %s)", d.s3Endpoint, bucket, logPath)
	d.say("  the embedded S3 is for development only, not for production: objects are gone when captain dev stops;")
	d.say("  for a real gateway: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
	return nil
}

func (d *demo) startVersitygw(ctx context.Context, bin, access, secret string) error {
	root := filepath.Join(d.dir, "s3")
	// versitygw's posix backend serves each top-level directory as a bucket.
	if err := os.MkdirAll(filepath.Join(root, bucket), 0o755); err != nil {
		return fmt.Errorf("create bucket dir: %w", err)
	}
	addrs, err := freeAddrs(1)
	if err != nil {
		return err
	}
	d.s3Endpoint = "http://" + addrs[0]
	p, err := d.procs.start("versitygw", filepath.Join(d.dir, "versitygw.log"), nil, bin,
		"--port", addrs[0], "--access", access, "--secret", secret, "--quiet", "posix", root)
	if err != nil {
		return err
	}
	// Any HTTP answer (403 to an anonymous request) means it serves.
	if err := d.waitFor(ctx, 15*time.Second, "versitygw answering", func(ctx context.Context) (string, error) {
		if p.exited() {
			return "", p.exitErr()
		}
		return httpAnswer(ctx, d.s3Endpoint+"/", false), nil
	}); err != nil {
		return err
	}
	d.say("artifact store: versitygw %s on %s, bucket %s (data in %s)", bin, d.s3Endpoint, bucket, root)
	return nil
}

// httpAnswer is "" once url answers at all (or with 200 when ok200), else why not.
func httpAnswer(ctx context.Context, url string, ok200 bool) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	_ = resp.Body.Close()
	if ok200 && resp.StatusCode != http.StatusOK {
		return resp.Status
	}
	return ""
}

func (d *demo) startCluster(ctx context.Context) error {
	d.adminToken = "cpt_admin_" + randomHex(24)
	tokenFile := filepath.Join(d.dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte(d.adminToken+"\n"), 0o600); err != nil {
		return fmt.Errorf("write admin token: %w", err)
	}
	addrs, err := freeAddrs(6)
	if err != nil {
		return err
	}
	// A captaind that can read the artifact store shows file changes in rollback previews
	// and release diffs; older builds lack the flag.
	var s3Args []string
	var s3Env []string
	if help, _ := exec.CommandContext(ctx, d.captaind, "--help").CombinedOutput(); strings.Contains(string(help), "--s3-endpoint") {
		s3Args, s3Env = []string{"--s3-endpoint", d.s3Endpoint, "--s3-region", s3Region}, d.s3Env
	}
	var nodes []*proc
	for i := range 3 {
		id := fmt.Sprintf("n%d", i+1)
		api, raft := addrs[2*i], addrs[2*i+1]
		args := []string{"--node-id", id, "--data-dir", filepath.Join(d.dir, id), "--raft-addr", raft, "--api-addr", api,
			// Agents heartbeat and report at demo speed; the defaults suit real fleets.
			"--heartbeat-interval", "500ms", "--heartbeat-ttl", "5s"}
		args = append(args, s3Args...)
		if i == 0 {
			args = append(args, "--bootstrap", "--initial-admin-token-file", tokenFile)
		} else {
			args = append(args, "--join", strings.Join(d.apiAddrs, ","), "--join-token-file", tokenFile)
		}
		p, err := d.procs.start("captaind "+id, filepath.Join(d.dir, id+".log"), s3Env, d.captaind, args...)
		if err != nil {
			return err
		}
		nodes = append(nodes, p)
		d.apiAddrs = append(d.apiAddrs, api)
		d.say("coordinator %s: API http://%s, Raft %s, log %s", id, api, raft, p.log)
	}
	for i, p := range nodes {
		if err := d.waitFor(ctx, 30*time.Second, fmt.Sprintf("coordinator n%d ready", i+1), func(ctx context.Context) (string, error) {
			if p.exited() {
				return "", p.exitErr()
			}
			return httpAnswer(ctx, "http://"+d.apiAddrs[i]+"/readyz", true), nil
		}); err != nil {
			return err
		}
	}
	d.say("3-node coordinator cluster ready")
	return nil
}

func (d *demo) startAgents(ctx context.Context) error {
	out, err := d.captain(ctx, nil, "token", "create", "--role", "agent", "--name", "captain-dev", "-o", "json")
	if err != nil {
		return err
	}
	var tok struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Secret == "" {
		return fmt.Errorf("captain token create -o json gave no secret (%v): %s", err, out)
	}
	tokenFile := filepath.Join(d.dir, "join.token")
	if err := os.WriteFile(tokenFile, []byte(tok.Secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("write join token: %w", err)
	}
	ports, err := freeAddrs(len(d.fleet))
	if err != nil {
		return err
	}
	coords := make([]string, len(d.apiAddrs))
	for i, a := range d.apiAddrs {
		coords[i] = fmt.Sprintf("%q", "http://"+a)
	}
	for i, h := range d.fleet {
		base := filepath.Join(d.dir, "agents", h.name)
		root := filepath.Join(base, "root")
		appRoot := filepath.Join(root, appRootInPipeline)
		if err := os.MkdirAll(appRoot, 0o755); err != nil {
			return fmt.Errorf("create app root: %w", err)
		}
		// The sample app reads its port from here: eight copies share this machine.
		_, port, _ := strings.Cut(ports[i], ":")
		if err := os.WriteFile(filepath.Join(appRoot, "port"), []byte(port+"\n"), 0o644); err != nil {
			return fmt.Errorf("write port file: %w", err)
		}
		d.appPorts[h.name], d.appRoots[h.name] = port, appRoot
		labels, err := json.Marshal(h.labels)
		if err != nil {
			return err
		}
		cfg := fmt.Sprintf(`coordinators: [%s]
join_token_file: %q
labels: %s
state_dir: %q
root_dir: %q
trusted_keys: [%q]
s3: {endpoint: %q, region: %s}
hostname: %s
`, strings.Join(coords, ", "), tokenFile, labels, filepath.Join(base, "state"), root, d.signKey+".pub", d.s3Endpoint, s3Region, h.name)
		cfgPath := filepath.Join(base, "agent.yaml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return fmt.Errorf("write agent config: %w", err)
		}
		if _, err := d.procs.start("agent "+h.name, filepath.Join(base, "agent.log"), d.s3Env, d.agent, "run", "--config", cfgPath); err != nil {
			return err
		}
	}
	d.say("started %d agents (configs and logs under %s): %s", len(d.fleet), filepath.Join(d.dir, "agents"), d.hostList())
	return nil
}

func (d *demo) hostList() string {
	var names []string
	for _, h := range d.fleet {
		names = append(names, h.name)
	}
	return strings.Join(names, " ")
}

// captain runs this executable as the CLI against the demo cluster, as CI would.
func (d *demo) captain(ctx context.Context, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.self, args...)
	cmd.Env = append(append(os.Environ(), "CAPTAIN_ADDR="+d.apiAddrs[0], "CAPTAIN_TOKEN="+d.adminToken), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("captain %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

type build struct {
	dir     string
	version string
	err     error
}

// buildReleases builds the sample app three times, in the background while the cluster starts.
// Release 3 leaves out config.json, so its server answers /healthz with 503.
func (d *demo) buildReleases(ctx context.Context) [3]chan build {
	var chans [3]chan build
	for i := range chans {
		chans[i] = make(chan build, 1)
	}
	go func() {
		for i := range 3 {
			n := i + 1
			b := build{dir: filepath.Join(d.dir, "builds", fmt.Sprintf("web-%d", n)), version: fmt.Sprintf("1.0.%d", n)}
			b.err = d.buildApp(ctx, b, n != 3)
			chans[i] <- b
		}
	}()
	return chans
}

func (d *demo) buildApp(ctx context.Context, b build, withConfig bool) error {
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return fmt.Errorf("create build dir: %w", err)
	}
	if err := goBuild(ctx, d.checkout, filepath.Join(b.dir, "web"), "./ops/examples/app", "-X main.version="+b.version, nil); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "VERSION"), []byte(b.version+"\n"), 0o644); err != nil {
		return err
	}
	if !withConfig {
		return nil
	}
	return os.WriteFile(filepath.Join(b.dir, "config.json"), []byte(`{"greeting": "hello"}`+"\n"), 0o644)
}

func (d *demo) release(ctx context.Context, n int, b build) error {
	// Fake but stable commits: release n contains commit n, so `captain where` has answers.
	commit := strings.Repeat(fmt.Sprintf("%02x", 0xc0+n), 20)
	pushed, err := d.captain(ctx, d.s3Env, "artifact", "push", b.dir, "--pipeline", pipelineName, "--commit", commit,
		"--sign-key", d.signKey, "--bucket", bucket, "--s3-endpoint", d.s3Endpoint, "-o", "json")
	if err != nil {
		return err
	}
	pushFile := filepath.Join(b.dir + ".push.json")
	if err := os.WriteFile(pushFile, []byte(pushed), 0o644); err != nil {
		return err
	}
	if _, err := d.captain(ctx, nil, "release", "create", "--pipeline", pipelineName, "--artifact-file", pushFile, "--commit", commit); err != nil {
		return err
	}
	what := "good"
	if n == 3 {
		what = "bad: built without config.json, its /healthz answers 503"
	}
	d.say("release #%d created: web %s, commit %.7s (%s)", n, b.version, commit, what)
	return nil
}

// waitFor polls cond until it reports nothing missing, the deadline passes or ctx ends.
func (d *demo) waitFor(ctx context.Context, within time.Duration, what string, cond func(context.Context) (string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var missing string
	for {
		var err error
		missing, err = cond(ctx)
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if err == nil && missing == "" {
			return nil
		}
		if err != nil {
			missing = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (still %s); logs are under %s (run with --keep to look at them)", what, context.Cause(ctx), missing, d.dir)
		case <-tick.C:
		}
	}
}

// printAccess says how to reach the running demo. The export line stands alone on its line
// so that it can be pasted into a shell as it is.
func (d *demo) printAccess(ctx context.Context) {
	ui := "http://" + d.apiAddrs[0] + "/ui/"
	note := ""
	if why := httpAnswer(ctx, ui, true); why != "" {
		// The web UI ships with captaind; a captaind built before it answers 404.
		note = fmt.Sprintf(" (this captaind does not serve it: %s)", why)
	}
	fmt.Fprintf(d.out, "\nCaptain is running.\n\n")
	fmt.Fprintf(d.out, "  UI: %s%s\n\n", ui, note)
	fmt.Fprintf(d.out, "In another terminal:\n\n")
	fmt.Fprintf(d.out, "  export CAPTAIN_ADDR=%s CAPTAIN_TOKEN=%s\n", d.apiAddrs[0], d.adminToken)
	fmt.Fprintf(d.out, "  %s status web\n\n", d.self)
	fmt.Fprintf(d.out, "and for `captain artifact push|fetch|diff` against its artifact store (bucket %s):\n\n", bucket)
	fmt.Fprintf(d.out, "  export CAPTAIN_S3_ENDPOINT=%s %s\n\n", d.s3Endpoint, strings.Join(d.s3Env, " "))
	fmt.Fprintf(d.out, "coordinators (any one answers): http://%s\n", strings.Join(d.apiAddrs, " http://"))
	fmt.Fprintf(d.out, "the sample app on each host:\n")
	for _, h := range d.fleet {
		fmt.Fprintf(d.out, "  %-14s http://127.0.0.1:%s/\n", h.name, d.appPorts[h.name])
	}
	fmt.Fprintf(d.out, "state and logs: %s\n\n", d.dir)
}

// teardown stops the app servers the agents' hooks started (they live in their own sessions,
// named by app.pid in each app root), then every process in reverse order, then removes the
// state directory unless --keep.
func (d *demo) teardown() error {
	d.say("stopping")
	var errs []error
	for _, h := range d.fleet {
		root, ok := d.appRoots[h.name]
		if !ok {
			continue
		}
		if err := stopApp(root); err != nil {
			errs = append(errs, fmt.Errorf("stop the app of %s: %w", h.name, err))
		}
	}
	if killed := d.procs.stopAll(10 * time.Second); len(killed) > 0 {
		d.say("killed after 10s: %s", strings.Join(killed, ", "))
	}
	// An agent may have started a server between the first pass and its own exit.
	for _, h := range d.fleet {
		if root, ok := d.appRoots[h.name]; ok {
			if err := stopApp(root); err != nil {
				errs = append(errs, fmt.Errorf("stop the app of %s: %w", h.name, err))
			}
		}
	}
	// The embedded store goes last, like versitygw: agents may fetch until they stop.
	if d.embedded != nil {
		if err := d.embedded.stop(); err != nil {
			errs = append(errs, err)
		}
		if err := d.embeddedLog.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close the embedded S3's log: %w", err))
		}
	}
	if d.o.keep {
		d.say("stopped; state kept in %s", d.dir)
	} else if err := os.RemoveAll(d.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.dir, err))
	} else {
		d.say("stopped; removed %s", d.dir)
	}
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

// summary prints where every environment ended and what happened to release 3 in the first
// stage.
func (d *demo) summary(ctx context.Context, c *client) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		return err
	}
	took := fmt.Sprintf("scripted part done in %s", since(d.start))
	if d.built > 0 {
		took += fmt.Sprintf(" (%s of it building captaind and captain-agent)", d.built)
	}
	fmt.Fprintf(d.out, "\nsummary: %s\n", took)
	for _, s := range st.GetStages() {
		for _, e := range s.GetEnvironments() {
			fmt.Fprintf(d.out, "  wave %d  %-12s %-10s release #%d on %d/%d hosts, last good #%d\n", s.GetWave(), s.GetStage(), e.GetEnvironment(),
				e.GetCurrentRelease(), e.GetHostsHealthy(), e.GetHostsTotal(), e.GetLastGoodRelease())
		}
	}
	first := st.GetStages()[0]
	ds, err := c.deployments(ctx, first.GetEnvironments()[0].GetEnvironment())
	if err != nil {
		return err
	}
	for i := len(ds) - 1; i >= 0; i-- {
		dep := ds[i]
		kind := strings.TrimPrefix(strings.ToLower(dep.GetKind().String()), "deployment_kind_")
		state := strings.TrimPrefix(strings.ToLower(dep.GetState().String()), "deployment_state_")
		line := fmt.Sprintf("  %s %s #%d: %s", first.GetStage(), kind, dep.GetRelease(), state)
		if dep.GetKind() == captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK {
			line += fmt.Sprintf(" (from #%d, %s trigger: %s)", dep.GetFromRelease(),
				strings.TrimPrefix(strings.ToLower(dep.GetTrigger().GetKind().String()), "trigger_kind_"), dep.GetTrigger().GetReason())
		} else if dep.GetReason() != "" {
			line += " (" + dep.GetReason() + ")"
		}
		fmt.Fprintln(d.out, line)
	}
	if b := first.GetBlock(); b.GetIn() || b.GetOut() {
		fmt.Fprintf(d.out, "  %s blocked %s by %s: %s\n", first.GetStage(), sides(b), b.GetActor(), b.GetReason())
		fmt.Fprintf(d.out, "  release #3 is marked bad for %s and never reaches the later stages; lift the block with\n", first.GetStage())
		fmt.Fprintf(d.out, "    captain promotions enable --pipeline %s --stage %s\n", pipelineName, first.GetStage())
	}
	return nil
}
