package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const valid = `
coordinators: [http://10.0.0.1:7400, "https://c2.example:7400"]
join_token_file: /etc/captain/join-token
labels: {region: us-east-1, az: use1-az1}
trusted_keys: [/etc/captain/trusted-keys/release.pub]
s3: {endpoint: "http://127.0.0.1:7070", region: us-east-1}
hostname: web-1
`
	tests := []struct {
		name    string
		yaml    string
		wantErr []string // substrings the error must contain; none means success
		check   func(t *testing.T, c *Config)
	}{
		{name: "full config parses", yaml: valid, check: func(t *testing.T, c *Config) {
			if len(c.Coordinators) != 2 || c.Labels["az"] != "use1-az1" || c.S3.Endpoint != "http://127.0.0.1:7070" || c.Hostname != "web-1" {
				t.Errorf("parsed %+v", c)
			}
		}},
		{name: "defaults fill state dir, log level and hostname", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\n", check: func(t *testing.T, c *Config) {
			host, _ := os.Hostname()
			if c.StateDir != "/var/lib/captain" || c.LogLevel != "info" || c.Hostname != host {
				t.Errorf("defaults: state_dir=%q log_level=%q hostname=%q", c.StateDir, c.LogLevel, c.Hostname)
			}
		}},
		{name: "unknown field is named", yaml: valid + "coordinator_urls: [x]\n", wantErr: []string{`unknown field "coordinator_urls"`}},
		{name: "unknown nested field is named", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\ns3: {endpoint: x, bucket: b}\n", wantErr: []string{`unknown field "s3.bucket"`}},
		{name: "missing coordinators", yaml: "join_token_file: /t\n", wantErr: []string{"coordinators: at least one"}},
		{name: "coordinator without scheme", yaml: "coordinators: [10.0.0.1:7400]\njoin_token_file: /t\n", wantErr: []string{"coordinators[0]", "http(s)://"}},
		{name: "missing join token file", yaml: "coordinators: [http://c:1]\n", wantErr: []string{"join_token_file: required"}},
		{name: "bad label key", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\nlabels: {'-region': x}\n", wantErr: []string{`labels: key "-region"`}},
		{name: "bad label value", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\nlabels: {az: 'use1 az1'}\n", wantErr: []string{`labels.az: value "use1 az1"`}},
		{name: "relative state dir", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\nstate_dir: var/lib\n", wantErr: []string{"state_dir"}},
		{name: "root dir parses", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\nroot_dir: /tmp/agent-1\n", check: func(t *testing.T, c *Config) {
			if c.RootDir != "/tmp/agent-1" {
				t.Errorf("root_dir = %q, want /tmp/agent-1", c.RootDir)
			}
		}},
		{name: "relative root dir", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\nroot_dir: agents/1\n", wantErr: []string{`root_dir: "agents/1"`}},
		{name: "relative ca cert", yaml: "coordinators: [https://c:1]\njoin_token_file: /t\nca_cert: ca.pem\n", wantErr: []string{`ca_cert: "ca.pem" must be an absolute path`}},
		{name: "root dir slash", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\nroot_dir: /\n", wantErr: []string{`root_dir: "/"`}},
		{name: "bad log level", yaml: "coordinators: [http://c:1]\njoin_token_file: /t\nlog_level: loud\n", wantErr: []string{`log_level: "loud"`}},
		{name: "every problem at once", yaml: "labels: {'': x}\n", wantErr: []string{"coordinators:", "join_token_file:", "labels: key"}},
		{name: "wrong type is named", yaml: "coordinators: http://c:1\njoin_token_file: /t\n", wantErr: []string{"coordinators"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				tt.check(t, c)
				return
			}
			if err == nil {
				t.Fatalf("Parse succeeded, want an error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestExampleConfigParses(t *testing.T) {
	c, err := Load(filepath.Join("..", "..", "ops", "examples", "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Coordinators) != 3 || c.Labels["region"] != "us-east-1" {
		t.Fatalf("example parsed as %+v", c)
	}
}

func TestMarshalRoundTrips(t *testing.T) {
	in := &Config{Coordinators: []string{"http://c:1"}, JoinTokenFile: "/t", Labels: map[string]string{"az": "a"}, StateDir: "/s", Hostname: "h", LogLevel: "debug"}
	b, err := in.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(Marshal): %v\n%s", err, b)
	}
	if out.Labels["az"] != "a" || out.StateDir != "/s" || out.LogLevel != "debug" || out.S3 != (S3{}) {
		t.Fatalf("round trip: %+v\n%s", out, b)
	}
}
