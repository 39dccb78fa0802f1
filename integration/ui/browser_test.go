package ui

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserPath finds Chromium or Chrome. In CI (CI set) a missing browser fails the test;
// elsewhere the test skips and says why.
func browserPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no Chromium or Chrome on PATH, and CI must run the browser tests: apt-get install chromium")
	}
	t.Skip("no Chromium or Chrome on PATH (apt-get install chromium); the browser tests need one")
	return ""
}

// artifactsDir is where failure screenshots go: $CAPTAIN_TEST_ARTIFACTS, or a fixed folder
// under the temp dir that outlives the test's own temp dirs.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("CAPTAIN_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "captain-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("artifacts dir %s: %v", dir, err)
	}
	return dir
}

// page is one browser tab against a UI base URL.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string
}

// newBrowser starts headless Chromium for the test; when the test fails, the tab's full page
// is saved as a PNG in the artifacts dir before the browser stops.
func newBrowser(t *testing.T, base string, width, height int) *page {
	t.Helper()
	exe := browserPath(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-extensions", true), chromedp.Flag("disable-sync", true), chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("force-color-profile", "srgb"), chromedp.Flag("disable-features", "Translate"),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(width, height),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	// The first Run starts the browser; it must not carry a timeout (see chromedp.Run).
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(int64(width), int64(height))); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("start %s: %v", exe, err)
	}
	p := &page{t: t, ctx: ctx, base: base}
	t.Cleanup(func() {
		if t.Failed() {
			p.screenshot(filepath.Join(artifactsDir(t), safeName(t.Name())+".png"))
		}
		cancel()
		cancelAlloc()
	})
	return p
}

func safeName(s string) string {
	return regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(s, "_")
}

func (p *page) screenshot(path string) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Logf("screenshot: %v", err)
		return
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Logf("screenshot: %v", err)
		return
	}
	p.t.Logf("screenshot of the page: %s", path)
}

// do runs browser steps with a deadline.
func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v (page %s)", what, err, p.location())
	}
}

func (p *page) location() string {
	ctx, cancel := context.WithTimeout(p.ctx, 2*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	return loc
}

func (p *page) open(path string) {
	p.t.Helper()
	p.do("open "+path, chromedp.Navigate(p.base+path), chromedp.WaitReady(chromedp.CSS("body")))
}

// text returns the visible text of the first element matching sel.
func (p *page) text(sel string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("text of %s: %v (page %s)", sel, err, p.location())
	}
	return s
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](p *page, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// waitText waits until the text of sel contains want (the element may come and go while the
// page redraws).
func (p *page) waitText(sel, want string, within time.Duration) {
	p.t.Helper()
	expr := fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? e.innerText : ""; })()`, sel)
	deadline := time.Now().Add(within)
	last := ""
	for {
		got, err := eval[string](p, expr)
		if err == nil && strings.Contains(got, want) {
			return
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			last = err.Error()
		} else {
			last = got
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("after %s, %s does not show %q; it shows %q (page %s)", within, sel, want, last, p.location())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exists says whether sel matches an element now.
func (p *page) exists(sel string) bool {
	p.t.Helper()
	ok, err := eval[bool](p, fmt.Sprintf(`document.querySelector(%q) !== null`, sel))
	if err != nil {
		p.t.Fatalf("query %s: %v", sel, err)
	}
	return ok
}

// signIn fills the sign-in form the way a person does.
func (p *page) signIn(token, next string) {
	p.t.Helper()
	p.open(next)
	p.do("sign in",
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#whoami")),
	)
}
