package api_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/ops/cli/clientcfg"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// TestGenericClientRollsBackThroughReflection does what grpcurl or buf curl do: it learns
// OperatorService from server reflection alone, builds the request from JSON with dynamicpb,
// and calls Rollback over the gRPC protocol. The typed client only sets the scene and checks.
func TestGenericClientRollsBackThroughReflection(t *testing.T) {
	c := clustertest.New(t, 1)
	admin := c.Client(c.Nodes[0], "")
	joinToken := newToken(t, admin, "fleet", captainv1.Role_ROLE_AGENT, 0)
	applyPipeline(t, admin, `
name: web
deploy: {app_root: /srv/web}
stages:
  - name: zone1
    environments: [{name: zone1, selector: {az: z1}}]
`)
	playAgent(t, c, joinToken, map[string]string{"az": "z1"})
	for n := 1; n <= 2; n++ {
		sha := strings.Repeat(fmt.Sprint(n), 64)
		if _, err := admin.Release.CreateRelease(ctx(t), connect.NewRequest(&captainv1.CreateReleaseRequest{
			Pipeline: "web", HeadCommit: strings.Repeat(fmt.Sprint(n), 40),
			Artifact: &captainv1.ArtifactRef{Bucket: "b", Key: "artifacts/web/" + sha + ".tar.zst", Sha256: sha},
		})); err != nil {
			t.Fatal(err)
		}
		clustertest.Eventually(t, 15*time.Second, envOn(t, admin, uint64(n)))
	}

	hc := c.Nodes[0].Daemon().HTTPClient()
	base := c.Nodes[0].Daemon().BaseURL()
	stream := grpcreflect.NewClient(hc, base).NewStream(ctx(t))
	fds, err := stream.FileContainingSymbol("captain.v1.OperatorService")
	if _, cerr := stream.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	files, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: fds})
	if err != nil {
		t.Fatalf("descriptors from reflection: %v", err)
	}
	d, err := files.FindDescriptorByName("captain.v1.OperatorService")
	if err != nil {
		t.Fatal(err)
	}
	method := d.(protoreflect.ServiceDescriptor).Methods().ByName("Rollback")
	if method == nil {
		t.Fatal("reflection: OperatorService has no Rollback method")
	}

	req := dynamicpb.NewMessage(method.Input())
	body := `{"target": {"pipeline": "web", "environments": ["zone1"], "toRelease": "1"}, "reason": "via reflection", "requestId": "rb-reflect"}`
	if err := protojson.Unmarshal([]byte(body), req); err != nil {
		t.Fatalf("request JSON against the reflected schema: %v", err)
	}
	client := connect.NewClient[dynamicpb.Message, dynamicpb.Message](hc,
		base+"/"+string(method.Parent().FullName())+"/"+string(method.Name()),
		connect.WithGRPC(), connect.WithSchema(method),
		connect.WithInterceptors(clientcfg.BearerInterceptor(clustertest.AdminSecret)),
		connect.WithResponseInitializer(func(spec connect.Spec, msg any) error {
			if m, ok := msg.(*dynamicpb.Message); ok {
				*m = *dynamicpb.NewMessage(spec.Schema.(protoreflect.MethodDescriptor).Output())
			}
			return nil
		}))
	res, err := client.CallUnary(ctx(t), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("Rollback over gRPC with a reflected schema: %v", err)
	}
	out, err := protojson.Marshal(res.Msg)
	if err != nil {
		t.Fatal(err)
	}
	// Read the answer through the typed message to assert on it.
	var got captainv1.RollbackResponse
	if err := protojson.Unmarshal(out, &got); err != nil {
		t.Fatalf("answer %s: %v", out, err)
	}
	if deps := got.GetDeployments(); len(deps) != 1 || deps[0].GetKind() != captainv1.DeploymentKind_DEPLOYMENT_KIND_ROLLBACK ||
		deps[0].GetRelease() != 1 || deps[0].GetFromRelease() != 2 || deps[0].GetTrigger().GetReason() != "via reflection" {
		t.Fatalf("rollback answer = %s", out)
	}
	clustertest.Eventually(t, 15*time.Second, envOn(t, admin, 1))
}

// envOn waits until environment zone1 of pipeline web runs release n.
func envOn(t *testing.T, admin *clustertest.Clients, n uint64) func() error {
	return func() error {
		st, err := admin.Deployment.GetStatus(ctx(t), connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: "web"}))
		if err != nil {
			return err
		}
		if cur := st.Msg.GetStages()[0].GetEnvironments()[0].GetCurrentRelease(); cur != n {
			return fmt.Errorf("zone1 runs #%d, want #%d", cur, n)
		}
		return nil
	}
}
