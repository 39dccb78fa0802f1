// Package buildinfo reports the version stamped into Captain's binaries.
package buildinfo

import "runtime/debug"

// version is set at link time by the Makefile:
// -ldflags "-X github.com/captain-cd/captain/buildinfo.version=$(git describe)".
var version string

// Version returns the stamped version, else the module version recorded by `go install`,
// else the VCS revision Go embedded, else "dev".
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		return "dev-" + rev + dirty
	}
	return "devel"
}
