package push_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/captain-cd/captain/artifacts/archive"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/s3test"
	"github.com/captain-cd/captain/artifacts/store"
)

func key(t *testing.T) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func tree(t *testing.T, big int) string {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin/app"), []byte("app v1"), 0o755)
	os.Symlink("bin/app", filepath.Join(dir, "run"))
	if big > 0 {
		b := make([]byte, big)
		rand.Read(b)
		os.WriteFile(filepath.Join(dir, "blob"), b, 0o644)
	}
	return dir
}

func TestPushSameTreeTwiceIsNoop(t *testing.T) {
	gw := s3test.Start(t)
	st := gw.Store()
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		big      int
		partSize uint64
	}{
		{name: "single part", big: 0},
		{name: "multipart", big: 12 << 20, partSize: 5 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, k := tree(t, tc.big), key(t)
			opts := push.Options{Dir: dir, Pipeline: "web", Commit: "c1", Key: k, TempDir: t.TempDir(), PartSize: tc.partSize}
			first, err := push.Push(ctx, st, opts)
			if err != nil {
				t.Fatalf("first push: %v", err)
			}
			if first.Existed {
				t.Fatal("first push reported the artifact as already stored")
			}
			if want := "s3://" + gw.Bucket + "/artifacts/web/" + first.Ref.SHA256 + ".tar.zst"; first.URI != want {
				t.Errorf("URI = %s, want %s", first.URI, want)
			}
			if ref, err := store.ParseRef(first.URI); err != nil || ref != first.Ref {
				t.Errorf("ParseRef(%s) = %+v, %v", first.URI, ref, err)
			}
			opts.Commit, opts.Now = "c2", time.Now().Add(time.Hour) // a later build of the same tree
			second, err := push.Push(ctx, st, opts)
			if err != nil {
				t.Fatalf("second push: %v", err)
			}
			if !second.Existed || second.Ref != first.Ref {
				t.Errorf("second push = %+v, want a no-op on %v", second, first.Ref)
			}
			if second.Manifest.Commit != "c1" {
				t.Errorf("stored manifest commit = %s, want the first push's c1 kept", second.Manifest.Commit)
			}
		})
	}
}

func TestPushRefusesToOverwriteDifferentObject(t *testing.T) {
	gw := s3test.Start(t)
	st := gw.Store()
	ctx := context.Background()
	dir := tree(t, 0)
	built, err := archive.WriteFile(ctx, dir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(built.Path)
	ref := store.Ref{Bucket: gw.Bucket, Pipeline: "web", SHA256: built.SHA256}

	// Another writer put different bytes under the key this tree maps to.
	garbage := []byte("not the archive")
	if err := st.PutIfAbsent(ctx, ref.ArchiveKey(), bytes.NewReader(garbage), int64(len(garbage)), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = push.Push(ctx, st, push.Options{Dir: dir, Pipeline: "web", Commit: "c1", Key: key(t), TempDir: t.TempDir()})
	if !errors.Is(err, push.ErrConflict) || !strings.Contains(err.Error(), "refusing to overwrite "+ref.String()) {
		t.Fatalf("err = %v, want ErrConflict naming %s", err, ref)
	}
	got, err := os.ReadFile(gw.ObjectPath(ref.ArchiveKey()))
	if err != nil || !bytes.Equal(got, garbage) {
		t.Errorf("stored object changed: %q, %v", got, err)
	}
	// A direct conditional put on an existing key is refused by the server itself.
	err = st.PutIfAbsent(ctx, ref.ArchiveKey(), bytes.NewReader([]byte("x")), 1, store.PutOptions{})
	if !errors.Is(err, store.ErrExists) {
		t.Errorf("PutIfAbsent on an existing key: %v, want ErrExists", err)
	}
}

func TestPushWithWrongCredentialsSaysSo(t *testing.T) {
	gw := s3test.Start(t)
	cfg := gw.Config()
	cfg.Credentials = credentials.NewStaticV4(gw.AccessKey, "wrong-secret", "")
	st, err := store.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = push.Push(context.Background(), st, push.Options{Dir: tree(t, 0), Pipeline: "web", Commit: "c1", Key: key(t), TempDir: t.TempDir()})
	if !errors.Is(err, store.ErrAccessDenied) || !strings.Contains(err.Error(), "check AWS_ACCESS_KEY_ID") {
		t.Fatalf("err = %v, want ErrAccessDenied with a hint", err)
	}
}
