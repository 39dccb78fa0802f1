package coordcmd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/coordinator/daemon"
)

// TestReleaseDiffAndShowWithRealManifests pushes two builds to a real S3 gateway, releases them
// on a cluster that reads their manifests, and checks what `release diff` and `release show`
// print, then what they print once the coordinator cannot reach the store.
func TestReleaseDiffAndShowWithRealManifests(t *testing.T) {
	gw := s3test.Start(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "release.key")
	if _, err := manifest.GenerateKeyFiles(key); err != nil {
		t.Fatal(err)
	}
	priv, err := manifest.LoadPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := clustertest.New(t, 1, clustertest.Options{Configure: func(_ int, cfg *daemon.Config) {
		cfg.S3Endpoint = gw.Endpoint
		cfg.S3Credentials = credentials.NewStaticV4(gw.AccessKey, gw.SecretKey, "")
		cfg.TrustedKeyFiles = []string{key + ".pub"}
	}})
	addr := c.Nodes[0].APIAddr
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("pipeline.yaml", "name: web\ndeploy: {app_root: /srv/web}\nstages:\n  - name: zone\n    environments: [{name: zone-a, selector: {role: zone}}]\n")
	write("v1/bin/web", "v1")
	write("v1/lib/redis.so", "redis")
	write("v2/bin/web", "v2 with cache")
	write("v2/lib/memcache.so", "memcache")
	write("v3/bin/web", "v3")
	write("c2", "2222222222222222222222222222222222222222\tBob <bob@example.com>\tcache with memcache\n")
	for i, tree := range []string{"v1", "v2", "v3"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res, err := push.Push(ctx, gw.Store(), push.Options{Dir: filepath.Join(dir, tree), Pipeline: "web", Commit: strings.Repeat(tree[1:], 40), Key: priv, TempDir: dir})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		out, err := json.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		write(tree+".json", string(out))
		args := []string{"release", "create", "--pipeline", "web", "--artifact-file", filepath.Join(dir, tree+".json"), "--commit", strings.Repeat(tree[1:], 40)}
		if i == 1 {
			args = append(args, "--commits-file", filepath.Join(dir, "c2"))
		}
		if i == 0 {
			if r := captainWith(t, addr, strings.NewReader(""), "pipeline", "apply", "-f", filepath.Join(dir, "pipeline.yaml")); r.err != nil {
				t.Fatal(r.err)
			}
		}
		if r := captainWith(t, addr, strings.NewReader(""), args...); r.err != nil {
			t.Fatal(r.err)
		}
	}

	steps := []cliStep{
		{name: "diff aligns commits and file changes", args: []string{"release", "diff", "web", "1", "2"}, want: []string{`release web #1 -> #2

commits: 1
COMMIT   AUTHOR                 MESSAGE
2222222  Bob <bob@example.com>  cache with memcache

file changes: 3
CHANGE   PATH             SIZE     WHAT
changed  bin/web          2 -> 13  content
added    lib/memcache.so  8        -
removed  lib/redis.so     5        -
`}},
		{name: "diff as JSON", args: []string{"release", "diff", "web", "2", "1", "-o", "json"}, want: []string{
			`"commits": [{"sha": "2222222222222222222222222222222222222222", "message": "cache with memcache", "author": "Bob <bob@example.com>"}]`,
			`{"path": "lib/memcache.so", "kind": "FILE_CHANGE_KIND_ADDED", "to_size": "8"}`}},
		{name: "diff of an unknown release", args: []string{"release", "diff", "web", "1", "7"}, wantErr: "pipeline web has no release 7"},
		{name: "show lists commits and the stage status", args: []string{"release", "show", "web", "2"}, want: []string{
			"release web/2, created by initial-admin", "deployed in: no environment runs it now", "commits: 1", "2222222  cache with memcache  (Bob <bob@example.com>)",
			"STAGE  STATUS    SINCE", "zone   approved"}},
		{name: "the newest runs in the environment", args: []string{"release", "show", "web", "3"}, want: []string{"deployed in: zone-a", "zone   approved", "zone-a"}},
		{name: "an older release no longer runs anywhere", args: []string{"release", "show", "web", "1"}, want: []string{"deployed in: no environment runs it now", "zone   approved"}},
		{name: "show of an unknown release", args: []string{"release", "show", "web", "7"}, wantErr: "release 7"},
	}
	// Release 3 is approved a moment after it is created (the stage has no hosts).
	clustertest.Eventually(t, 10*time.Second, func() error {
		if r := captainWith(t, addr, strings.NewReader(""), "release", "show", "web", "3"); r.err != nil || !strings.Contains(r.out, "zone   approved") {
			return fmt.Errorf("release 2 not approved yet: %v\n%s", r.err, r.out)
		}
		return nil
	})
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.check(t, captainWith(t, addr, strings.NewReader(""), s.args...))
		})
	}

	// Release 3's manifest was never read, so nothing is cached for it: with the store gone, the
	// diff keeps the commits and says why the files are missing.
	gw.Stop()
	cliStep{name: "diff with the store down", args: []string{"release", "diff", "web", "2", "3"}, want: []string{
		"commits: 1", "3333333", "file changes: unavailable: read manifest of artifact", "connection refused"}}.
		check(t, captainWith(t, addr, strings.NewReader(""), "release", "diff", "web", "2", "3"))
}
