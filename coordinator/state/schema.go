package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Table names.
const (
	tablePipelines   = "pipelines"
	tableReleases    = "releases"
	tableDeployments = "deployments"
	tableStages      = "stages"
	tableHosts       = "hosts"
	tableTokens      = "tokens"
	tableAlarms      = "alarms"
	tableAudit       = "audit"
	tableRequests    = "requests"
	tableMembers     = "members"
)

// auditRow wraps an event with its position in the log of events. Raft indexes are not
// unique keys: one entry may record several events, and a snapshot restored from another
// cluster carries indexes of a different history.
type auditRow struct {
	Pos   uint64
	Event *captainv1.AuditEvent
}

// keyIndex adapts a key function to memdb's indexer interfaces. Keys are terminated by a NUL
// byte like memdb's StringFieldIndex, so "web" never matches "web-2" in an exact lookup, and
// prefix lookups use the raw prefix.
type keyIndex[T any] struct {
	key          func(T) string
	allowMissing bool
}

func (k keyIndex[T]) FromObject(raw any) (bool, []byte, error) {
	obj, ok := raw.(T)
	if !ok {
		return false, nil, fmt.Errorf("index: unexpected row type %T", raw)
	}
	s := k.key(obj)
	if s == "" {
		return false, nil, nil
	}
	return true, []byte(s + "\x00"), nil
}

func (k keyIndex[T]) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("index: want one argument, got %d", len(args))
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("index: want a string argument, got %T", args[0])
	}
	return []byte(s + "\x00"), nil
}

func (k keyIndex[T]) PrefixFromArgs(args ...any) ([]byte, error) {
	b, err := k.FromArgs(args...)
	if err != nil {
		return nil, err
	}
	return b[:len(b)-1], nil
}

func idx[T any](name string, unique, allowMissing bool, key func(T) string) *memdb.IndexSchema {
	return &memdb.IndexSchema{
		Name:         name,
		Unique:       unique,
		AllowMissing: allowMissing,
		Indexer:      keyIndex[T]{key: key, allowMissing: allowMissing},
	}
}

func table(name string, indexes ...*memdb.IndexSchema) *memdb.TableSchema {
	t := &memdb.TableSchema{Name: name, Indexes: map[string]*memdb.IndexSchema{}}
	for _, i := range indexes {
		t.Indexes[i.Name] = i
	}
	return t
}

// numKey keeps numeric parts sortable as strings.
func numKey(n uint64) string { return fmt.Sprintf("%020d", n) }

func pipelineKey(name string, version uint64) string { return name + "/" + numKey(version) }
func releaseKey(pipeline string, number uint64) string {
	return pipeline + "/" + numKey(number)
}
func stageKey(pipeline, stage string) string { return pipeline + "/" + stage }
func auditKey(pos uint64) string             { return numKey(pos) }

func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tablePipelines: table(tablePipelines,
			idx("id", true, false, func(p *captainv1.Pipeline) string {
				return pipelineKey(p.GetSpec().GetName(), p.GetVersion())
			})),
		tableReleases: table(tableReleases,
			idx("id", true, false, func(r *captainv1.Release) string { return releaseKey(r.GetPipeline(), r.GetNumber()) }),
			idx("request", false, true, func(r *captainv1.Release) string { return r.GetRequestId() })),
		tableDeployments: table(tableDeployments,
			idx("id", true, false, func(d *captainv1.Deployment) string { return d.GetId() }),
			idx("env", false, false, func(d *captainv1.Deployment) string {
				return d.GetPipeline() + "/" + d.GetEnvironment() + "/" + d.GetId()
			})),
		tableStages: table(tableStages,
			idx("id", true, false, func(s *captainv1.StageState) string { return stageKey(s.GetPipeline(), s.GetStage()) })),
		tableHosts: table(tableHosts,
			idx("id", true, false, func(h *raftv1.StoredHost) string { return h.GetHost().GetId() })),
		tableTokens: table(tableTokens,
			idx("id", true, false, func(t *raftv1.StoredToken) string { return t.GetToken().GetId() }),
			idx("secret", true, true, func(t *raftv1.StoredToken) string { return fmt.Sprintf("%x", t.GetSecretHash()) })),
		tableAlarms: table(tableAlarms,
			idx("id", true, false, func(a *captainv1.Alarm) string { return a.GetName() })),
		tableAudit: table(tableAudit,
			idx("id", true, false, func(a *auditRow) string { return auditKey(a.Pos) })),
		tableRequests: table(tableRequests,
			idx("id", true, false, func(r *raftv1.RequestRecord) string { return r.GetRequestId() })),
		tableMembers: table(tableMembers,
			idx("id", true, false, func(m *raftv1.ClusterMember) string { return m.GetNodeId() })),
	}}
}
