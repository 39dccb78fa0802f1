// Package s3test runs a real S3 gateway (versitygw, posix backend) on loopback for tests.
package s3test

import (
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/captain-cd/captain/artifacts/store"
)

// Gateway is one running versitygw process serving Bucket from a temporary directory.
type Gateway struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Bucket    string

	t      testing.TB
	bin    string
	dir    string
	logDir string
	addr   string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Binary finds versitygw in PATH or in GOPATH/bin.
func Binary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = string(trimNL(out))
		}
	}
	if gopath == "" {
		home, _ := os.UserHomeDir()
		gopath = filepath.Join(home, "go")
	}
	p := filepath.Join(filepath.SplitList(gopath)[0], "bin", "versitygw")
	if _, err := os.Stat(p); err != nil {
		return "", errors.New("versitygw not found in PATH or GOPATH/bin; install it with `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0`")
	}
	return p, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Start runs a gateway for the test, skips the test if versitygw is not installed, and stops
// the gateway when the test ends.
func Start(t testing.TB) *Gateway {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Skip(err.Error())
	}
	dir := t.TempDir()
	g := &Gateway{
		AccessKey: "captaintest",
		SecretKey: "captaintest-secret-key",
		Bucket:    "artifacts",
		t:         t,
		bin:       bin,
		dir:       dir,
		logDir:    t.TempDir(),
	}
	// The posix backend serves every top-level directory as a bucket.
	if err := os.Mkdir(filepath.Join(dir, g.Bucket), 0o755); err != nil {
		t.Fatalf("create bucket dir: %v", err)
	}
	t.Cleanup(g.Stop)
	// Another process can grab the port between probing and binding; try a few.
	for attempt := 0; ; attempt++ {
		g.addr = freeAddr(t)
		g.Endpoint = "http://" + g.addr
		err := g.start()
		if err == nil {
			return g
		}
		if attempt == 4 {
			t.Fatalf("start versitygw: %v", err)
		}
	}
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func (g *Gateway) start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	cmd := exec.Command(g.bin, "--port", g.addr, "--access", g.AccessKey, "--secret", g.SecretKey, "--quiet", "posix", g.dir)
	// Appending keeps the log of a stopped instance for a restarted one.
	logf, err := os.OpenFile(filepath.Join(g.logDir, "versitygw.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err == nil {
		cmd.Stderr = logf
		defer logf.Close()
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	g.cmd, g.exited = cmd, exited
	deadline := time.Now().Add(15 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-exited:
			return errors.New("versitygw exited during startup (port taken?)")
		default:
		}
		// Any HTTP answer (403 for an anonymous request) means it is serving.
		if resp, err := client.Get(g.Endpoint + "/"); err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return errors.New("versitygw did not answer within 15s")
		}
		// Poll interval, bounded by the deadline above.
		select {
		case <-exited:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop kills the gateway (as a crash would) and waits for it to exit. Safe to call twice.
func (g *Gateway) Stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return
	}
	_ = g.cmd.Process.Kill()
	<-g.exited
	g.cmd = nil
}

// Restart starts the gateway again on the same address and data directory.
func (g *Gateway) Restart() {
	g.t.Helper()
	g.Stop()
	if err := g.start(); err != nil {
		g.t.Fatalf("restart versitygw: %v", err)
	}
}

// Config returns a store configuration with the gateway's credentials.
func (g *Gateway) Config() store.Config {
	return store.Config{
		Endpoint:    g.Endpoint,
		Region:      "us-east-1",
		Bucket:      g.Bucket,
		Credentials: credentials.NewStaticV4(g.AccessKey, g.SecretKey, ""),
	}
}

// Store returns a client for the gateway's bucket.
func (g *Gateway) Store() *store.Store {
	g.t.Helper()
	s, err := store.New(g.Config())
	if err != nil {
		g.t.Fatalf("store: %v", err)
	}
	return s
}

// ObjectPath is where the posix backend keeps key on disk, for tests that tamper with
// stored bytes behind the gateway's back.
func (g *Gateway) ObjectPath(key string) string {
	return filepath.Join(g.dir, g.Bucket, filepath.FromSlash(key))
}
