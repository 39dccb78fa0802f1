package api

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"

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
				switch st.GetPhase() {
				case captainv1.StagePhase_STAGE_PHASE_APPROVED, captainv1.StagePhase_STAGE_PHASE_IDLE:
					sr.Status = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_APPROVED
				case captainv1.StagePhase_STAGE_PHASE_FAILED, captainv1.StagePhase_STAGE_PHASE_ROLLING_BACK:
					sr.Status, sr.Detail = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_FAILED, st.GetFailure()
				default:
					sr.Status = captainv1.ReleaseStageStatus_RELEASE_STAGE_STATUS_IN_PROGRESS
				}
			}
		}
		out = append(out, sr)
	}
	return out, nil
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

// DiffReleases returns the commits between two releases; file changes need the artifact
// manifests, which the coordinator does not fetch yet.
func (rs *releaseService) DiffReleases(ctx context.Context, req *connect.Request[captainv1.DiffReleasesRequest]) (*connect.Response[captainv1.DiffReleasesResponse], error) {
	return reader(rs.s, func(*captainv1.DiffReleasesRequest) *captainv1.ReadOptions { return nil },
		func(_ context.Context, m *captainv1.DiffReleasesRequest, r *state.Reader) (*captainv1.DiffReleasesResponse, error) {
			if err := pipelineExists(r, m.GetPipeline()); err != nil {
				return nil, err
			}
			lo, hi := min(m.GetFrom(), m.GetTo()), max(m.GetFrom(), m.GetTo())
			for _, n := range []uint64{lo, hi} {
				if _, err := r.Release(m.GetPipeline(), n); err != nil {
					return nil, err
				}
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
			return out, nil
		})(ctx, req)
}
