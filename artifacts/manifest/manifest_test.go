package manifest_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captain-cd/captain/artifacts/manifest"
)

const (
	sumA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	sumB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func sample() *manifest.Manifest {
	return &manifest.Manifest{
		FormatVersion: 1, Pipeline: "web", Commit: "0123abc", Builder: "ci",
		Created: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
		Archive: manifest.Archive{SHA256: sumA, Size: 1234},
		Files: []manifest.Entry{
			{Path: "bin", Type: manifest.TypeDir, Mode: 0o755},
			{Path: "bin/app", Type: manifest.TypeFile, Mode: 0o755, Size: 10, SHA256: sumB},
			{Path: "current", Type: manifest.TypeSymlink, Mode: 0o777, Target: "bin/app"},
		},
	}
}

func TestManifestRoundTripsThroughMarshalAndParse(t *testing.T) {
	b, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"mode": "0755"`)) {
		t.Errorf("mode not written as octal string:\n%s", b)
	}
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := m.Marshal()
	if !bytes.Equal(b, b2) {
		t.Errorf("re-marshal differs:\n%s\n%s", b, b2)
	}
}

func TestParseRejectsBrokenManifests(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(m *manifest.Manifest)
		raw    string
		want   string
	}{
		{name: "future format", mutate: func(m *manifest.Manifest) { m.FormatVersion = 2 }, want: "format_version 2"},
		{name: "bad pipeline", mutate: func(m *manifest.Manifest) { m.Pipeline = "../etc" }, want: "pipeline name"},
		{name: "missing commit", mutate: func(m *manifest.Manifest) { m.Commit = "" }, want: "commit is empty"},
		{name: "bad archive hash", mutate: func(m *manifest.Manifest) { m.Archive.SHA256 = "xyz" }, want: "archive.sha256"},
		{name: "parent traversal", mutate: func(m *manifest.Manifest) { m.Files[1].Path = "../x" }, want: "escapes"},
		{name: "absolute path", mutate: func(m *manifest.Manifest) { m.Files[1].Path = "/bin/app" }, want: "absolute"},
		{name: "unclean path", mutate: func(m *manifest.Manifest) { m.Files[1].Path = "bin//app" }, want: "clean form"},
		{name: "duplicate", mutate: func(m *manifest.Manifest) { m.Files[2] = m.Files[1] }, want: "listed twice"},
		{name: "setuid bit", mutate: func(m *manifest.Manifest) { m.Files[1].Mode = 0o4755 }, want: "beyond 0777"},
		{name: "unknown type", mutate: func(m *manifest.Manifest) { m.Files[1].Type = "fifo" }, want: "unknown type"},
		{name: "symlink to root", mutate: func(m *manifest.Manifest) { m.Files[2].Target = "/" }, want: "escapes"},
		{name: "symlink chain escaping", mutate: func(m *manifest.Manifest) {
			m.Files = append(m.Files,
				manifest.Entry{Path: "bin/up", Type: manifest.TypeSymlink, Mode: 0o777, Target: ".."},
				manifest.Entry{Path: "bin/esc", Type: manifest.TypeSymlink, Mode: 0o777, Target: "up/.."})
		}, want: `"bin/esc" -> "up/..": symlink target escapes`},
		{name: "symlink loop", mutate: func(m *manifest.Manifest) {
			m.Files = append(m.Files,
				manifest.Entry{Path: "l1", Type: manifest.TypeSymlink, Mode: 0o777, Target: "l2/x"},
				manifest.Entry{Path: "l2", Type: manifest.TypeSymlink, Mode: 0o777, Target: "l1/x"})
		}, want: "loops"},
		{name: "parent not a dir", mutate: func(m *manifest.Manifest) { m.Files[1].Path = "current/app" }, want: "not listed as a dir"},
		{name: "unknown field", raw: `{"format_version":1,"extra":true}`, want: "unknown field"},
		{name: "trailing data", raw: "{}{}", want: "trailing data"},
		{name: "mode not octal", raw: `{"format_version":1,"files":[{"path":"a","type":"dir","mode":"rwx"}]}`, want: "octal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.raw)
			if tc.mutate != nil {
				m := sample()
				tc.mutate(m)
				if _, err := m.Marshal(); err == nil || !errors.Is(err, manifest.ErrInvalid) {
					t.Fatalf("Marshal accepted a broken manifest: %v", err)
				}
				raw = mustJSON(t, m)
			}
			_, err := manifest.Parse(raw)
			if !errors.Is(err, manifest.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

func TestSignatureVerifiesOnlyExactBytesAndTrustedKeys(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "release.key")
	if _, err := manifest.GenerateKeyFiles(keyPath); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(keyPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode = %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := manifest.GenerateKeyFiles(keyPath); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("second keygen on the same path: %v", err)
	}
	priv, err := manifest.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := manifest.LoadTrustedKeys(keyPath + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := manifest.GenerateKeyFiles(filepath.Join(dir, "other.key")); err != nil {
		t.Fatal(err)
	}
	other, _ := manifest.LoadTrustedKeys(filepath.Join(dir, "other.key.pub"))

	b, _ := sample().Marshal()
	sig := manifest.Sign(priv, b)
	if _, err := trusted.VerifyAndParse(b, sig); err != nil {
		t.Fatalf("valid signature rejected: %v", err)
	}
	both := append(other, trusted...)
	if err := both.Verify(b, sig); err != nil {
		t.Errorf("key set containing the signer rejected: %v", err)
	}
	tampered := bytes.Replace(b, []byte(`"commit": "0123abc"`), []byte(`"commit": "0123abd"`), 1)
	badSig := bytes.Clone(sig)
	badSig[3] ^= 'A' ^ 'B'
	for name, c := range map[string]struct {
		keys manifest.TrustedKeys
		b, s []byte
	}{
		"tampered manifest":  {trusted, tampered, sig},
		"tampered signature": {trusted, b, badSig},
		"untrusted key":      {other, b, sig},
		"garbage signature":  {trusted, b, []byte("not base64!")},
	} {
		if err := c.keys.Verify(c.b, c.s); !errors.Is(err, manifest.ErrBadSignature) {
			t.Errorf("%s: err = %v, want ErrBadSignature", name, err)
		}
	}
	if _, err := manifest.LoadTrustedKeys(keyPath); err == nil {
		t.Error("a private key file was accepted as a public key")
	}
}

func TestDiffReportsAddedRemovedAndChanged(t *testing.T) {
	a, b := sample(), sample()
	b.Files[1].SHA256 = sumA                                                                                   // content
	b.Files[2].Target = "bin"                                                                                  // target
	b.Files = append(b.Files, manifest.Entry{Path: "new", Type: manifest.TypeFile, Mode: 0o600, SHA256: sumA}) // added
	b.Files[0].Mode = 0o700                                                                                    // mode
	a.Files = append(a.Files, manifest.Entry{Path: "old", Type: manifest.TypeDir, Mode: 0o755})                // removed
	got := manifest.Diff(a, b)
	want := []struct{ path, what string }{{"bin", "mode"}, {"bin/app", "content"}, {"current", "target"}, {"new", "added"}, {"old", "removed"}}
	if len(got) != len(want) {
		t.Fatalf("Diff = %+v", got)
	}
	for i, w := range want {
		if got[i].Path != w.path || got[i].What != w.what {
			t.Errorf("change %d = %s %s, want %s %s", i, got[i].Path, got[i].What, w.path, w.what)
		}
	}
	if s := manifest.Summary(got); s != "1 added, 1 removed, 3 changed" {
		t.Errorf("Summary = %q", s)
	}
	if d := manifest.Diff(a, a); len(d) != 0 {
		t.Errorf("Diff of a manifest with itself = %+v", d)
	}
}
