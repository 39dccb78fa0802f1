package devcmd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/signer"

	"github.com/captain-cd/captain/artifacts/extract"
	"github.com/captain-cd/captain/artifacts/fetch"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/artifacts/push"
	"github.com/captain-cd/captain/artifacts/store"
)

var testAuth = s3Auth{access: "captaindev", secret: "0123456789abcdef", region: s3Region}

func startTestS3(t *testing.T) *embeddedS3 {
	t.Helper()
	e, err := startEmbeddedS3(testAuth, bucket, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return e
}

func testStore(t *testing.T, e *embeddedS3, auth s3Auth, transport http.RoundTripper) *store.Store {
	t.Helper()
	st, err := store.New(store.Config{Endpoint: e.endpoint, Region: auth.region, Bucket: bucket,
		Credentials: credentials.NewStaticV4(auth.access, auth.secret, ""), Transport: transport})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// tree writes a small artifact tree plus size random bytes, which do not compress: above the
// part size the upload becomes multipart.
func tree(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	blob := make([]byte, size)
	_, _ = rand.Read(blob)
	for name, b := range map[string][]byte{"VERSION": []byte("1.0.0\n"), "config.json": []byte(`{"greeting": "hello"}`), "blob": blob} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// cutOnce is a transport that breaks the first archive download halfway, as a dropped
// connection would, so that the fetcher has to resume it with a ranged GET.
type cutOnce struct {
	mu     sync.Mutex
	cut    bool
	ranges []string
}

func (c *cutOnce) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, ".tar.zst") {
		return resp, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := req.Header.Get("Range"); r != "" {
		c.ranges = append(c.ranges, r)
	}
	if !c.cut && resp.StatusCode == http.StatusOK {
		c.cut = true
		resp.Body = &brokenBody{r: io.LimitReader(resp.Body, resp.ContentLength/2), c: resp.Body}
	}
	return resp, nil
}

type brokenBody struct {
	r io.Reader
	c io.Closer
}

func (b *brokenBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *brokenBody) Close() error { return b.c.Close() }

// TestEmbeddedS3ServesEverythingCaptainDoes runs Captain's own push and fetch against the
// embedded store through minio-go, signing with the demo's region: single and multipart
// uploads, If-None-Match on existing keys, stat, manifest reads and a download resumed with a
// ranged GET.
func TestEmbeddedS3ServesEverythingCaptainDoes(t *testing.T) {
	e := startTestS3(t)
	ctx := context.Background()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		size     int
		partSize uint64
	}{
		{"single PUT", 64 << 10, 0},
		{"multipart", 11 << 20, 5 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := testStore(t, e, testAuth, nil)
			src := tree(t, tc.size)
			opts := push.Options{Dir: src, Pipeline: "web", Commit: "c1c1c1c", Key: priv, TempDir: t.TempDir(), PartSize: tc.partSize}
			res, err := push.Push(ctx, st, opts)
			if err != nil {
				t.Fatalf("push: %v", err)
			}
			if res.Existed {
				t.Fatalf("first push says the artifact existed")
			}
			info, err := st.Stat(ctx, res.ArchiveKey)
			if err != nil || info.Size != res.Size {
				t.Fatalf("stat archive: %+v, %v; want size %d", info, err, res.Size)
			}
			again, err := push.Push(ctx, st, opts)
			if err != nil || !again.Existed {
				t.Fatalf("second push of the same tree: existed %v, err %v; want existed, no error", again != nil && again.Existed, err)
			}
			// The manifest is what the coordinator's reader and `release diff` download.
			mb, err := st.ReadAll(ctx, res.ManifestKey, 1<<20)
			if err != nil {
				t.Fatalf("read manifest: %v", err)
			}
			if _, err := manifest.Parse(mb); err != nil {
				t.Fatalf("stored manifest: %v", err)
			}
			if _, err := st.Stat(ctx, "artifacts/web/missing.tar.zst"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("stat of a missing key: %v, want ErrNotFound", err)
			}

			cut := &cutOnce{}
			f := &fetch.Fetcher{Store: testStore(t, e, testAuth, cut), CacheDir: t.TempDir(), Trusted: manifest.TrustedKeys{pub},
				Retry: fetch.Retry{Attempts: 3, Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
			a, err := f.Fetch(ctx, res.Ref)
			if err != nil {
				t.Fatalf("fetch: %v", err)
			}
			if len(cut.ranges) == 0 {
				t.Errorf("the cut download was not resumed with a ranged GET")
			}
			out := filepath.Join(t.TempDir(), "out")
			if err := a.Extract(ctx, out, extract.Limits{}); err != nil {
				t.Fatalf("extract: %v", err)
			}
			for _, name := range []string{"VERSION", "config.json", "blob"} {
				want, _ := os.ReadFile(filepath.Join(src, name))
				got, err := os.ReadFile(filepath.Join(out, name))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s differs after push, fetch and extract (err %v)", name, err)
				}
			}
		})
	}
}

// TestEmbeddedS3NeverOverwrites checks the conditional put push relies on: an existing key
// refuses a second PutIfAbsent and keeps its first content, and a push whose manifest differs
// from the stored one fails instead of replacing it.
func TestEmbeddedS3NeverOverwrites(t *testing.T) {
	e := startTestS3(t)
	st := testStore(t, e, testAuth, nil)
	ctx := context.Background()
	big := func(b byte) []byte { return bytes.Repeat([]byte{b}, 6<<20) }
	for _, tc := range []struct {
		name          string
		first, second []byte
		partSize      uint64
	}{
		{"single PUT", []byte("first"), []byte("second"), 0},
		// gofakes3 alone would let CompleteMultipartUpload replace the object.
		{"multipart", big('a'), big('b'), 5 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "artifacts/web/" + strings.ReplaceAll(tc.name, " ", "-")
			put := func(b []byte) error {
				return st.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b)), store.PutOptions{PartSize: tc.partSize})
			}
			if err := put(tc.first); err != nil {
				t.Fatal(err)
			}
			if err := put(tc.second); !errors.Is(err, store.ErrExists) {
				t.Fatalf("PutIfAbsent on an existing key: %v, want ErrExists", err)
			}
			if b, err := st.ReadAll(ctx, key, 10<<20); err != nil || !bytes.Equal(b, tc.first) {
				t.Fatalf("after the refused put the key holds %d other bytes (%v), want the first upload", len(b), err)
			}
		})
	}

	key := "artifacts/web/single-PUT"
	rc, size, err := st.Get(ctx, key, 2)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	_ = rc.Close()
	if string(b) != "rst" || size != 3 {
		t.Errorf("Get from offset 2: %q, size %d; want %q, size 3", b, size, "rst")
	}

	// Another key pair signing the same tree makes another signature object: push must
	// refuse it, leaving the stored one in place.
	_, priv1, _ := ed25519.GenerateKey(rand.Reader)
	_, priv2, _ := ed25519.GenerateKey(rand.Reader)
	src := tree(t, 1024)
	now := time.Now()
	first, err := push.Push(ctx, st, push.Options{Dir: src, Pipeline: "web", Commit: "c1", Key: priv1, TempDir: t.TempDir(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := st.ReadAll(ctx, first.SignatureKey, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := push.Push(ctx, st, push.Options{Dir: src, Pipeline: "web", Commit: "c1", Key: priv2, TempDir: t.TempDir(), Now: now}); !errors.Is(err, push.ErrConflict) {
		t.Fatalf("push signed by another key: %v, want ErrConflict", err)
	}
	if after, err := st.ReadAll(ctx, first.SignatureKey, 4096); err != nil || !bytes.Equal(after, sig) {
		t.Fatalf("the stored signature changed (err %v)", err)
	}
}

// TestEmbeddedS3RefusesOtherCredentials checks that the store, which gofakes3 alone leaves
// open, takes only the demo's key pair and region.
func TestEmbeddedS3RefusesOtherCredentials(t *testing.T) {
	e := startTestS3(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		auth   s3Auth
		denied bool // store maps the answer to ErrAccessDenied
	}{
		{"wrong secret", s3Auth{access: testAuth.access, secret: "not-the-secret", region: s3Region}, true},
		{"unknown access key", s3Auth{access: "someone", secret: testAuth.secret, region: s3Region}, true},
		{"other region", s3Auth{access: testAuth.access, secret: testAuth.secret, region: "eu-west-1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := testStore(t, e, tc.auth, nil)
			err := st.PutIfAbsent(ctx, "artifacts/web/"+strings.ReplaceAll(tc.name, " ", "-"), strings.NewReader("x"), 1, store.PutOptions{})
			if err == nil {
				t.Fatalf("upload with %s succeeded", tc.name)
			}
			if tc.denied && !errors.Is(err, store.ErrAccessDenied) {
				t.Errorf("upload with %s: %v, want ErrAccessDenied", tc.name, err)
			}
			if _, err := st.Stat(ctx, "artifacts/web/anything"); err == nil || errors.Is(err, store.ErrNotFound) {
				t.Errorf("stat with %s: %v, want a refusal", tc.name, err)
			}
		})
	}
	resp, err := http.Get(e.endpoint + "/" + bucket + "/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("anonymous listing: %s, want 403", resp.Status)
	}
}

// sha256Hasher is the hasher minio-go's streaming signer takes.
type sha256Hasher struct{ hash.Hash }

func (sha256Hasher) Close() {}

// TestEmbeddedS3RefusesAlteredChunks signs an aws-chunked upload with minio-go's signer, then
// changes one byte of data: the chunk signature no longer matches and nothing is stored.
func TestEmbeddedS3RefusesAlteredChunks(t *testing.T) {
	e := startTestS3(t)
	for _, tc := range []struct {
		name   string
		tamper bool
		stored bool
	}{
		{"as signed", false, true},
		{"one byte changed", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "/" + bucket + "/chunked-" + strings.ReplaceAll(tc.name, " ", "-")
			data := []byte("hello, chunked world")
			req, err := http.NewRequest(http.MethodPut, e.endpoint+key, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			req = signer.StreamingSignV4(req, testAuth.access, testAuth.secret, "", s3Region, int64(len(data)), time.Now().UTC(), sha256Hasher{sha256.New()})
			body, err := io.ReadAll(req.Body)
			if err != nil {
				t.Fatal(err)
			}
			if tc.tamper {
				i := bytes.Index(body, data)
				body[i] ^= 1
			}
			req.Body = io.NopCloser(bytes.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if ok := resp.StatusCode == http.StatusOK; ok != tc.stored {
				t.Fatalf("PUT answered %s; want stored=%v", resp.Status, tc.stored)
			}
			st := testStore(t, e, testAuth, nil)
			b, err := st.ReadAll(context.Background(), strings.TrimPrefix(key, "/"+bucket+"/"), 1024)
			switch {
			case tc.stored && (err != nil || !bytes.Equal(b, data)):
				t.Errorf("stored object: %q (%v), want %q", b, err, data)
			case !tc.stored && !errors.Is(err, store.ErrNotFound):
				t.Errorf("altered upload: reading it back gave %q (%v), want ErrNotFound", b, err)
			}
		})
	}
}

// TestChooseS3 checks --s3 against a machine with and without versitygw: auto falls back to
// the embedded store and says so, versitygw insists on the binary.
func TestChooseS3(t *testing.T) {
	withGW := t.TempDir()
	gw := filepath.Join(withGW, "bin", "versitygw")
	if err := os.MkdirAll(filepath.Dir(gw), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gw, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	without := t.TempDir()
	for _, tc := range []struct {
		name, gopath, mode string
		wantBin            string
		wantWhy, wantErr   bool
	}{
		{"auto with versitygw", withGW, "auto", gw, false, false},
		{"auto without versitygw", without, "auto", "", true, false},
		{"versitygw installed", withGW, "versitygw", gw, false, false},
		{"versitygw missing", without, "versitygw", "", false, true},
		{"embedded although versitygw is installed", withGW, "embedded", "", false, false},
		{"unknown mode", withGW, "minio", "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Only GOPATH/bin can offer versitygw: PATH holds nothing.
			t.Setenv("PATH", without)
			t.Setenv("GOPATH", tc.gopath)
			bin, why, err := chooseS3(tc.mode)
			if (err != nil) != tc.wantErr || bin != tc.wantBin || (why != "") != tc.wantWhy {
				t.Errorf("chooseS3(%q) = %q, %q, %v; want bin %q, a reason %v, an error %v", tc.mode, bin, why, err, tc.wantBin, tc.wantWhy, tc.wantErr)
			}
		})
	}
}
