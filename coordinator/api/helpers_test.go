package api_test

import (
	"io"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/clustertest"
	"github.com/captain-cd/captain/pipelinespec"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func readAll(res *http.Response, buf []byte) (int, error) {
	n, err := io.ReadFull(res.Body, buf)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		err = nil
	}
	return n, err
}

// applyPipeline parses a pipeline.yaml and applies it through the API.
func applyPipeline(t *testing.T, admin *clustertest.Clients, yaml string) {
	t.Helper()
	spec, vs, err := pipelinespec.ParseYAML([]byte(yaml))
	if err != nil || len(vs) > 0 {
		t.Fatal(err, vs)
	}
	if _, err := admin.Pipeline.ApplyPipeline(ctx(t), connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: spec})); err != nil {
		t.Fatal(err)
	}
}
