package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := NewRootCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestPipelineValidate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(`
name: web
deploy: {app_root: /srv/web}
stages:
  - name: onebox
    environments: [{name: onebox, selector: {role: onebox}}]
  - name: onebox
    batch: {max_unavailble: 1}
    environments: [{name: zone1, selector: {az: z1}}]
  - name: zone2
    batch: {max_unavailable: 150%}
    environments: [{name: zone2, selector: {az: z2}}]
`), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("example file prints ok", func(t *testing.T) {
		out, _, err := runCLI(t, "pipeline", "validate", "-f", "../examples/pipeline.yaml")
		if err != nil || out != "ok\n" {
			t.Fatalf("out=%q err=%v", out, err)
		}
	})
	t.Run("three mistakes give three lines naming the fields and an error", func(t *testing.T) {
		_, errOut, err := runCLI(t, "pipeline", "validate", "-f", bad)
		if err == nil || !strings.Contains(err.Error(), "3 errors") {
			t.Fatalf("err = %v, want 3 errors", err)
		}
		for _, field := range []string{"stages[1].batch.max_unavailble", "stages[1].name", "stages[2].batch.max_unavailable"} {
			if !strings.Contains(errOut, bad+": "+field+": ") {
				t.Errorf("stderr lacks %s:\n%s", field, errOut)
			}
		}
	})
	t.Run("json output lists violations", func(t *testing.T) {
		out, _, err := runCLI(t, "pipeline", "validate", "-f", bad, "-o", "json")
		if err == nil {
			t.Fatal("want error")
		}
		var got struct {
			Valid      bool
			Violations []struct{ Field, Description string }
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if got.Valid || len(got.Violations) != 3 {
			t.Fatalf("got %+v", got)
		}
	})
	t.Run("missing file is a clear error", func(t *testing.T) {
		_, _, err := runCLI(t, "pipeline", "validate", "-f", filepath.Join(dir, "nope.yaml"))
		if err == nil || !strings.Contains(err.Error(), "no such file") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown output format is refused", func(t *testing.T) {
		_, _, err := runCLI(t, "pipeline", "validate", "-f", bad, "-o", "yaml")
		if err == nil || !strings.Contains(err.Error(), "expected table or json") {
			t.Fatalf("err = %v", err)
		}
	})
}
