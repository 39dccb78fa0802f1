package archive_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/captain-cd/captain/artifacts/archive"
	"github.com/captain-cd/captain/artifacts/manifest"
)

func makeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "conf/z"), 0o750))
	must(os.WriteFile(filepath.Join(dir, "bin/app"), []byte("binary"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "conf/a.toml"), []byte("a=1"), 0o640))
	must(os.Symlink("bin/app", filepath.Join(dir, "run")))
}

func TestSameTreeGivesSameBytes(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	makeTree(t, a)
	makeTree(t, b)
	// Different mtimes and creation order must not matter.
	os.Chtimes(filepath.Join(b, "bin/app"), zeroTime(), zeroTime())
	ba, err := archive.WriteFile(context.Background(), a, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bb, err := archive.WriteFile(context.Background(), b, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if ba.SHA256 != bb.SHA256 || ba.Size != bb.Size {
		t.Fatalf("same tree, different archives: %s/%d vs %s/%d", ba.SHA256, ba.Size, bb.SHA256, bb.Size)
	}
	var paths []string
	for _, e := range ba.Entries {
		paths = append(paths, e.Path+":"+string(e.Type))
	}
	want := []string{"bin:dir", "bin/app:file", "conf:dir", "conf/a.toml:file", "conf/z:dir", "run:symlink"}
	if len(paths) != len(want) {
		t.Fatalf("entries = %v, want %v", paths, want)
	}
	for i := range want {
		if paths[i] != want[i] {
			t.Fatalf("entries = %v, want %v", paths, want)
		}
	}
	if ba.Entries[3].Mode != manifest.Mode(0o640) || ba.Entries[5].Target != "bin/app" {
		t.Errorf("entry details wrong: %+v", ba.Entries)
	}

	os.WriteFile(filepath.Join(b, "conf/a.toml"), []byte("a=2"), 0o640)
	bc, err := archive.WriteFile(context.Background(), b, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if bc.SHA256 == ba.SHA256 {
		t.Error("changed content gave the same archive hash")
	}
}

func TestWriteRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	if err := mkfifo(filepath.Join(dir, "pipe")); err != nil {
		t.Skipf("cannot make a fifo here: %v", err)
	}
	if _, err := archive.WriteFile(context.Background(), dir, t.TempDir()); err == nil {
		t.Fatal("a fifo was archived")
	}
}
