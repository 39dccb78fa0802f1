package state

import (
	"fmt"

	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// Txn is one write transaction; it reads its own writes. Callers set each row's index field
// to Index() before putting it (the FSM does), so every row records the write that changed it.
type Txn struct {
	Reader
	index uint64
	// auditPos is the position of the last audit event, loaded on first use.
	auditPos       uint64
	auditPosLoaded bool
}

// Index is the Raft index of this write.
func (t *Txn) Index() uint64 { return t.index }

func (t *Txn) insert(tbl string, row any) error {
	if err := t.txn.Insert(tbl, row); err != nil {
		return fmt.Errorf("write %s: %w", tbl, err)
	}
	return nil
}

// PutPipeline stores a pipeline version.
func (t *Txn) PutPipeline(p *captainv1.Pipeline) error { return t.insert(tablePipelines, p) }

// PutRelease stores a release.
func (t *Txn) PutRelease(r *captainv1.Release) error { return t.insert(tableReleases, r) }

// PutDeployment stores a deployment.
func (t *Txn) PutDeployment(d *captainv1.Deployment) error { return t.insert(tableDeployments, d) }

// PutStage stores a stage row.
func (t *Txn) PutStage(s *captainv1.StageState) error { return t.insert(tableStages, s) }

// PutHost stores a host.
func (t *Txn) PutHost(h *raftv1.StoredHost) error { return t.insert(tableHosts, h) }

// DeleteHost forgets a host.
func (t *Txn) DeleteHost(id string) error {
	h, err := t.Host(id)
	if err != nil {
		return err
	}
	return t.txn.Delete(tableHosts, h)
}

// PutToken stores a token.
func (t *Txn) PutToken(tok *raftv1.StoredToken) error { return t.insert(tableTokens, tok) }

// PutAlarm stores an alarm.
func (t *Txn) PutAlarm(a *captainv1.Alarm) error { return t.insert(tableAlarms, a) }

// AddAudit appends an audit event at this transaction's index.
func (t *Txn) AddAudit(e *captainv1.AuditEvent) error {
	e.Index = t.index
	return t.appendAudit(e)
}

func (t *Txn) appendAudit(e *captainv1.AuditEvent) error {
	if !t.auditPosLoaded {
		raw, err := t.txn.Last(tableAudit, "id")
		if err != nil {
			return fmt.Errorf("read last audit event: %w", err)
		}
		if raw != nil {
			t.auditPos = raw.(*auditRow).Pos
		}
		t.auditPosLoaded = true
	}
	t.auditPos++
	return t.insert(tableAudit, &auditRow{Pos: t.auditPos, Event: e})
}

// PutRequest remembers an idempotent request's outcome.
func (t *Txn) PutRequest(r *raftv1.RequestRecord) error { return t.insert(tableRequests, r) }

// PutMember records a coordinator node's addresses.
func (t *Txn) PutMember(m *raftv1.ClusterMember) error { return t.insert(tableMembers, m) }

// DeleteMember forgets a coordinator node; absent members are fine.
func (t *Txn) DeleteMember(nodeID string) error {
	_, err := t.txn.DeleteAll(tableMembers, "id", nodeID)
	return err
}

// PutRecord inserts one snapshot record as it was saved (restore keeps stored indexes).
func (t *Txn) PutRecord(rec *raftv1.SnapshotRecord) error {
	switch r := rec.GetRecord().(type) {
	case *raftv1.SnapshotRecord_Pipeline:
		return t.PutPipeline(r.Pipeline)
	case *raftv1.SnapshotRecord_Release:
		return t.PutRelease(r.Release)
	case *raftv1.SnapshotRecord_Deployment:
		return t.PutDeployment(r.Deployment)
	case *raftv1.SnapshotRecord_Stage:
		return t.PutStage(r.Stage)
	case *raftv1.SnapshotRecord_Host:
		return t.PutHost(r.Host)
	case *raftv1.SnapshotRecord_Token:
		return t.PutToken(r.Token)
	case *raftv1.SnapshotRecord_Alarm:
		return t.PutAlarm(r.Alarm)
	case *raftv1.SnapshotRecord_Audit:
		// Saved in position order; appending renumbers them 1..n the same on every node.
		return t.appendAudit(r.Audit)
	case *raftv1.SnapshotRecord_Request:
		return t.PutRequest(r.Request)
	case *raftv1.SnapshotRecord_Member:
		return t.PutMember(r.Member)
	default:
		return fmt.Errorf("snapshot record of unknown kind %T: snapshot from a newer captaind?", r)
	}
}
