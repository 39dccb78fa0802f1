package manifest

import (
	"fmt"
	"sort"
	"strings"
)

// Change is one path that differs between two manifests.
type Change struct {
	Path string `json:"path"`
	// What is "added", "removed", or for a changed path a comma-joined subset of
	// "type", "content", "mode", "target".
	What string `json:"what"`
	Old  *Entry `json:"old,omitempty"`
	New  *Entry `json:"new,omitempty"`
}

// Diff lists what changes when going from manifest a to manifest b, sorted by path.
func Diff(a, b *Manifest) []Change {
	am, bm := a.Lookup(), b.Lookup()
	var out []Change
	for p, ea := range am {
		eb, ok := bm[p]
		if !ok {
			out = append(out, Change{Path: p, What: "removed", Old: &ea})
			continue
		}
		if what := compare(ea, eb); what != "" {
			out = append(out, Change{Path: p, What: what, Old: &ea, New: &eb})
		}
	}
	for p, eb := range bm {
		if _, ok := am[p]; !ok {
			out = append(out, Change{Path: p, What: "added", New: &eb})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

func compare(a, b Entry) string {
	if a.Type != b.Type {
		return "type"
	}
	var parts []string
	if a.SHA256 != b.SHA256 || a.Size != b.Size {
		parts = append(parts, "content")
	}
	if a.Mode != b.Mode {
		parts = append(parts, "mode")
	}
	if a.Target != b.Target {
		parts = append(parts, "target")
	}
	return strings.Join(parts, ",")
}

// Summary counts the changes by kind, for one-line output.
func Summary(changes []Change) string {
	var add, rm, ch int
	for _, c := range changes {
		switch c.What {
		case "added":
			add++
		case "removed":
			rm++
		default:
			ch++
		}
	}
	return fmt.Sprintf("%d added, %d removed, %d changed", add, rm, ch)
}
