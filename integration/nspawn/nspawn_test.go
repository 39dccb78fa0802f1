package nspawn

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestContainerBootsSystemdAndKeepsRootfsClean(t *testing.T) {
	rootfs := Rootfs(t)
	shared := t.TempDir()
	if err := os.WriteFile(filepath.Join(shared, "hello"), []byte("from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := Boot(t, rootfs, Bind{Host: shared, Container: "/mnt/shared", ReadOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	out, err := c.Exec(ctx, "cat", "/mnt/shared/hello")
	if err != nil || string(out) != "from the host" {
		t.Fatalf("bind mount: %q %v", out, err)
	}
	// systemd answers over D-Bus inside: the property a unit restart relies on.
	out, err = c.Exec(ctx, "systemctl", "show", "-p", "Version", "--value")
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("systemctl show: %q %v", out, err)
	}
	if _, err := c.Exec(ctx, "sh", "-c", "echo scratch > /etc/written-in-container"); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	if _, err := os.Stat(filepath.Join(rootfs, "etc/written-in-container")); !os.IsNotExist(err) {
		t.Fatalf("a write inside the container reached the shared root file system (err=%v)", err)
	}
}

func TestMirrorIsReadFromApt(t *testing.T) {
	if _, err := os.Stat("/etc/apt"); err != nil {
		t.Skip("not a Debian machine")
	}
	m, err := Mirror()
	if err != nil || !strings.HasPrefix(m, "http") {
		t.Fatalf("Mirror = %q, %v", m, err)
	}
}
