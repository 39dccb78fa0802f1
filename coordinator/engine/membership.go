package engine

import (
	"cmp"
	"slices"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Membership sorts hosts into the pipeline's environments by label selector. A host whose labels
// match two environments is in neither: deploying it would let two stages fight over it; it is
// reported in Conflicts instead.
func Membership(spec *captainv1.PipelineSpec, hosts []*captainv1.Host) (members map[string][]*captainv1.Host, byID map[string]*captainv1.Host) {
	members = map[string][]*captainv1.Host{}
	byID = make(map[string]*captainv1.Host, len(hosts))
	for _, h := range hosts {
		byID[h.GetId()] = h
		if envs := Matches(spec, h); len(envs) == 1 {
			members[envs[0]] = append(members[envs[0]], h)
		}
	}
	for env := range members {
		slices.SortFunc(members[env], func(a, b *captainv1.Host) int { return cmp.Compare(a.GetId(), b.GetId()) })
	}
	return members, byID
}

// Matches lists the environments of the pipeline whose selectors all match the host's labels.
func Matches(spec *captainv1.PipelineSpec, h *captainv1.Host) []string {
	var out []string
	for _, st := range spec.GetStages() {
		for _, env := range st.GetEnvironments() {
			if len(env.GetSelector()) > 0 && selects(env.GetSelector(), h.GetLabels()) {
				out = append(out, env.GetName())
			}
		}
	}
	return out
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}
