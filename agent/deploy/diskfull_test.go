package deploy

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

func TestDiskFullFailsCleanlyAndKeepsTheOldRelease(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a 2 MiB tmpfs as the app root; run as root (CI does)")
	}
	h := newHost(t)
	if err := os.MkdirAll(h.appRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", h.appRoot, "tmpfs", 0, "size=2m,mode=0755"); err != nil {
		t.Skipf("cannot mount tmpfs on %s (%v): this sandbox does not allow mounts", h.appRoot, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(h.appRoot, 0); err != nil {
			t.Errorf("unmount %s: %v", h.appRoot, err)
		}
	})
	art1 := buildArtifact(t, h.bucket, h.key, appFiles(1))
	if res := h.deploy(desired(1, "d-1", art1, h.settings())); res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY {
		t.Fatalf("release 1: %v %s", res.State, res.Message)
	}
	// 3 MiB of incompressible data: the archive is fetched into the cache (not on the tmpfs)
	// and verifies, but extraction runs out of space.
	big := buildArtifact(t, h.bucket, h.key, bigFiles(t, 12, 256<<10))

	res := h.deploy(desired(2, "d-2", big, h.settings()))

	if res.State != captainv1.HostDeployState_HOST_DEPLOY_STATE_FAILED {
		t.Fatalf("state %v, want FAILED", res.State)
	}
	if !strings.Contains(res.Message, "no space left on device") || !strings.Contains(res.Message, "extract") {
		t.Errorf("message %q should say extraction ran out of space", res.Message)
	}
	if got := assertCurrentComplete(t, h.appRoot, art1.manifest); got != "releases/1-d-1" {
		t.Errorf("current -> %s, want the old release", got)
	}
	if dirs := h.releaseDirs(); !slices.Equal(dirs, []string{"1-d-1"}) {
		t.Errorf("release dirs %v: no .partial or half release may stay", dirs)
	}
	if a := h.app(); a.CurrentRelease != 1 || a.Desired.M != nil {
		t.Errorf("state: current %d desired %v", a.CurrentRelease, a.Desired.M)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(h.appRoot, &st); err == nil {
		t.Logf("tmpfs after the failure: %d of %d KiB free", st.Bavail*uint64(st.Bsize)/1024, st.Blocks*uint64(st.Bsize)/1024)
	}
}
