package deploy

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/captain-cd/captain/agent/localstate"
	"github.com/captain-cd/captain/artifacts/manifest"
	"github.com/captain-cd/captain/pipelinespec"
)

// prune removes release directories beyond keep (the pipeline's keep_releases; 0 means the
// default). It never removes the directory current points at, the last good one, the one a
// deployment in progress uses, or the newest directory of every release in keepReleases
// (the coordinator's last good). Kept are those plus the newest others, up to keep in all.
// Directories are forgotten in local state before they are removed, so a crash in between
// leaves an unlisted directory that the next prune removes.
func (d *Deployer) prune(pipeline string, keepReleases []uint64, keep uint32) error {
	if keep == 0 {
		keep = pipelinespec.DefaultKeepReleases
	}
	var app *localstate.App
	d.State.View(func(st *localstate.State) { app = st.Apps[pipeline] })
	if app == nil || app.AppRoot == "" {
		return nil
	}
	relDir := filepath.Join(app.AppRoot, ReleasesDir)
	protected := map[string]bool{}
	for _, dir := range []string{app.CurrentDir, app.LastGoodDir, app.ReleaseDir} {
		if dir != "" {
			protected[dir] = true
		}
	}
	// Trust the disk over the state for the one directory that matters most.
	if cur, err := ReadCurrent(app.AppRoot); err == nil && cur != "" {
		protected[filepath.Base(cur)] = true
	} else if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	newest := slices.Clone(app.Releases)
	slices.SortStableFunc(newest, func(a, b localstate.Release) int { return b.CreatedAt.Compare(a.CreatedAt) })
	for _, want := range keepReleases {
		if i := slices.IndexFunc(newest, func(r localstate.Release) bool { return r.Release == want }); i >= 0 {
			protected[newest[i].Dir] = true
		}
	}
	kept := map[string]bool{}
	for dir := range protected {
		if _, ok := app.FindRelease(dir); ok {
			kept[dir] = true
		}
	}
	var drop []string
	for _, r := range newest {
		switch {
		case kept[r.Dir]:
		case len(kept) < int(keep):
			kept[r.Dir] = true
		default:
			drop = append(drop, r.Dir)
		}
	}
	// Directories of ours that local state does not list: a crash between forgetting and
	// removing, an abandoned deployment's extraction, or a stale .partial.
	ents, err := os.ReadDir(relDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("prune: list %s: %w", relDir, err)
	}
	for _, e := range ents {
		name := e.Name()
		if _, listed := app.FindRelease(name); listed || protected[name] || !releaseDirRE.MatchString(name) {
			continue
		}
		if m := releaseDirRE.FindStringSubmatch(name); m[3] != "" && protected[name[:len(name)-len(m[3])]] {
			continue // the in-progress extraction's .partial
		}
		drop = append(drop, name)
	}
	if len(drop) == 0 {
		return nil
	}
	slices.SortFunc(drop, cmp.Compare)
	err = d.State.Update(func(st *localstate.State) error {
		a := st.App(pipeline)
		a.Releases = slices.DeleteFunc(a.Releases, func(r localstate.Release) bool { return slices.Contains(drop, r.Dir) })
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range drop {
		d.log().Info("pruning release directory", "pipeline", pipeline, "dir", filepath.Join(relDir, dir))
		if err := removeTree(filepath.Join(relDir, dir)); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// pruneCache removes cached artifacts that nothing on disk was extracted from and no
// deployment in progress uses. The cache is listed before local state is read: a deployment
// records its desired artifact before fetching, so any file listed was either fetched for
// a deployment the state already shows or is garbage.
func (d *Deployer) pruneCache() error {
	if d.CacheDir == "" {
		return nil
	}
	ents, err := os.ReadDir(d.CacheDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("list artifact cache: %w", err)
	}
	used := map[string]bool{}
	d.State.View(func(st *localstate.State) {
		for _, a := range st.Apps {
			for _, r := range a.Releases {
				used[r.SHA256] = true
			}
			if want := a.Desired.M; want != nil {
				used[want.GetArtifact().GetSha256()] = true
			}
		}
	})
	var errs []error
	for _, e := range ents {
		// Entries are <sha256>.<suffix>; dot files are downloads in progress (the fetcher
		// sweeps abandoned ones itself).
		sha, _, ok := strings.Cut(e.Name(), ".")
		if !ok || strings.HasPrefix(e.Name(), ".") || !manifest.ValidSHA256(sha) || used[sha] {
			continue
		}
		d.log().Info("removing unused artifact from the cache", "file", e.Name())
		if err := os.Remove(filepath.Join(d.CacheDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
