package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigFileSetsFlagsTheCommandLineLeftUnset(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "captaind.yaml")
	yaml := `
node-id: c2
data-dir: /var/lib/captain
api-addr: 10.0.0.2:7400
join: [10.0.0.1:7400, 10.0.0.3:7400]
snapshot-threshold: 16384
snapshot-interval: 30s
s3-endpoint: http://127.0.0.1:7070
trusted-key: [/etc/captain/ci.pub, /etc/captain/release.pub]
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newCommand()
	if err := cmd.ParseFlags([]string{"--config", path, "--api-addr", "127.0.0.1:9000"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(cmd.Flags(), path); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for name, want := range map[string]string{
		"node-id":            "c2",
		"data-dir":           "/var/lib/captain",
		"api-addr":           "127.0.0.1:9000", // the command line wins
		"join":               "[10.0.0.1:7400,10.0.0.3:7400]",
		"snapshot-threshold": "16384",
		"snapshot-interval":  (30 * time.Second).String(),
		"s3-endpoint":        "http://127.0.0.1:7070",
		"trusted-key":        "[/etc/captain/ci.pub,/etc/captain/release.pub]",
	} {
		if got := get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestConfigFileRejectsUnknownKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("node-idd: c1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newCommand()
	err := applyConfigFile(cmd.Flags(), path)
	if err == nil || !strings.Contains(err.Error(), `unknown key "node-idd"`) {
		t.Fatalf("err = %v, want unknown key named", err)
	}
}

func TestRunRefusesJoinWithoutToken(t *testing.T) {
	t.Setenv("CAPTAIN_TOKEN", "")
	o := &options{logLevel: "info", logFormat: "text"}
	o.cfg.NodeID, o.cfg.DataDir, o.cfg.Join = "c2", t.TempDir(), []string{"127.0.0.1:1"}
	err := run(t.Context(), o)
	if err == nil || !strings.Contains(err.Error(), "CAPTAIN_TOKEN or --join-token-file") {
		t.Fatalf("err = %v", err)
	}
}

func TestRunRefusesArtifactStoreFlagsItCannotUse(t *testing.T) {
	for _, tc := range []struct {
		name     string
		endpoint string
		keys     []string
		says     string
	}{
		{"trusted key without a store", "", []string{"k.pub"}, "also give --s3-endpoint or --s3-region"},
		{"malformed endpoint", "ftp://store", nil, "--s3-endpoint"},
		{"unreadable trusted key", "http://127.0.0.1:7070", []string{filepath.Join(t.TempDir(), "missing.pub")}, "--trusted-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &options{logLevel: "info", logFormat: "text"}
			o.cfg.NodeID, o.cfg.DataDir, o.cfg.Bootstrap = "c1", t.TempDir(), true
			o.cfg.S3Endpoint, o.cfg.TrustedKeyFiles = tc.endpoint, tc.keys
			err := run(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want it to say %q", err, tc.says)
			}
		})
	}
}
