package artifactcmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/ops/cli/artifactcmd"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "captain", SilenceUsage: true, SilenceErrors: true}
	cfg := &clientcfg.Config{}
	cfg.BindFlags(root.PersistentFlags())
	root.AddCommand(artifactcmd.NewArtifactCommand(cfg), artifactcmd.NewKeygenCommand())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestArtifactCommandsEndToEnd(t *testing.T) {
	gw := s3test.Start(t)
	// The CLI uses the standard credential chain; the environment is its first link.
	t.Setenv("AWS_ACCESS_KEY_ID", gw.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", gw.SecretKey)
	t.Setenv("AWS_REGION", "us-east-1")
	work := t.TempDir()
	key := filepath.Join(work, "release.key")

	if out, err := run(t, "keygen", "--out", key); err != nil || !strings.Contains(out, key+".pub") {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	if _, err := run(t, "keygen", "--out", key); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("keygen over an existing key: %v", err)
	}

	src := filepath.Join(work, "build")
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	os.WriteFile(filepath.Join(src, "bin/app"), []byte("v1"), 0o755)
	os.WriteFile(filepath.Join(src, "README"), []byte("hello"), 0o644)
	pushArgs := []string{"artifact", "push", src, "--pipeline", "web", "--commit", "c1", "--sign-key", key,
		"--bucket", gw.Bucket, "--s3-endpoint", gw.Endpoint}

	out, err := run(t, append(pushArgs, "-o", "json")...)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	var first struct {
		URI     string `json:"uri"`
		Existed bool   `json:"existed"`
		Ref     struct{ SHA256 string }
	}
	if err := json.Unmarshal([]byte(out), &first); err != nil || first.URI == "" || first.Existed {
		t.Fatalf("push -o json: %v\n%s", err, out)
	}
	out, err = run(t, pushArgs...)
	if err != nil || !strings.Contains(out, "already stored") || !strings.Contains(out, first.URI) {
		t.Fatalf("second push: %v\n%s", err, out)
	}
	t.Logf("second push:\n%s", out)

	dest := filepath.Join(work, "releases", "1")
	cache := filepath.Join(work, "cache")
	fetchArgs := []string{"artifact", "fetch", first.URI, "--out", dest, "--trusted-key", key + ".pub", "--cache", cache, "--s3-endpoint", gw.Endpoint}
	if out, err := run(t, fetchArgs...); err != nil || !strings.Contains(out, "downloaded") {
		t.Fatalf("fetch: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "bin/app")); string(b) != "v1" {
		t.Errorf("fetched bin/app = %q", b)
	}
	fetchArgs[4] = filepath.Join(work, "releases", "2")
	if out, err := run(t, fetchArgs...); err != nil || !strings.Contains(out, "from cache") {
		t.Fatalf("second fetch: %v\n%s", err, out)
	}

	// An artifact signed by another key is refused and nothing is unpacked.
	if _, err := run(t, "keygen", "--out", filepath.Join(work, "other.key")); err != nil {
		t.Fatal(err)
	}
	fetchArgs[4], fetchArgs[6] = filepath.Join(work, "releases", "3"), filepath.Join(work, "other.key.pub")
	fetchArgs[8] = filepath.Join(work, "cache2")
	if _, err := run(t, fetchArgs...); err == nil || !strings.Contains(err.Error(), "signature does not verify") {
		t.Fatalf("fetch with an untrusted key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(work, "releases", "3")); !os.IsNotExist(err) {
		t.Errorf("rejected fetch created its output directory: %v", err)
	}

	os.WriteFile(filepath.Join(src, "bin/app"), []byte("v2"), 0o755)
	os.Remove(filepath.Join(src, "README"))
	os.WriteFile(filepath.Join(src, "NEW"), []byte("new"), 0o600)
	pushArgs[6] = "c2"
	out, err = run(t, append(pushArgs, "-o", "json")...)
	if err != nil {
		t.Fatalf("push v2: %v", err)
	}
	var second struct{ URI string }
	json.Unmarshal([]byte(out), &second)

	out, err = run(t, "artifact", "diff", first.URI, second.URI, "--trusted-key", key+".pub", "--s3-endpoint", gw.Endpoint)
	if err != nil {
		t.Fatalf("diff: %v\n%s", err, out)
	}
	t.Logf("diff:\n%s", out)
	for _, want := range []string{"CHANGE   PATH     DETAIL", "added    NEW", "content  bin/app", "removed  README", "1 added, 1 removed, 1 changed"} {
		if !strings.Contains(out, want) {
			t.Errorf("diff output lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, "artifact", "diff", first.URI, second.URI, "--s3-endpoint", gw.Endpoint, "-o", "json")
	var d struct {
		Changes []struct{ Path, What string }
	}
	if err != nil || json.Unmarshal([]byte(out), &d) != nil || len(d.Changes) != 3 {
		t.Fatalf("diff -o json: %v\n%s", err, out)
	}
}

func TestEveryCommandHasAnExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" {
			t.Errorf("%q has no example", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(artifactcmd.NewArtifactCommand(&clientcfg.Config{}))
	walk(artifactcmd.NewKeygenCommand())
}
