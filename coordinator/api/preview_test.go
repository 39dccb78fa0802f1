package api_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/coordinator/daemon"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// artifactTree is one build: path → content; a path ending in "*" is executable.
type artifactTree map[string]string

// pushTree writes the tree to a directory and pushes it to the gateway as a signed artifact.
func pushTree(t *testing.T, gw *s3test.Gateway, key string, commit string, tree artifactTree) *captainv1.ArtifactRef {
	t.Helper()
	dir := t.TempDir()
	for name, content := range tree {
		mode := os.FileMode(0o644)
		if n, ok := strings.CutSuffix(name, "*"); ok {
			name, mode = n, 0o755
		}
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
	}
	priv, err := manifest.LoadPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	res, err := push.Push(ctx(t), gw.Store(), push.Options{Dir: dir, Pipeline: "web", Commit: commit, Key: priv, TempDir: t.TempDir()})
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return &captainv1.ArtifactRef{Bucket: gw.Bucket, Key: res.ArchiveKey, Sha256: res.Ref.SHA256, Size: res.Size,
		ManifestKey: res.ManifestKey, SignatureKey: res.SignatureKey}
}

func sameProto[M proto.Message](t *testing.T, what string, got, want M) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("%s:\n%s\nwant:\n%s", what, prototext.Format(got), prototext.Format(want))
	}
}

// TestRollbackPreviewShowsWhatGoesAway scripts a history of four releases built from real
// artifacts in a real S3 gateway and checks what operators are told before and during a
// rollback: the preview exactly, its answer when the store is down, a rollback that replaces
// a deployment in progress, and NotFound naming whatever does not exist.
func TestRollbackPreviewShowsWhatGoesAway(t *testing.T) {
	gw := s3test.Start(t)
	keyFile := filepath.Join(t.TempDir(), "signing.key")
	if _, err := manifest.GenerateKeyFiles(keyFile); err != nil {
		t.Fatal(err)
	}
	c := clustertest.New(t, 1, clustertest.Options{Configure: func(_ int, cfg *daemon.Config) {
		cfg.S3Endpoint, cfg.S3Region = gw.Endpoint, "us-east-1"
		cfg.S3Credentials = credentials.NewStaticV4(gw.AccessKey, gw.SecretKey, "")
		cfg.TrustedKeyFiles = []string{keyFile + ".pub"}
	}})
	admin := c.Client(c.Leader(5*time.Second), "")
	joinToken := newToken(t, admin, "fleet", captainv1.Role_ROLE_AGENT, 0)
	applyPipeline(t, admin, `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: zone1
    environments: [{name: zone1, selector: {az: z1}}]
`)
	// Release 4 never finishes: the hosts do not report it.
	hosts := []string{
		playAgentHolding(t, c, joinToken, map[string]string{"az": "z1"}, 4),
		playAgentHolding(t, c, joinToken, map[string]string{"az": "z1"}, 4),
	}
	slices.Sort(hosts)

	commit := func(n byte) string { return strings.Repeat(string(n), 40) }
	ann := &captainv1.Commit{Sha: commit('1'), Author: "Ann <ann@example.com>", Message: "add login page"}
	bob1 := &captainv1.Commit{Sha: commit('2'), Author: "Bob <bob@example.com>", Message: "redis client"}
	bob2 := &captainv1.Commit{Sha: commit('3'), Author: "Bob <bob@example.com>", Message: "sessions in redis"}
	cid := &captainv1.Commit{Sha: commit('4'), Author: "Cid <cid@example.com>", Message: "cache headers"}
	dan := &captainv1.Commit{Sha: commit('5'), Author: "Dan <dan@example.com>", Message: "brotli"}
	builds := []struct {
		commits []*captainv1.Commit // newest first
		tree    artifactTree
	}{
		{[]*captainv1.Commit{ann}, artifactTree{"bin/web*": "v1", "bin/migrate": "m", "lib/memcache.so": "memcache", "static/app.js": "a"}},
		{[]*captainv1.Commit{bob2, bob1}, artifactTree{"bin/web*": "v2-", "bin/migrate": "m", "lib/redis.so": "redis", "static/app.js": "a"}},
		{[]*captainv1.Commit{cid}, artifactTree{"bin/web*": "v3--", "bin/migrate*": "m", "lib/redis.so": "redis", "static/app.js": "a+cache"}},
		{[]*captainv1.Commit{dan}, artifactTree{"bin/web*": "v4---", "bin/migrate*": "m", "lib/redis.so": "redis", "static/app.js": "a+cache+br"}},
	}
	var refs []*captainv1.ArtifactRef
	for i, b := range builds {
		refs = append(refs, pushTree(t, gw, keyFile, b.commits[0].GetSha(), b.tree))
		if _, err := admin.Release.CreateRelease(ctx(t), connect.NewRequest(&captainv1.CreateReleaseRequest{
			Pipeline: "web", HeadCommit: b.commits[0].GetSha(), Commits: b.commits, Artifact: refs[i],
		})); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			break // release 4 stays in progress
		}
		clustertest.Eventually(t, 15*time.Second, func() error {
			st, err := admin.Deployment.GetStatus(ctx(t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
			if err != nil {
				return err
			}
			if lg := st.Msg.GetStages()[0].GetEnvironments()[0].GetLastGoodRelease(); lg != uint64(i+1) {
				return fmt.Errorf("last good %d, want %d", lg, i+1)
			}
			return nil
		})
	}
	var inflight string
	clustertest.Eventually(t, 15*time.Second, func() error {
		st, err := admin.Deployment.GetStatus(ctx(t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
		if err != nil {
			return err
		}
		s := st.Msg.GetStages()[0]
		if s.GetPhase() != captainv1.StagePhase_STAGE_PHASE_DEPLOYING || s.GetRelease() != 4 {
			return fmt.Errorf("stage %s with #%d, want deploying #4", s.GetPhase(), s.GetRelease())
		}
		inflight = s.GetEnvironments()[0].GetDeploymentId()
		return nil
	})

	preview := func(to uint64) *captainv1.PreviewRollbackResponse {
		t.Helper()
		res, err := admin.Operator.PreviewRollback(ctx(t), connect.NewRequest(&captainv1.PreviewRollbackRequest{
			Target: &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1"}, ToRelease: to},
		}))
		if err != nil {
			t.Fatalf("preview to %d: %v", to, err)
		}
		for _, er := range res.Msg.GetPlan() {
			slices.Sort(er.Hosts) // membership order is not part of the answer
		}
		return res.Msg
	}
	changed := captainv1.FileChangeKind_FILE_CHANGE_KIND_CHANGED
	t.Run("preview lists commits, file changes from the manifests, hosts and skipped steps", func(t *testing.T) {
		sameProto(t, "preview #4 -> #1", preview(1), &captainv1.PreviewRollbackResponse{Plan: []*captainv1.EnvironmentRollback{{
			Stage: "zone1", Environment: "zone1", FromRelease: 4, ToRelease: 1,
			CommitsRemoved: []*captainv1.Commit{dan, cid, bob2, bob1},
			FileChanges: []*captainv1.FileChange{
				{Path: "bin/migrate", Kind: changed, FromSize: 1, ToSize: 1, Detail: "mode"},
				{Path: "bin/web", Kind: changed, FromSize: 5, ToSize: 2, Detail: "content"},
				{Path: "lib/memcache.so", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_ADDED, ToSize: 8},
				{Path: "lib/redis.so", Kind: captainv1.FileChangeKind_FILE_CHANGE_KIND_REMOVED, FromSize: 5},
				{Path: "static/app.js", Kind: changed, FromSize: 10, ToSize: 1, Detail: "content"},
			},
			Hosts:               hosts,
			SkippedSteps:        []string{"bake", "tests", "manual approval", "time windows"},
			CancelsDeploymentId: inflight,
		}}})
	})

	t.Run("release diff shows commits and file changes older to newer", func(t *testing.T) {
		res, err := admin.Release.DiffReleases(ctx(t), connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: "web", From: 4, To: 3}))
		if err != nil {
			t.Fatal(err)
		}
		sameProto(t, "diff #4..#3", res.Msg, &captainv1.DiffReleasesResponse{
			Commits: []*captainv1.Commit{dan},
			Files: []*captainv1.FileChange{
				{Path: "bin/web", Kind: changed, FromSize: 4, ToSize: 5, Detail: "content"},
				{Path: "static/app.js", Kind: changed, FromSize: 7, ToSize: 10, Detail: "content"},
			},
		})
	})

	t.Run("with the store down the answers keep the commits and say why files are missing", func(t *testing.T) {
		gw.Stop()
		defer gw.Restart()
		// Release 2's manifest was never read, so nothing is cached for it.
		pre := preview(2)
		if len(pre.GetPlan()) != 1 || len(pre.GetPlan()[0].GetCommitsRemoved()) != 2 || len(pre.GetPlan()[0].GetFileChanges()) != 0 {
			t.Fatalf("preview #4 -> #2 = %v", pre)
		}
		if why := pre.GetFileChangesUnavailable(); !strings.Contains(why, "manifest of artifact "+refs[1].GetSha256()[:12]) {
			t.Fatalf("file_changes_unavailable = %q, want it to name release 2's artifact", why)
		}
		diff, err := admin.Release.DiffReleases(ctx(t), connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: "web", From: 1, To: 2}))
		if err != nil || len(diff.Msg.GetCommits()) != 2 || diff.Msg.GetFilesUnavailable() == "" {
			t.Fatalf("diff #1..#2 = %v, %v; want 2 commits and files_unavailable", diff, err)
		}
		// Manifests are immutable: the ones already read answer from memory.
		cached, err := admin.Release.DiffReleases(ctx(t), connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: "web", From: 1, To: 4}))
		if err != nil || cached.Msg.GetFilesUnavailable() != "" || len(cached.Msg.GetFiles()) != 5 {
			t.Fatalf("diff #1..#4 from the cache = %v, %v", cached, err)
		}
	})

	t.Run("rollback replaces the deployment in progress and records it", func(t *testing.T) {
		res, err := admin.Operator.Rollback(ctx(t), connect.NewRequest(&captainv1.RollbackRequest{
			Target: &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1"}}, Reason: "brotli breaks IE", RequestId: "rb-inflight",
		}))
		if err != nil {
			t.Fatal(err)
		}
		p := res.Msg.GetPlan()
		if len(p) != 1 || p[0].GetFromRelease() != 4 || p[0].GetToRelease() != 3 || p[0].GetCancelsDeploymentId() != inflight ||
			len(p[0].GetFileChanges()) != 2 || res.Msg.GetFileChangesUnavailable() != "" {
			t.Fatalf("rollback answer = %v", res.Msg)
		}
		clustertest.Eventually(t, 15*time.Second, func() error {
			d, err := admin.Deployment.GetDeployment(ctx(t), connect.NewRequest(&captainv1.GetDeploymentRequest{Id: inflight}))
			if err != nil {
				return err
			}
			if d.Msg.GetDeployment().GetState() != captainv1.DeploymentState_DEPLOYMENT_STATE_CANCELLED || !strings.Contains(d.Msg.GetDeployment().GetReason(), "brotli breaks IE") {
				return fmt.Errorf("deployment %s is %s: %q", inflight, d.Msg.GetDeployment().GetState(), d.Msg.GetDeployment().GetReason())
			}
			st, err := admin.Deployment.GetStatus(ctx(t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
			if err != nil {
				return err
			}
			if s := st.Msg.GetStages()[0]; s.GetEnvironments()[0].GetCurrentRelease() != 3 || !s.GetBlock().GetIn() {
				return fmt.Errorf("stage %s on #%d, block %v", s.GetPhase(), s.GetEnvironments()[0].GetCurrentRelease(), s.GetBlock())
			}
			return nil
		})
		audit, err := admin.Audit.ListAuditEvents(ctx(t), connect.NewRequest(&captainv1.ListAuditEventsRequest{Pipeline: "web"}))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(audit.Msg.GetEvents(), func(e *captainv1.AuditEvent) bool {
			return e.GetAction() == "rollback.start" && e.GetReason() == "brotli breaks IE" && e.GetRequestId() == "rb-inflight"
		}) {
			t.Fatalf("no rollback.start of request rb-inflight in the audit log: %v", audit.Msg.GetEvents())
		}
	})

	t.Run("each release says where it stands in the stage", func(t *testing.T) {
		// The rollback blocked the stage: new releases queue in its inbox, the newer
		// superseding the older.
		for _, n := range []byte{'6', '7'} {
			sha := strings.Repeat(string(n), 64)
			if _, err := admin.Release.CreateRelease(ctx(t), connect.NewRequest(&captainv1.CreateReleaseRequest{
				Pipeline: "web", HeadCommit: commit(n), Artifact: &captainv1.ArtifactRef{Bucket: gw.Bucket, Key: "artifacts/web/" + sha + ".tar.zst", Sha256: sha},
			})); err != nil {
				t.Fatal(err)
			}
		}
		approved, failed := captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED, captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_FAILED
		for _, tc := range []struct {
			release uint64
			status  captainv1.ReleaseStageStatus
			running []string
			detail  string
		}{
			{1, approved, nil, ""},
			{3, approved, []string{"zone1"}, ""},
			{4, failed, nil, "brotli breaks IE"},
			{5, captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_SUPERSEDED, nil, "superseded by release 6"},
			{6, captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_WAITING, nil, ""},
		} {
			// The engine moves new releases into the inbox a moment after they are created.
			clustertest.Eventually(t, 10*time.Second, func() error {
				res, err := admin.Release.GetRelease(ctx(t), connect.NewRequest(&captainv1.GetReleaseRequest{Pipeline: "web", Number: tc.release}))
				if err != nil {
					return err
				}
				st := res.Msg.GetStages()
				if len(st) != 1 || st[0].GetStatus() != tc.status || !slices.Equal(st[0].GetEnvironmentsRunning(), tc.running) ||
					!strings.Contains(st[0].GetDetail(), tc.detail) || st[0].GetSince() == nil {
					return fmt.Errorf("release %d: stages = %v, want %s running in %v saying %q", tc.release, st, tc.status, tc.running, tc.detail)
				}
				return nil
			})
		}
		// An approved release an operator rolls back stays approved and says where it went.
		if _, err := admin.Operator.Rollback(ctx(t), connect.NewRequest(&captainv1.RollbackRequest{
			Target: &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"zone1"}, ToRelease: 1}, Reason: "login broken since 2",
		})); err != nil {
			t.Fatal(err)
		}
		res, err := admin.Release.GetRelease(ctx(t), connect.NewRequest(&captainv1.GetReleaseRequest{Pipeline: "web", Number: 3}))
		if err != nil {
			t.Fatal(err)
		}
		if st := res.Msg.GetStages()[0]; st.GetStatus() != approved || len(st.GetEnvironmentsRunning()) != 0 ||
			!strings.Contains(st.GetDetail(), "rolled back to release 1") || !strings.Contains(st.GetDetail(), "login broken since 2") {
			t.Errorf("release 3 after a rollback to 1: %v", st)
		}
	})

	t.Run("a manifest not signed by a trusted key is not used", func(t *testing.T) {
		rogue := filepath.Join(t.TempDir(), "rogue.key")
		if _, err := manifest.GenerateKeyFiles(rogue); err != nil {
			t.Fatal(err)
		}
		ref := pushTree(t, gw, rogue, commit('8'), artifactTree{"bin/web*": "evil"})
		if _, err := admin.Release.CreateRelease(ctx(t), connect.NewRequest(&captainv1.CreateReleaseRequest{
			Pipeline: "web", HeadCommit: commit('8'), Artifact: ref,
		})); err != nil {
			t.Fatal(err)
		}
		diff, err := admin.Release.DiffReleases(ctx(t), connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: "web", From: 4, To: 7}))
		if err != nil {
			t.Fatal(err)
		}
		if len(diff.Msg.GetFiles()) != 0 || !strings.Contains(diff.Msg.GetFilesUnavailable(), "manifest of artifact "+ref.GetSha256()[:12]) ||
			!strings.Contains(diff.Msg.GetFilesUnavailable(), manifest.ErrBadSignature.Error()) {
			t.Fatalf("diff to a release signed by an unknown key = %v", diff.Msg)
		}
	})

	t.Run("unknown names give NotFound naming them", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			call func() error
			says string
		}{
			{"pipeline", func() error {
				_, err := admin.Operator.PreviewRollback(ctx(t), connect.NewRequest(&captainv1.PreviewRollbackRequest{Target: &captainv1.RollbackTarget{Pipeline: "api", AllStages: true}}))
				return err
			}, `pipeline "api"`},
			{"stage", func() error {
				_, err := admin.Operator.PreviewRollback(ctx(t), connect.NewRequest(&captainv1.PreviewRollbackRequest{Target: &captainv1.RollbackTarget{Pipeline: "web", Stages: []string{"moon"}}}))
				return err
			}, `stage "moon"`},
			{"environment", func() error {
				_, err := admin.Operator.Rollback(ctx(t), connect.NewRequest(&captainv1.RollbackRequest{Target: &captainv1.RollbackTarget{Pipeline: "web", Environments: []string{"mars"}}}))
				return err
			}, `environment "mars"`},
			{"environment history", func() error {
				_, err := admin.Deployment.ListDeployments(ctx(t), connect.NewRequest(&captainv1.ListDeploymentsRequest{Pipeline: "web", Environment: "mars"}))
				return err
			}, `"mars"`},
			{"commit", func() error {
				_, err := admin.Deployment.WhereIsCommit(ctx(t), connect.NewRequest(&captainv1.WhereIsCommitRequest{Commit: "ffffff"}))
				return err
			}, `"ffffff"`},
			{"release", func() error {
				_, err := admin.Release.GetRelease(ctx(t), connect.NewRequest(&captainv1.GetReleaseRequest{Pipeline: "web", Number: 9}))
				return err
			}, "release 9"},
			{"release in a diff", func() error {
				_, err := admin.Release.DiffReleases(ctx(t), connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: "web", From: 1, To: 9}))
				return err
			}, "no release 9"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := tc.call(); connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), tc.says) {
					t.Fatalf("err = %v, want NotFound saying %s", err, tc.says)
				}
			})
		}
	})
}
