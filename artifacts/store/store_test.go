package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/artifacts/store"
)

const sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestParseRef(t *testing.T) {
	cases := []struct {
		in   string
		want store.Ref
		err  string
	}{
		{in: "s3://deploys/artifacts/web/" + sha + ".tar.zst", want: store.Ref{Bucket: "deploys", Pipeline: "web", SHA256: sha}},
		{in: "https://deploys/artifacts/web/" + sha + ".tar.zst", err: "want s3://"},
		{in: "s3://deploys/other/web/" + sha + ".tar.zst", err: "want s3://"},
		{in: "s3://deploys/artifacts/web/" + sha + ".zip", err: "want s3://"},
		{in: "s3://deploys/artifacts/Web!/" + sha + ".tar.zst", err: "pipeline name"},
		{in: "s3://deploys/artifacts/web/" + strings.ToUpper(sha) + ".tar.zst", err: "64 lowercase hex"},
		{in: "s3:///artifacts/web/" + sha + ".tar.zst", err: "bucket"},
	}
	for _, tc := range cases {
		got, err := store.ParseRef(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseRef(%q) err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || got.String() != tc.in {
			t.Errorf("ParseRef(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

func TestStoreAgainstGateway(t *testing.T) {
	gw := s3test.Start(t)
	st := gw.Store()
	ctx := context.Background()
	data := []byte("0123456789")
	if err := st.PutIfAbsent(ctx, "k/obj", bytes.NewReader(data), int64(len(data)), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutIfAbsent(ctx, "k/obj", bytes.NewReader(data), int64(len(data)), store.PutOptions{}); !errors.Is(err, store.ErrExists) {
		t.Errorf("second PutIfAbsent = %v, want ErrExists", err)
	}
	if info, err := st.Stat(ctx, "k/obj"); err != nil || info.Size != 10 {
		t.Errorf("Stat = %+v, %v", info, err)
	}
	rc, _, err := st.Get(ctx, "k/obj", 4)
	if err != nil {
		t.Fatal(err)
	}
	tail, _ := io.ReadAll(rc)
	rc.Close()
	if string(tail) != "456789" {
		t.Errorf("Get from offset 4 = %q", tail)
	}
	if _, err := st.Stat(ctx, "k/missing"); !errors.Is(err, store.ErrNotFound) || store.Transient(err) {
		t.Errorf("Stat of a missing key = %v, want ErrNotFound, not transient", err)
	}
	if _, _, err := st.Get(ctx, "k/missing", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of a missing key = %v, want ErrNotFound", err)
	}

	gw.Stop()
	_, err = st.Stat(ctx, "k/obj")
	if err == nil || !store.Transient(err) {
		t.Fatalf("Stat with the gateway stopped = %v, want a transient error", err)
	}
	gw.Restart()
	if b, err := st.ReadAll(ctx, "k/obj", 100); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("ReadAll after restart = %q, %v", b, err)
	}
	if _, err := st.ReadAll(ctx, "k/obj", 5); err == nil {
		t.Error("ReadAll accepted an object over its limit")
	}
}
