package fsm

import (
	"bytes"
	"io"
	"testing"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
)

type readCloser struct{ io.Reader }

func (readCloser) Close() error { return nil }

func mustDelim(t *testing.T, m proto.Message) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := protodelim.MarshalTo(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
