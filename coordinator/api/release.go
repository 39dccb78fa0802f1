package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"

	"github.com/captain-cd/captain/coordinator/state"
	raftv1 "github.com/captain-cd/captain/protocol/gen/captain/raft/v1"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

type releaseService struct{ s *Server }

var (
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	commitRE = regexp.MustCompile(`^[0-9a-f]{7,64}$`)
)

func validateCreateRelease(m *captainv1.CreateReleaseRequest) error {
	if err := required("pipeline", m.GetPipeline()); err != nil {
		return err
	}
	a := m.GetArtifact()
	switch {
	case a == nil:
		return invalid(errors.New("artifact: required (as printed by `captain artifact push -o json`)"))
	case a.GetBucket() == "":
		return invalid(errors.New("artifact.bucket: required"))
	case a.GetKey() == "":
		return invalid(errors.New("artifact.key: required, e.g. artifacts/<pipeline>/<sha256>.tar.zst"))
	case !sha256RE.MatchString(a.GetSha256()):
		return invalid(fmt.Errorf("artifact.sha256: %q is not 64 lower-case hex digits", a.GetSha256()))
	case a.GetSize() < 0:
		return invalid(fmt.Errorf("artifact.size: %d is negative", a.GetSize()))
	case !commitRE.MatchString(m.GetHeadCommit()):
		return invalid(fmt.Errorf("head_commit: %q is not a hex commit SHA", m.GetHeadCommit()))
	}
	for i, c := range m.GetCommits() {
		if !commitRE.MatchString(c.GetSha()) {
			return invalid(fmt.Errorf("commits[%d].sha: %q is not a hex commit SHA", i, c.GetSha()))
		}
	}
	return nil
}

func (rs *releaseService) CreateRelease(ctx context.Context, req *connect.Request[captainv1.CreateReleaseRequest]) (*connect.Response[captainv1.CreateReleaseResponse], error) {
	if err := validateCreateRelease(req.Msg); err != nil {
		return nil, err
	}
	return onLeader(rs.s, func(ctx context.Context, req *connect.Request[captainv1.CreateReleaseRequest]) (*connect.Response[captainv1.CreateReleaseResponse], error) {
		m := req.Msg
		r := rs.s.readerOf()
		if id := m.GetRequestId(); id != "" {
			// Answer a retry without a log entry; the FSM checks again for a racing duplicate.
			if rel, err := r.ReleaseByRequest(id); err == nil {
				return connect.NewResponse(&captainv1.CreateReleaseResponse{Release: rel, Created: false}), nil
			}
		}
		if err := pipelineExists(r, m.GetPipeline()); err != nil {
			return nil, err
		}
		cmd := rs.s.command(ctx, m.GetRequestId(), "")
		cmd.Body = &raftv1.Command_CreateRelease{CreateRelease: &raftv1.CreateRelease{
			Pipeline: m.GetPipeline(), Artifact: m.GetArtifact(), HeadCommit: m.GetHeadCommit(), Commits: m.GetCommits(),
		}}
		res, err := rs.s.apply(ctx, cmd)
		if err != nil {
			return nil, err
		}
		rel, err := value[*captainv1.Release](res)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&captainv1.CreateReleaseResponse{Release: rel, Created: res.Created}), nil
	})(ctx, req)
}

func (rs *releaseService) GetRelease(ctx context.Context, req *connect.Request[captainv1.GetReleaseRequest]) (*connect.Response[captainv1.GetReleaseResponse], error) {
	return reader(rs.s, (*captainv1.GetReleaseRequest).GetRead,
		func(_ context.Context, m *captainv1.GetReleaseRequest, r *state.Reader) (*captainv1.GetReleaseResponse, error) {
			if err := pipelineExists(r, m.GetPipeline()); err != nil {
				return nil, err
			}
			rel, err := r.Release(m.GetPipeline(), m.GetNumber())
			if err != nil {
				return nil, err
			}
			stages, err := stagesOfRelease(r, m.GetPipeline(), m.GetNumber())
			if err != nil {
				return nil, err
			}
			return &captainv1.GetReleaseResponse{Release: rel, Stages: stages}, nil
		})(ctx, req)
}

// stagesOfRelease derives a release's standing in each stage from the stage rows.
func stagesOfRelease(r *state.Reader, pipeline string, number uint64) ([]*captainv1.StageOfRelease, error) {
	p, err := r.Pipeline(pipeline, 0)
	if err != nil {
		return nil, err
	}
	// Superseded leaves no trace in the stage row once the inbox moves on; the audit log keeps it.
	events, err := r.AuditEvents(state.AuditFilter{Pipeline: pipeline})
	if err != nil {
		return nil, err
	}
	// So does an approval once newer releases took the stage over.
	superseded, approved := map[string]*captainv1.AuditEvent{}, map[string]*captainv1.AuditEvent{}
	for _, e := range events {
		if e.GetDetails()["release"] != strconv.FormatUint(number, 10) {
			continue
		}
		var m map[string]*captainv1.AuditEvent
		switch e.GetAction() {
		case "release.superseded":
			m = superseded
		case "stage.approved":
			m = approved
		default:
			continue
		}
		stage := strings.TrimPrefix(e.GetTarget(), "pipeline/"+pipeline+"/stage/")
		if _, seen := m[stage]; !seen { // newest first: keep the latest
			m[stage] = e
		}
	}
	var out []*captainv1.StageOfRelease
	for _, spec := range p.GetSpec().GetStages() {
		sr := &captainv1.StageOfRelease{Stage: spec.GetName()}
		st, err := r.Stage(pipeline, spec.GetName())
		if err != nil && !errors.Is(err, state.ErrNotFound) {
			return nil, err
		}
		if st != nil {
			for _, env := range st.GetEnvironments() {
				if env.GetCurrentRelease() == number {
					sr.EnvironmentsRunning = append(sr.EnvironmentsRunning, env.GetEnvironment())
				}
			}
			switch {
			case slices.Contains(st.GetBadReleases(), number):
				sr.Status, sr.Detail = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_BAD, st.GetFailure()
			case st.GetInbox().GetRelease() == number:
				sr.Status, sr.Since = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_WAITING, st.GetInbox().GetSince()
			case st.GetRelease() == number:
				sr.Since = st.GetPhaseSince()
				lastGood := slices.ContainsFunc(st.GetEnvironments(), func(e *captainv1.EnvironmentState) bool { return e.GetLastGoodRelease() == number })
				switch st.GetPhase() {
				case captainv1.StagePhase_STAGE_PHASE_APPROVED:
					sr.Status = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED
				case captainv1.StagePhase_STAGE_PHASE_IDLE:
					sr.Status = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED
					if !lastGood {
						// Idle on a release no environment kept as last good: it was rolled back.
						sr.Status, sr.Detail = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_FAILED, cmp.Or(st.GetFailure(), st.GetBlock().GetReason(), "rolled back")
					}
				case captainv1.StagePhase_STAGE_PHASE_FAILED, captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
					sr.Status, sr.Detail = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_FAILED, cmp.Or(st.GetFailure(), st.GetBlock().GetReason())
				default:
					sr.Status = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_IN_PROGRESS
				}
			case slices.ContainsFunc(st.GetEnvironments(), func(e *captainv1.EnvironmentState) bool { return e.GetLastGoodRelease() == number }):
				sr.Status = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED
				if e := approved[spec.GetName()]; e != nil {
					sr.Since = e.GetAt()
				}
			case approved[spec.GetName()] != nil:
				sr.Status, sr.Since = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED, approved[spec.GetName()].GetAt()
			case superseded[spec.GetName()] != nil:
				e := superseded[spec.GetName()]
				sr.Status, sr.Since = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_SUPERSEDED, e.GetAt()
				sr.Detail = "superseded by release " + e.GetDetails()["by"]
			}
			if sr.Status == captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED {
				sr.Detail = rolledBack(st, number)
			}
		}
		out = append(out, sr)
	}
	return out, nil
}

// rolledBack says so when every environment of the stage went back below an approved release,
// which stays approved (an operator rollback does not make it bad) but no longer runs there.
func rolledBack(st *captainv1.StageState, number uint64) string {
	var below uint64
	for _, env := range st.GetEnvironments() {
		if env.GetCurrentRelease() >= number {
			return ""
		}
		below = max(below, env.GetCurrentRelease())
	}
	if below == 0 {
		return ""
	}
	detail := fmt.Sprintf("rolled back to release %d", below)
	if b := st.GetBlock(); b.GetReason() != "" {
		detail += " (" + b.GetReason() + ")"
	}
	return detail
}

func (rs *releaseService) ListReleases(ctx context.Context, req *connect.Request[captainv1.ListReleasesRequest]) (*connect.Response[captainv1.ListReleasesResponse], error) {
	return reader(rs.s, (*captainv1.ListReleasesRequest).GetRead,
		func(_ context.Context, m *captainv1.ListReleasesRequest, r *state.Reader) (*captainv1.ListReleasesResponse, error) {
			if err := pipelineExists(r, m.GetPipeline()); err != nil {
				return nil, err
			}
			limit := int(m.GetLimit())
			if limit == 0 {
				limit = 50
			}
			rels, err := r.Releases(m.GetPipeline(), m.GetBefore(), limit)
			if err != nil {
				return nil, err
			}
			return &captainv1.ListReleasesResponse{Releases: rels, Index: r.Index()}, nil
		})(ctx, req)
}

// DiffReleases returns the commits between two releases and the file changes from the older
// artifact's manifest to the newer one's. Without the manifests it still answers with the
// commits and says why the files are missing.
func (rs *releaseService) DiffReleases(ctx context.Context, req *connect.Request[captainv1.DiffReleasesRequest]) (*connect.Response[captainv1.DiffReleasesResponse], error) {
	return reader(rs.s, func(*captainv1.DiffReleasesRequest) *captainv1.ReadOptions { return nil },
		func(ctx context.Context, m *captainv1.DiffReleasesRequest, r *state.Reader) (*captainv1.DiffReleasesResponse, error) {
			if err := pipelineExists(r, m.GetPipeline()); err != nil {
				return nil, err
			}
			lo, hi := min(m.GetFrom(), m.GetTo()), max(m.GetFrom(), m.GetTo())
			var ends []*captainv1.Release
			for _, n := range []uint64{lo, hi} {
				rel, err := r.Release(m.GetPipeline(), n)
				if errors.Is(err, state.ErrNotFound) {
					return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("pipeline %s has no release %d: see `captain release list --pipeline %s`", m.GetPipeline(), n, m.GetPipeline()))
				}
				if err != nil {
					return nil, err
				}
				ends = append(ends, rel)
			}
			rels, err := r.Releases(m.GetPipeline(), hi+1, int(hi-lo))
			if err != nil {
				return nil, err
			}
			out := &captainv1.DiffReleasesResponse{}
			for _, rel := range rels {
				if rel.GetNumber() > lo {
					out.Commits = append(out.Commits, rel.GetCommits()...)
				}
			}
			files, err := rs.s.manifests.FileChanges(ctx, ends[0].GetArtifact(), ends[1].GetArtifact())
			if err != nil {
				out.FilesUnavailable = err.Error()
				rs.s.logger.Debug("release diff without file changes", "pipeline", m.GetPipeline(), "from", lo, "to", hi, "err", err)
			}
			out.Files = files
			return out, nil
		})(ctx, req)
}
