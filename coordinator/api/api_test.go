package api_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/coordinator/daemon"
	"github.com/captain-cd/captain/coordinator/raftnode"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func validSpec(name string) *captainv1.PipelineSpec {
	return &captainv1.PipelineSpec{
		Name:   name,
		Deploy: &captainv1.DeploySettings{AppRoot: "/srv/" + name, SystemdUnit: name + ".service"},
		Stages: []*captainv1.Stage{{
			Name: "onebox", Wave: 1,
			Environments: []*captainv1.Environment{{Name: "onebox", Selector: map[string]string{"role": "onebox"}}},
		}},
	}
}

func releaseReq(pipeline, requestID string, n int) *captainv1.CreateReleaseRequest {
	sum := fmt.Sprintf("%064x", n)
	return &captainv1.CreateReleaseRequest{
		Pipeline:   pipeline,
		Artifact:   &captainv1.ArtifactRef{Bucket: "b", Key: "artifacts/" + pipeline + "/" + sum + ".tar.zst", Sha256: sum, Size: 1},
		HeadCommit: fmt.Sprintf("%040x", n),
		RequestId:  requestID,
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// newToken creates a token with a role and waits until the node serving c knows it.
func newToken(t *testing.T, c *clustertest.Clients, name string, role captainv1.Role, ttl time.Duration) string {
	t.Helper()
	req := &captainv1.CreateTokenRequest{Name: name, Role: role}
	if ttl != 0 {
		req.Ttl = durationpb.New(ttl)
	}
	res, err := c.Token.CreateToken(ctx(t), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("create %s token: %v", name, err)
	}
	return res.Msg.GetSecret()
}

func TestApplyPipelineRejectsMalformedSpecsNamingTheField(t *testing.T) {
	c := clustertest.New(t, 1)
	cl := c.Client(c.Nodes[0], "")
	tests := []struct {
		name  string
		edit  func(*captainv1.PipelineSpec)
		field string
	}{
		{"missing name", func(s *captainv1.PipelineSpec) { s.Name = "" }, "name: required"},
		{"upper-case name", func(s *captainv1.PipelineSpec) { s.Name = "Web" }, "name: \"Web\" is not a valid name"},
		{"no stages", func(s *captainv1.PipelineSpec) { s.Stages = nil }, "stages: required"},
		{"empty selector", func(s *captainv1.PipelineSpec) { s.Stages[0].Environments[0].Selector = nil }, "stages[0].environments[0].selector: required"},
		{"no environments", func(s *captainv1.PipelineSpec) { s.Stages[0].Environments = nil }, "stages[0].environments: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec("web")
			tt.edit(s)
			_, err := cl.Pipeline.ApplyPipeline(ctx(t), connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: s}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err = %v, want InvalidArgument containing %q", err, tt.field)
			}
			var ce *connect.Error
			errors.As(err, &ce)
			found := false
			for _, d := range ce.Details() {
				if v, derr := d.Value(); derr == nil {
					if vr, ok := v.(*captainv1.ValidatePipelineResponse); ok && len(vr.GetViolations()) > 0 {
						found = true
					}
				}
			}
			if !found {
				t.Fatalf("error carries no ValidatePipelineResponse detail: %v", ce.Details())
			}
		})
	}
}

func TestApplyPipelineVersionsAndNoOps(t *testing.T) {
	c := clustertest.New(t, 1)
	cl := c.Client(c.Nodes[0], "")
	apply := func(s *captainv1.PipelineSpec) *captainv1.ApplyPipelineResponse {
		res, err := cl.Pipeline.ApplyPipeline(ctx(t), connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: s}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	first := apply(validSpec("web"))
	same := apply(validSpec("web"))
	changed := validSpec("web")
	changed.Description = "new"
	second := apply(changed)
	if first.GetPipeline().GetVersion() != 1 || !first.GetChanged() ||
		same.GetPipeline().GetVersion() != 1 || same.GetChanged() ||
		second.GetPipeline().GetVersion() != 2 || !second.GetChanged() {
		t.Fatalf("versions/changed = %d/%v, %d/%v, %d/%v; want 1/true, 1/false, 2/true",
			first.GetPipeline().GetVersion(), first.GetChanged(), same.GetPipeline().GetVersion(), same.GetChanged(),
			second.GetPipeline().GetVersion(), second.GetChanged())
	}
	if first.GetPipeline().GetSpec().GetDeploy().GetKeepReleases() == 0 {
		t.Fatalf("stored spec was not normalized: %v", first.GetPipeline().GetSpec().GetDeploy())
	}
	vs, err := cl.Pipeline.ListPipelineVersions(ctx(t), connect.NewRequest(&captainv1.ListPipelineVersionsRequest{Name: "web"}))
	if err != nil || len(vs.Msg.GetVersions()) != 2 || vs.Msg.GetVersions()[0].GetVersion() != 2 {
		t.Fatalf("versions = %v, %v; want [2 1]", vs, err)
	}
	old, err := cl.Pipeline.GetPipeline(ctx(t), connect.NewRequest(&captainv1.GetPipelineRequest{Name: "web", Version: 1}))
	if err != nil || old.Msg.GetPipeline().GetSpec().GetDescription() != "" {
		t.Fatalf("version 1 = %v, %v", old, err)
	}
	cur, err := cl.Pipeline.GetPipeline(ctx(t), connect.NewRequest(&captainv1.GetPipelineRequest{
		Name: "web", Read: &captainv1.ReadOptions{Consistent: true},
	}))
	if err != nil || cur.Msg.GetPipeline().GetVersion() != 2 {
		t.Fatalf("consistent current = %v, %v; want version 2", cur, err)
	}
}

func TestUnknownPipelineIsNotFoundNamingIt(t *testing.T) {
	c := clustertest.New(t, 1)
	cl := c.Client(c.Nodes[0], "")
	calls := map[string]func() error{
		"GetPipeline": func() error {
			_, err := cl.Pipeline.GetPipeline(ctx(t), connect.NewRequest(&captainv1.GetPipelineRequest{Name: "nope"}))
			return err
		},
		"CreateRelease": func() error {
			_, err := cl.Release.CreateRelease(ctx(t), connect.NewRequest(releaseReq("nope", "", 1)))
			return err
		},
		"ListReleases": func() error {
			_, err := cl.Release.ListReleases(ctx(t), connect.NewRequest(&captainv1.ListReleasesRequest{Pipeline: "nope"}))
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			err := call()
			if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), `"nope"`) {
				t.Fatalf("err = %v, want NotFound naming \"nope\"", err)
			}
		})
	}
}

func TestCreateReleaseIsIdempotentByRequestID(t *testing.T) {
	c := clustertest.New(t, 1)
	cl := c.Client(c.Nodes[0], "")
	if _, err := cl.Pipeline.ApplyPipeline(ctx(t), connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: validSpec("web")})); err != nil {
		t.Fatal(err)
	}
	first, err := cl.Release.CreateRelease(ctx(t), connect.NewRequest(releaseReq("web", "build-42", 1)))
	if err != nil {
		t.Fatal(err)
	}
	// Same request ID, even with a different body, returns the first release.
	again, err := cl.Release.CreateRelease(ctx(t), connect.NewRequest(releaseReq("web", "build-42", 2)))
	if err != nil {
		t.Fatal(err)
	}
	other, err := cl.Release.CreateRelease(ctx(t), connect.NewRequest(releaseReq("web", "build-43", 3)))
	if err != nil {
		t.Fatal(err)
	}
	if !first.Msg.GetCreated() || again.Msg.GetCreated() || again.Msg.GetRelease().GetNumber() != 1 ||
		again.Msg.GetRelease().GetArtifact().GetSha256() != first.Msg.GetRelease().GetArtifact().GetSha256() {
		t.Fatalf("retry = %v, want release 1 again with created=false", again.Msg)
	}
	if other.Msg.GetRelease().GetNumber() != 2 {
		t.Fatalf("next release = %d, want 2", other.Msg.GetRelease().GetNumber())
	}
	list, err := cl.Release.ListReleases(ctx(t), connect.NewRequest(&captainv1.ListReleasesRequest{Pipeline: "web"}))
	if err != nil || len(list.Msg.GetReleases()) != 2 || list.Msg.GetReleases()[0].GetNumber() != 2 {
		t.Fatalf("list = %v, %v; want releases 2, 1", list, err)
	}
	diff, err := cl.Release.DiffReleases(ctx(t), connect.NewRequest(&captainv1.DiffReleasesRequest{Pipeline: "web", From: 1, To: 2}))
	if err != nil || len(diff.Msg.GetCommits()) != 1 || diff.Msg.GetCommits()[0].GetSha() != fmt.Sprintf("%040x", 3) {
		t.Fatalf("diff = %v, %v; want the head commit of release 2", diff, err)
	}
}

func TestAuthenticationAndRoles(t *testing.T) {
	c := clustertest.New(t, 1)
	admin := c.Client(c.Nodes[0], "")
	if _, err := admin.Pipeline.ApplyPipeline(ctx(t), connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: validSpec("web")})); err != nil {
		t.Fatal(err)
	}
	viewer := newToken(t, admin, "alice", captainv1.Role_ROLE_VIEWER, 0)
	deployer := newToken(t, admin, "ci", captainv1.Role_ROLE_DEPLOYER, 0)
	revoked := newToken(t, admin, "old", captainv1.Role_ROLE_ADMIN, 0)
	expired := newToken(t, admin, "brief", captainv1.Role_ROLE_ADMIN, time.Millisecond)
	agent := newToken(t, admin, "host-join", captainv1.Role_ROLE_AGENT, 0)
	who, err := c.Client(c.Nodes[0], revoked).Token.WhoAmI(ctx(t), connect.NewRequest(&captainv1.WhoAmIRequest{}))
	if err != nil || who.Msg.GetToken().GetName() != "old" {
		t.Fatalf("whoami = %v, %v", who, err)
	}
	id, _ := strings.CutPrefix(revoked, "cpt_")
	id, _, _ = strings.Cut(id, "_")
	if _, err := admin.Token.RevokeToken(ctx(t), connect.NewRequest(&captainv1.RevokeTokenRequest{Id: id})); err != nil {
		t.Fatal(err)
	}

	createRelease := func(token string) error {
		_, err := c.Client(c.Nodes[0], token).Release.CreateRelease(ctx(t), connect.NewRequest(releaseReq("web", "", 1)))
		return err
	}
	tests := []struct {
		name     string
		token    string
		call     func(string) error
		code     connect.Code
		contains string
	}{
		{"wrong token", "cpt_nope_0000", createRelease, connect.CodeUnauthenticated, "unknown token"},
		{"no token", " ", createRelease, connect.CodeUnauthenticated, "no bearer token"},
		{"revoked token", revoked, createRelease, connect.CodeUnauthenticated, "revoked"},
		{"expired token", expired, createRelease, connect.CodeUnauthenticated, "expired"},
		{"viewer creating a release", viewer, createRelease, connect.CodePermissionDenied, "needs role deployer"},
		{"agent creating a release", agent, createRelease, connect.CodePermissionDenied, "needs role deployer"},
		{"deployer creating a token", deployer, func(tok string) error {
			_, err := c.Client(c.Nodes[0], tok).Token.CreateToken(ctx(t), connect.NewRequest(&captainv1.CreateTokenRequest{Name: "x", Role: captainv1.Role_ROLE_ADMIN}))
			return err
		}, connect.CodePermissionDenied, "needs role admin"},
		{"deployer creating a release", deployer, createRelease, 0, ""},
		{"viewer reading releases", viewer, func(tok string) error {
			_, err := c.Client(c.Nodes[0], tok).Release.ListReleases(ctx(t), connect.NewRequest(&captainv1.ListReleasesRequest{Pipeline: "web"}))
			return err
		}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(tt.token)
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("err = %v, want success", err)
				}
				return
			}
			if connect.CodeOf(err) != tt.code || !strings.Contains(err.Error(), tt.contains) {
				t.Fatalf("err = %v, want %s containing %q", err, tt.code, tt.contains)
			}
		})
	}

	// Every write above is in the audit log with its actor.
	evs, err := admin.Audit.ListAuditEvents(ctx(t), connect.NewRequest(&captainv1.ListAuditEventsRequest{Actor: "ci"}))
	if err != nil || len(evs.Msg.GetEvents()) != 1 || evs.Msg.GetEvents()[0].GetAction() != "release.create" {
		t.Fatalf("audit by ci = %v, %v; want one release.create", evs, err)
	}
	all, err := admin.Audit.ListAuditEvents(ctx(t), connect.NewRequest(&captainv1.ListAuditEventsRequest{
		Since: timestamppb.New(time.Now().Add(-time.Minute)),
	}))
	if err != nil || len(all.Msg.GetEvents()) < 8 {
		t.Fatalf("audit = %v, %v; want >= 8 events", all, err)
	}
	// Newest first; the engine's own events (the release moving through the pipeline) come
	// after the release.create that caused them.
	evsAll := all.Msg.GetEvents()
	for i := 1; i < len(evsAll); i++ {
		if evsAll[i].GetIndex() > evsAll[i-1].GetIndex() {
			t.Fatalf("audit not newest first at %d: %d after %d", i, evsAll[i].GetIndex(), evsAll[i-1].GetIndex())
		}
	}
}

func TestSecondDaemonOnSameDataDirFailsAtOnce(t *testing.T) {
	c := clustertest.New(t, 1)
	start := time.Now()
	// The very same flags as the running node: the data dir must be the complaint, not a port.
	n := c.Nodes[0]
	_, err := daemon.New(daemon.Config{NodeID: n.ID, DataDir: n.DataDir, RaftAddr: n.RaftAddr, APIAddr: n.APIAddr})
	if !errors.Is(err, raftnode.ErrDataDirInUse) || !strings.Contains(err.Error(), "is in use by another captaind") {
		t.Fatalf("err = %v, want ErrDataDirInUse with a clear message", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s to fail; want about the 1s lock timeout", d)
	}
}

func TestReflectionListsServicesAndGRPCClientListsPeers(t *testing.T) {
	c := clustertest.New(t, 1)
	hc := c.Nodes[0].Daemon().HTTPClient()
	base := c.Nodes[0].Daemon().BaseURL()
	rc := grpcreflect.NewClient(hc, base)
	stream := rc.NewStream(ctx(t))
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatalf("list services by reflection: %v", err)
	}
	want := map[string]bool{"captain.v1.ClusterService": false, "captain.v1.PipelineService": false}
	for _, n := range names {
		if _, ok := want[string(n)]; ok {
			want[string(n)] = true
		}
	}
	for n, ok := range want {
		if !ok {
			t.Errorf("reflection does not list %s (got %v)", n, names)
		}
	}
	fd, err := stream.FileContainingSymbol("captain.v1.ClusterService")
	if err != nil || len(fd) == 0 {
		t.Fatalf("file containing ClusterService: %v", err)
	}
	peers, err := clustertest.NewClients(hc, base, clustertest.AdminSecret, connect.WithGRPC()).
		Cluster.ListPeers(ctx(t), connect.NewRequest(&captainv1.ListPeersRequest{}))
	if err != nil || len(peers.Msg.GetPeers()) != 1 || !peers.Msg.GetPeers()[0].GetLeader() {
		t.Fatalf("ListPeers over gRPC = %v, %v", peers, err)
	}
	_, err = clustertest.NewClients(hc, base, "", connect.WithGRPC()).
		Cluster.ListPeers(ctx(t), connect.NewRequest(&captainv1.ListPeersRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("ListPeers over gRPC without token = %v, want Unauthenticated", err)
	}
}

func TestHealthReadyAndMetricsEndpoints(t *testing.T) {
	c := clustertest.New(t, 1)
	d := c.Nodes[0].Daemon()
	if _, err := c.Client(c.Nodes[0], "").Cluster.GetLeader(ctx(t), connect.NewRequest(&captainv1.GetLeaderRequest{})); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready: leader node0",
		"/metrics": `captain_api_requests_total{code="ok",procedure="/captain.v1.ClusterService/GetLeader"} 1`,
	} {
		res, err := d.HTTPClient().Get(d.BaseURL() + path)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, 1<<20)
		n, _ := readAll(res, body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(body[:n]), want) {
			t.Errorf("GET %s = %d, body lacks %q:\n%.2000s", path, res.StatusCode, want, body[:n])
		}
	}
}

func TestJoinValidatesAndRefusesToReplaceTheLeader(t *testing.T) {
	c := clustertest.New(t, 1)
	cl := c.Client(c.Nodes[0], "")
	tests := []struct {
		name string
		req  *captainv1.JoinRequest
		code connect.Code
	}{
		{"missing node id", &captainv1.JoinRequest{RaftAddress: "127.0.0.1:1", ApiAddress: "127.0.0.1:2"}, connect.CodeInvalidArgument},
		{"missing raft address", &captainv1.JoinRequest{NodeId: "x", ApiAddress: "127.0.0.1:2"}, connect.CodeInvalidArgument},
		{"leader's own id", &captainv1.JoinRequest{NodeId: c.Nodes[0].ID, RaftAddress: "127.0.0.1:1", ApiAddress: "127.0.0.1:2"}, connect.CodeFailedPrecondition},
		{"leader's own raft address", &captainv1.JoinRequest{NodeId: "other", RaftAddress: c.Nodes[0].RaftAddr, ApiAddress: "127.0.0.1:2"}, connect.CodeFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cl.Cluster.Join(ctx(t), connect.NewRequest(tt.req))
			if connect.CodeOf(err) != tt.code {
				t.Fatalf("err = %v, want %s", err, tt.code)
			}
		})
	}
	res, err := cl.Cluster.GetLeader(ctx(t), connect.NewRequest(&captainv1.GetLeaderRequest{}))
	if err != nil || res.Msg.GetLeader().GetApiAddress() != c.Nodes[0].APIAddr {
		t.Fatalf("leader after refused joins = %v, %v; want its API address %s intact", res, err, c.Nodes[0].APIAddr)
	}
}
