// Command app is the sample web service `captain dev` deploys: it answers / with its release
// and /healthz with 200 while its release directory holds config.json, so a release built
// without one fails its health check on the host.
//
// One binary plays three parts, so the pipeline needs no shell and no systemd:
//
//	app serve   the HTTP server (port from $PORT, else the file "port" in the app root)
//	app start   the activate hook: stops the previous server of this app root, starts
//	            `app serve` from this release in its own session, writes app.pid
//	app check   the health check: the server on the port answers /healthz 200 and is the
//	            one started from this release directory
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// version is stamped at build time (-ldflags "-X main.version=1.0.2"), so each release's
// binary, and with it its artifact, differs.
var version = "devel"

func main() {
	cmd := "serve"
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve()
	case "start":
		err = start()
	case "check":
		err = check()
	case "stop":
		err = stopPrevious(appRoot(releaseDir()))
	default:
		err = fmt.Errorf("unknown command %q: expected serve, start, check or stop", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
}

// releaseDir is the directory the binary was unpacked into: <app root>/releases/<n>-<id>.
func releaseDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	return filepath.Dir(exe)
}

// appRoot is $CAPTAIN_APP_ROOT (set by the agent for hooks and checks), else two levels up
// from the release directory.
func appRoot(release string) string {
	if r := os.Getenv("CAPTAIN_APP_ROOT"); r != "" {
		return r
	}
	return filepath.Dir(filepath.Dir(release))
}

// port comes from $PORT or the app root's "port" file: several copies of the app share a
// machine under `captain dev`, each with its own app root and port.
func port(root string) (int, error) {
	s := os.Getenv("PORT")
	if s == "" {
		b, err := os.ReadFile(filepath.Join(root, "port"))
		if err != nil {
			return 0, fmt.Errorf("no $PORT and no port file: %w", err)
		}
		s = strings.TrimSpace(string(b))
	}
	p, err := strconv.Atoi(s)
	if err != nil || p <= 0 || p > 65535 {
		return 0, fmt.Errorf("port %q is not a TCP port", s)
	}
	return p, nil
}

type health struct {
	Status     string `json:"status"`
	Version    string `json:"version"`
	Release    string `json:"release"`
	ReleaseDir string `json:"release_dir"`
	Reason     string `json:"reason,omitempty"`
}

func serve() error {
	dir := releaseDir()
	root := appRoot(dir)
	p, err := port(root)
	if err != nil {
		return err
	}
	v, _ := os.ReadFile(filepath.Join(dir, "VERSION"))
	ver := strings.TrimSpace(string(v))
	if ver == "" {
		ver = version
	}
	var cfg struct {
		Greeting string `json:"greeting"`
	}
	cfgErr := readConfig(filepath.Join(dir, "config.json"), &cfg)
	host, _ := os.Hostname()
	rel := os.Getenv("CAPTAIN_RELEASE")
	env := os.Getenv("CAPTAIN_ENVIRONMENT")
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		greeting := cfg.Greeting
		if greeting == "" {
			greeting = "hello"
		}
		fmt.Fprintf(w, "%s from web %s (release %s) in %s on %s, port %d\n", greeting, ver, rel, env, host, p)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := health{Status: "ok", Version: ver, Release: rel, ReleaseDir: dir}
		code := http.StatusOK
		if cfgErr != nil {
			h.Status, h.Reason, code = "unhealthy", cfgErr.Error(), http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(h)
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("serving", "addr", ln.Addr().String(), "version", ver, "release", rel, "dir", dir, "config_error", cfgErr)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func readConfig(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("this release has no usable config.json: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("config.json: %w", err)
	}
	return nil
}

// start replaces the running server with one from this release. The server gets its own
// session so it outlives the hook (the agent kills the hook's process group when it ends) and
// its output goes to app.log, not to the hook's pipes, which the agent waits to close.
func start() error {
	dir := releaseDir()
	root := appRoot(dir)
	if err := stopPrevious(root); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(root, "app.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open app.log: %w", err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "serve")
	cmd.Dir = dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	pid := cmd.Process.Pid
	tmp := filepath.Join(root, "app.pid.tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(root, "app.pid")); err != nil {
		return err
	}
	fmt.Printf("started web %s from %s as pid %d\n", version, dir, pid)
	return cmd.Process.Release()
}

// stopPrevious ends the server named by app.pid: SIGTERM to its session's process group,
// SIGKILL after 5 seconds. A pid whose executable lies outside this app root belongs to
// someone else now (the pid was reused) and is left alone.
func stopPrevious(root string) error {
	b, err := os.ReadFile(filepath.Join(root, "app.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("app.pid holds %q, not a pid", b)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	real, rerr := filepath.EvalSymlinks(root)
	if err != nil || rerr != nil || !strings.HasPrefix(exe, real+string(filepath.Separator)) {
		return os.Remove(filepath.Join(root, "app.pid"))
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil && !zombie(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("stopped previous server pid %d\n", pid)
	return os.Remove(filepath.Join(root, "app.pid"))
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses, which may itself hold spaces.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

// check passes when the server answers /healthz 200 and runs from this release directory:
// a server left over from the previous release must not make a new one look healthy.
func check() error {
	dir := releaseDir()
	p, err := port(appRoot(dir))
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", p))
	if err != nil {
		return fmt.Errorf("healthz: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var h health
	_ = json.Unmarshal(body, &h)
	switch {
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("healthz answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	case h.ReleaseDir != dir:
		return fmt.Errorf("port %d is served from %s, not from this release (%s)", p, h.ReleaseDir, dir)
	}
	fmt.Printf("healthy: web %s, release %s\n", h.Version, h.Release)
	return nil
}
