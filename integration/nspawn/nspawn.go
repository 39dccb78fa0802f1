// Package nspawn boots real systemd in systemd-nspawn containers for tests that need it: the
// agent's install path, unit restarts over D-Bus, systemd restarting a killed agent.
//
// One Debian root file system is built with debootstrap and cached; every container boots it
// with --volatile=overlay, so containers share the cached root read-only and each writes into its
// own tmpfs. Containers share the host's network namespace, so a process inside reaches servers
// the test started on 127.0.0.1.
package nspawn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Suite is the Debian release the root file system is built from.
const Suite = "bookworm"

// Available reports why containers cannot run here, or "" when they can.
func Available() string {
	if os.Geteuid() != 0 {
		return "needs root to run systemd-nspawn"
	}
	for _, tool := range []string{"systemd-nspawn", "debootstrap", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed (apt-get install systemd-container debootstrap)"
		}
	}
	return ""
}

// CacheDir is where the root file system is kept between test runs.
func CacheDir() string {
	if d := os.Getenv("CAPTAIN_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/captain-test"
}

// Rootfs returns the cached root file system, building it first when missing (about 40 s and
// 240 MB). Concurrent callers, also from other test processes, wait for one build.
// It skips the test when containers cannot run here.
func Rootfs(t testing.TB) string {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip(why)
	}
	dir, err := ensureRootfs(context.Background(), CacheDir())
	if err != nil {
		t.Fatalf("build container root file system: %v", err)
	}
	return dir
}

func ensureRootfs(ctx context.Context, cache string) (string, error) {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	final := filepath.Join(cache, "rootfs-"+Suite)
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", cache, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // released on close anyway
	if _, err := os.Stat(filepath.Join(final, "usr/lib/systemd/systemd")); err == nil {
		return final, nil
	}
	mirror, err := Mirror()
	if err != nil {
		return "", err
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus", Suite, tmp, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("debootstrap %s from %s: %w\n%s", Suite, mirror, err, tail(out, 2000))
	}
	// An empty machine-id lets every container make its own; a fixed hostname would clash.
	if err := os.WriteFile(filepath.Join(tmp, "etc/machine-id"), nil, 0o444); err != nil {
		return "", err
	}
	if err := os.Remove(filepath.Join(tmp, "etc/hostname")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	return final, nil
}

// Mirror is the Debian mirror this machine's apt uses (the URIs: line of debian.sources, or
// the first deb line of sources.list).
func Mirror() (string, error) {
	if f, err := os.Open("/etc/apt/sources.list.d/debian.sources"); err == nil {
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			line := strings.TrimSpace(s.Text())
			if rest, ok := strings.CutPrefix(line, "URIs:"); ok {
				for _, u := range strings.Fields(rest) {
					if !strings.Contains(u, "security") {
						return u, nil
					}
				}
			}
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "deb" && !strings.Contains(f[1], "security") {
				return f[1], nil
			}
		}
	}
	return "", errors.New("no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")
}

// Bind makes a host path visible in the container.
type Bind struct {
	Host      string
	Container string
	ReadOnly  bool
}

// Container is one booted systemd.
type Container struct {
	Name   string
	cmd    *exec.Cmd
	leader int
	log    *bytes.Buffer
	done   chan struct{}
}

// Boot starts a container from rootfs and waits until its systemd finished booting.
// The container is stopped when the test ends.
func Boot(t testing.TB, rootfs string, binds ...Bind) *Container {
	t.Helper()
	name := fmt.Sprintf("captain-%d-%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
	args := []string{"-D", rootfs, "--volatile=overlay", "-b", "--register=no", "--keep-unit", "--quiet", "--console=pipe", "-M", name}
	for _, b := range binds {
		flag := "--bind="
		if b.ReadOnly {
			flag = "--bind-ro="
		}
		args = append(args, flag+b.Host+":"+b.Container)
	}
	c := &Container{Name: name, log: &bytes.Buffer{}, done: make(chan struct{})}
	c.cmd = exec.Command("systemd-nspawn", args...)
	c.cmd.Stdout = c.log
	c.cmd.Stderr = c.log
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(c.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.waitBooted(ctx); err != nil {
		t.Fatalf("container %s did not boot: %v\nnspawn output:\n%s", name, err, tail(c.log.Bytes(), 4000))
	}
	return c
}

func (c *Container) waitBooted(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if c.leader == 0 {
			c.leader = childOf(c.cmd.Process.Pid)
		}
		if c.leader != 0 {
			out, _ := c.Exec(ctx, "systemctl", "is-system-running")
			switch strings.TrimSpace(string(out)) {
			case "running", "degraded":
				return nil
			}
		}
		select {
		case <-c.done:
			return errors.New("systemd-nspawn exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// childOf returns the first child process of pid: the container's init.
func childOf(pid int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(field); err == nil {
				return n
			}
		}
	}
	return 0
}

// Leader is the host PID of the container's systemd.
func (c *Container) Leader() int { return c.leader }

// Exec runs a command inside the container (all namespaces of its init) and returns its
// combined output.
func (c *Container) Exec(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{"-t", strconv.Itoa(c.leader), "-a", "--"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in container %s: %s: %w: %s", c.Name, strings.Join(args, " "), err, tail(out, 2000))
	}
	return out, nil
}

// Stop powers the container off (SIGTERM asks systemd to halt) and kills it when that takes
// longer than 20 s.
func (c *Container) Stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
