package manifest_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/captain-cd/captain/artifacts/manifest"
)

func mustJSON(t testing.TB, m *manifest.Manifest) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzManifestParse checks that Parse never panics and that whatever it accepts is valid,
// survives a Marshal/Parse round trip unchanged, and keeps every path inside the root.
func FuzzManifestParse(f *testing.F) {
	good, _ := sample().Marshal()
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"format_version":1,"pipeline":"p","commit":"c","created":"2026-01-01T00:00:00Z","archive":{"sha256":"` + sumA + `","size":1},"files":[{"path":"../x","type":"file","mode":"0644","sha256":"` + sumA + `"}]}`))
	f.Add([]byte(`{"format_version":1,"pipeline":"p","commit":"c","created":"2026-01-01T00:00:00Z","archive":{"sha256":"` + sumA + `","size":1},"files":[{"path":"d","type":"dir","mode":"0755"},{"path":"d/up","type":"symlink","mode":"0777","target":".."},{"path":"d/e","type":"symlink","mode":"0777","target":"up/.."}]}`))
	f.Add([]byte(`{"format_version":1,"files":[{"path":"a","type":"dir","mode":"7777"}]}`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := manifest.Parse(b)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Parse accepted a manifest Validate rejects: %v", err)
		}
		for _, e := range m.Files {
			if manifest.ValidPath(e.Path) != nil {
				t.Fatalf("accepted unsafe path %q", e.Path)
			}
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed manifest: %v", err)
		}
		m2, err := manifest.Parse(out)
		if err != nil {
			t.Fatalf("re-Parse: %v", err)
		}
		out2, _ := m2.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip not stable:\n%s\n%s", out, out2)
		}
	})
}
