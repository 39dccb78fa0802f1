package state

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"

	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Reader is a consistent view of the store. Returned rows are shared: never modify them.
type Reader struct {
	txn   *memdb.Txn
	index uint64
}

// Index is the Raft index the view reflects.
func (r *Reader) Index() uint64 { return r.index }

func first[T any](r *Reader, tbl, what string, key string) (T, error) {
	var zero T
	raw, err := r.txn.First(tbl, "id", key)
	if err != nil {
		return zero, fmt.Errorf("read %s %q: %w", what, key, err)
	}
	if raw == nil {
		return zero, fmt.Errorf("%s %q: %w", what, key, ErrNotFound)
	}
	return raw.(T), nil
}

func list[T any](r *Reader, tbl, index string, reverse bool, prefix string, limit int, keep func(T) bool) ([]T, error) {
	var it memdb.ResultIterator
	var err error
	switch {
	case prefix != "" && reverse:
		it, err = r.txn.GetReverse(tbl, index+"_prefix", prefix)
	case prefix != "":
		it, err = r.txn.Get(tbl, index+"_prefix", prefix)
	case reverse:
		it, err = r.txn.GetReverse(tbl, index)
	default:
		it, err = r.txn.Get(tbl, index)
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", tbl, err)
	}
	var out []T
	for raw := it.Next(); raw != nil; raw = it.Next() {
		v := raw.(T)
		if keep != nil && !keep(v) {
			continue
		}
		out = append(out, v)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out, nil
}

// Pipeline returns a version of a pipeline; version 0 is the current one.
func (r *Reader) Pipeline(name string, version uint64) (*captainv1.Pipeline, error) {
	if version == 0 {
		vs, err := list[*captainv1.Pipeline](r, tablePipelines, "id", true, name+"/", 1, nil)
		if err != nil {
			return nil, err
		}
		if len(vs) == 0 {
			return nil, fmt.Errorf("pipeline %q: %w", name, ErrNotFound)
		}
		return vs[0], nil
	}
	p, err := first[*captainv1.Pipeline](r, tablePipelines, "pipeline version", pipelineKey(name, version))
	if err != nil {
		return nil, fmt.Errorf("pipeline %q version %d: %w", name, version, ErrNotFound)
	}
	return p, nil
}

// PipelineVersions returns every version of a pipeline, newest first.
func (r *Reader) PipelineVersions(name string) ([]*captainv1.Pipeline, error) {
	vs, err := list[*captainv1.Pipeline](r, tablePipelines, "id", true, name+"/", 0, nil)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("pipeline %q: %w", name, ErrNotFound)
	}
	return vs, nil
}

// Pipelines returns the current version of every pipeline, by name.
func (r *Reader) Pipelines() ([]*captainv1.Pipeline, error) {
	all, err := list[*captainv1.Pipeline](r, tablePipelines, "id", false, "", 0, nil)
	if err != nil {
		return nil, err
	}
	var out []*captainv1.Pipeline
	for _, p := range all {
		// Versions of one name are consecutive and ascending: keep the last of each run.
		if n := len(out); n > 0 && out[n-1].GetSpec().GetName() == p.GetSpec().GetName() {
			out[n-1] = p
			continue
		}
		out = append(out, p)
	}
	// Keys order "web-2/" before "web/"; callers want names in order.
	sort.Slice(out, func(i, j int) bool { return out[i].GetSpec().GetName() < out[j].GetSpec().GetName() })
	return out, nil
}

// Release returns one release.
func (r *Reader) Release(pipeline string, number uint64) (*captainv1.Release, error) {
	rel, err := first[*captainv1.Release](r, tableReleases, "release", releaseKey(pipeline, number))
	if err != nil {
		return nil, fmt.Errorf("release %d of pipeline %q: %w", number, pipeline, ErrNotFound)
	}
	return rel, nil
}

// ReleaseByRequest returns the release a request ID created.
func (r *Reader) ReleaseByRequest(requestID string) (*captainv1.Release, error) {
	raw, err := r.txn.First(tableReleases, "request", requestID)
	if err != nil {
		return nil, fmt.Errorf("read release by request %q: %w", requestID, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("release for request %q: %w", requestID, ErrNotFound)
	}
	return raw.(*captainv1.Release), nil
}

// Releases returns a pipeline's releases newest first, below before (0: from the newest).
func (r *Reader) Releases(pipeline string, before uint64, limit int) ([]*captainv1.Release, error) {
	return list(r, tableReleases, "id", true, pipeline+"/", limit, func(rel *captainv1.Release) bool {
		return before == 0 || rel.GetNumber() < before
	})
}

// LastReleaseNumber is the highest release number of a pipeline, 0 when none.
func (r *Reader) LastReleaseNumber(pipeline string) (uint64, error) {
	rs, err := r.Releases(pipeline, 0, 1)
	if err != nil || len(rs) == 0 {
		return 0, err
	}
	return rs[0].GetNumber(), nil
}

// Deployment returns one deployment.
func (r *Reader) Deployment(id string) (*captainv1.Deployment, error) {
	return first[*captainv1.Deployment](r, tableDeployments, "deployment", id)
}

// Deployments returns a pipeline's deployments, optionally of one environment.
func (r *Reader) Deployments(pipeline, environment string) ([]*captainv1.Deployment, error) {
	prefix := pipeline + "/"
	if environment != "" {
		prefix += environment + "/"
	}
	return list[*captainv1.Deployment](r, tableDeployments, "env", false, prefix, 0, nil)
}

// Stage returns one stage's live state.
func (r *Reader) Stage(pipeline, stage string) (*captainv1.StageState, error) {
	return first[*captainv1.StageState](r, tableStages, "stage", stageKey(pipeline, stage))
}

// Stages returns a pipeline's stage rows, by name.
func (r *Reader) Stages(pipeline string) ([]*captainv1.StageState, error) {
	return list[*captainv1.StageState](r, tableStages, "id", false, pipeline+"/", 0, nil)
}

// Host returns one host with its secret hash.
func (r *Reader) Host(id string) (*raftv1.StoredHost, error) {
	return first[*raftv1.StoredHost](r, tableHosts, "host", id)
}

// Hosts returns every host, by ID.
func (r *Reader) Hosts() ([]*raftv1.StoredHost, error) {
	return list[*raftv1.StoredHost](r, tableHosts, "id", false, "", 0, nil)
}

// Token returns one token.
func (r *Reader) Token(id string) (*raftv1.StoredToken, error) {
	return first[*raftv1.StoredToken](r, tableTokens, "token", id)
}

// TokenBySecretHash finds the token whose secret hashes to h.
func (r *Reader) TokenBySecretHash(h []byte) (*raftv1.StoredToken, error) {
	raw, err := r.txn.First(tableTokens, "secret", fmt.Sprintf("%x", h))
	if err != nil {
		return nil, fmt.Errorf("read token by secret: %w", err)
	}
	if raw == nil {
		return nil, fmt.Errorf("token: %w", ErrNotFound)
	}
	return raw.(*raftv1.StoredToken), nil
}

// Tokens returns every token by creation time.
func (r *Reader) Tokens() ([]*raftv1.StoredToken, error) {
	ts, err := list[*raftv1.StoredToken](r, tableTokens, "id", false, "", 0, nil)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(ts, func(i, j int) bool {
		return ts[i].GetToken().GetCreatedAt().AsTime().Before(ts[j].GetToken().GetCreatedAt().AsTime())
	})
	return ts, nil
}

// Alarm returns one alarm.
func (r *Reader) Alarm(name string) (*captainv1.Alarm, error) {
	return first[*captainv1.Alarm](r, tableAlarms, "alarm", name)
}

// Alarms returns every alarm, by name.
func (r *Reader) Alarms() ([]*captainv1.Alarm, error) {
	return list[*captainv1.Alarm](r, tableAlarms, "id", false, "", 0, nil)
}

// AuditFilter selects audit events; zero fields match everything.
type AuditFilter struct {
	Since    time.Time
	Actor    string
	Pipeline string
	Limit    int
}

// AuditEvents returns matching events, newest first.
func (r *Reader) AuditEvents(f AuditFilter) ([]*captainv1.AuditEvent, error) {
	rows, err := list(r, tableAudit, "id", true, "", f.Limit, func(a *auditRow) bool {
		e := a.Event
		if !f.Since.IsZero() && e.GetAt().AsTime().Before(f.Since) {
			return false
		}
		if f.Actor != "" && e.GetActor() != f.Actor {
			return false
		}
		if f.Pipeline != "" {
			p := "pipeline/" + f.Pipeline
			if e.GetTarget() != p && !strings.HasPrefix(e.GetTarget(), p+"/") {
				return false
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	out := make([]*captainv1.AuditEvent, len(rows))
	for i, a := range rows {
		out[i] = a.Event
	}
	return out, nil
}

// Request returns the outcome of an idempotent request.
func (r *Reader) Request(id string) (*raftv1.RequestRecord, error) {
	return first[*raftv1.RequestRecord](r, tableRequests, "request", id)
}

// Member returns one coordinator node's addresses.
func (r *Reader) Member(nodeID string) (*raftv1.ClusterMember, error) {
	return first[*raftv1.ClusterMember](r, tableMembers, "cluster member", nodeID)
}

// Members returns every known coordinator node, by ID.
func (r *Reader) Members() ([]*raftv1.ClusterMember, error) {
	return list[*raftv1.ClusterMember](r, tableMembers, "id", false, "", 0, nil)
}

// Records calls fn for every row as a snapshot record, in a stable order.
func (r *Reader) Records(fn func(*raftv1.SnapshotRecord) error) error {
	type each struct {
		tbl  string
		wrap func(any) *raftv1.SnapshotRecord
	}
	tables := []each{
		{tableMembers, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Member{Member: v.(*raftv1.ClusterMember)}}
		}},
		{tablePipelines, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Pipeline{Pipeline: v.(*captainv1.Pipeline)}}
		}},
		{tableReleases, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Release{Release: v.(*captainv1.Release)}}
		}},
		{tableDeployments, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Deployment{Deployment: v.(*captainv1.Deployment)}}
		}},
		{tableStages, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Stage{Stage: v.(*captainv1.StageState)}}
		}},
		{tableHosts, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Host{Host: v.(*raftv1.StoredHost)}}
		}},
		{tableTokens, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Token{Token: v.(*raftv1.StoredToken)}}
		}},
		{tableAlarms, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Alarm{Alarm: v.(*captainv1.Alarm)}}
		}},
		{tableAudit, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Audit{Audit: v.(*auditRow).Event}}
		}},
		{tableRequests, func(v any) *raftv1.SnapshotRecord {
			return &raftv1.SnapshotRecord{Record: &raftv1.SnapshotRecord_Request{Request: v.(*raftv1.RequestRecord)}}
		}},
	}
	for _, t := range tables {
		it, err := r.txn.Get(t.tbl, "id")
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", t.tbl, err)
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			if err := fn(t.wrap(raw)); err != nil {
				return err
			}
		}
	}
	return nil
}
