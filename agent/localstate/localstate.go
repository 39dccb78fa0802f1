// Package localstate keeps the agent's state on the host in one file that survives kill -9
// and power loss: what each pipeline is being moved to and how far it got, what runs now,
// what ran well last, which release directories exist, and the events not yet acknowledged
// by the coordinator.
package localstate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/captain-cd/captain/agent/atomicfile"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

// DefaultDir is where a root agent keeps its state.
const DefaultDir = "/var/lib/captain"

// FileName is the state file inside the state directory.
const FileName = "agent-state.json"

const lockName = "agent.lock"

// formatVersion changes only when an old agent could misread a new file.
const formatVersion = 1

// ErrCorrupt means the state file exists but cannot be read back.
var ErrCorrupt = errors.New("agent state file is corrupt")

// ErrLocked means another agent process holds the state directory.
var ErrLocked = errors.New("state directory is in use by another captain-agent")

// Step names where a deployment stands; a restarted agent resumes at the step recorded.
type Step string

// Steps in order. A step is recorded before its work starts, so after a crash the agent
// knows which work may be half done.
const (
	StepFetch          Step = "fetch"
	StepExtract        Step = "extract"
	StepBeforeActivate Step = "before_activate"
	StepFlip           Step = "flip"
	StepRestart        Step = "restart"
	StepHealth         Step = "health"
	StepDone           Step = "done"
)

// Release is one release directory the agent created under <app root>/releases.
type Release struct {
	Release      uint64    `json:"release"`
	DeploymentID string    `json:"deployment_id"`
	Dir          string    `json:"dir"` // base name under releases/
	SHA256       string    `json:"artifact_sha256"`
	CreatedAt    time.Time `json:"created_at"`
}

// Result is how a deployment ended on this host.
type Result struct {
	DeploymentID string                         `json:"deployment_id"`
	Release      uint64                         `json:"release"`
	State        captainv1.HostDeployState      `json:"state"`
	Message      string                         `json:"message"`
	Outputs      []Proto[*captainv1.StepOutput] `json:"outputs,omitempty"`
	At           time.Time                      `json:"at"`
}

// App is the host's state for one pipeline.
type App struct {
	Pipeline    string `json:"pipeline"`
	Environment string `json:"environment,omitempty"`
	AppRoot     string `json:"app_root"`

	// Desired is the deployment being worked on; nil when none is in progress.
	Desired Proto[*captainv1.DesiredApp] `json:"desired"`
	// Step is how far Desired got.
	Step Step `json:"step,omitempty"`
	// ReleaseDir is the directory Desired extracts into (base name under releases/).
	ReleaseDir string `json:"release_dir,omitempty"`
	// StepStarted is when Step was recorded, for status views.
	StepStarted time.Time `json:"step_started,omitzero"`

	CurrentRelease      uint64 `json:"current_release,omitempty"`
	CurrentDeploymentID string `json:"current_deployment_id,omitempty"`
	CurrentDir          string `json:"current_dir,omitempty"`

	// LastGood is the newest release that passed its health checks on this host.
	LastGoodRelease      uint64 `json:"last_good_release,omitempty"`
	LastGoodDeploymentID string `json:"last_good_deployment_id,omitempty"`
	LastGoodDir          string `json:"last_good_dir,omitempty"`

	Releases []Release             `json:"releases,omitempty"`
	Health   captainv1.HealthState `json:"health,omitempty"`
	// HealthChecks are the outputs of the last health check round.
	HealthChecks []Proto[*captainv1.StepOutput] `json:"health_checks,omitempty"`
	LastResult   *Result                        `json:"last_result,omitempty"`
}

// FindRelease returns the release directory entry with base name dir.
func (a *App) FindRelease(dir string) (Release, bool) {
	i := slices.IndexFunc(a.Releases, func(r Release) bool { return r.Dir == dir })
	if i < 0 {
		return Release{}, false
	}
	return a.Releases[i], true
}

// State is the whole file.
type State struct {
	FormatVersion int             `json:"format_version"`
	Apps          map[string]*App `json:"apps"`
	// NextSeq is the sequence number the next event gets; it never goes back, so the
	// coordinator can drop events it has seen.
	NextSeq uint64                        `json:"next_seq"`
	Events  []Proto[*captainv1.HostEvent] `json:"events,omitempty"`
}

// App returns the app for pipeline, creating it when missing.
func (s *State) App(pipeline string) *App {
	if s.Apps == nil {
		s.Apps = map[string]*App{}
	}
	a := s.Apps[pipeline]
	if a == nil {
		a = &App{Pipeline: pipeline}
		s.Apps[pipeline] = a
	}
	return a
}

// Enqueue gives ev the next sequence number and queues it for the report loop.
func (s *State) Enqueue(ev *captainv1.HostEvent) uint64 {
	if s.NextSeq == 0 {
		s.NextSeq = 1
	}
	ev.Seq = s.NextSeq
	s.NextSeq++
	s.Events = append(s.Events, Proto[*captainv1.HostEvent]{M: ev})
	return ev.Seq
}

// Pipelines returns the pipeline names in order.
func (s *State) Pipelines() []string {
	names := make([]string, 0, len(s.Apps))
	for n := range s.Apps {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Proto embeds a protobuf message in the JSON file using its protojson form, so the file
// stays readable and follows the proto's field names.
type Proto[M proto.Message] struct{ M M }

// MarshalJSON implements json.Marshaler.
func (p Proto[M]) MarshalJSON() ([]byte, error) {
	if !p.M.ProtoReflect().IsValid() {
		return []byte("null"), nil
	}
	return protojson.Marshal(p.M)
}

// UnmarshalJSON implements json.Unmarshaler.
func (p *Proto[M]) UnmarshalJSON(b []byte) error {
	var zero M
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		p.M = zero
		return nil
	}
	m := zero.ProtoReflect().Type().New().Interface().(M)
	// Fields this build does not know come from a newer agent that was rolled back; dropping
	// them beats refusing to start.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return err
	}
	p.M = m
	return nil
}

// Store is the open state file. Its methods are safe for concurrent use.
type Store struct {
	dir  string
	path string
	lock *os.File

	mu sync.Mutex
	st *State
}

// Open takes the state directory for this process (creating it 0700), and loads the state
// file if there is one. Only one process may hold a state directory; Close releases it.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s; stop the other agent or pass another --state-dir", ErrLocked, dir)
		}
		return nil, fmt.Errorf("lock state dir %s: %w", dir, err)
	}
	s := &Store{dir: dir, path: filepath.Join(dir, FileName), lock: lf}
	s.removeTemps()
	st, err := Load(dir)
	if err != nil {
		lf.Close()
		return nil, err
	}
	s.st = st
	return s, nil
}

// Close releases the state directory.
func (s *Store) Close() error { return s.lock.Close() }

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// Path is the state file.
func (s *Store) Path() string { return s.path }

// removeTemps deletes temporary files left by a write that crashed before its rename.
func (s *Store) removeTemps() {
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+FileName+".tmp-") {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

// Load reads the state file in dir without taking the directory, for read-only views.
// A missing file is an empty state.
func Load(dir string) (*State, error) {
	path := filepath.Join(dir, FileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &State{FormatVersion: formatVersion, Apps: map[string]*App{}, NextSeq: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read agent state: %w", err)
	}
	return decode(path, b)
}

func decode(path string, b []byte) (*State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%w: %s: %v; move it aside to start with empty state (the agent then redeploys what the coordinator wants)", ErrCorrupt, path, err)
	}
	if st.FormatVersion != formatVersion {
		return nil, fmt.Errorf("%w: %s has format_version %d, this agent reads %d; upgrade captain-agent", ErrCorrupt, path, st.FormatVersion, formatVersion)
	}
	if st.Apps == nil {
		st.Apps = map[string]*App{}
	}
	if st.NextSeq == 0 {
		st.NextSeq = 1
	}
	return &st, nil
}

// View calls fn with a copy of the state.
func (s *Store) View(fn func(st *State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.clone()
	if err != nil {
		// clone only decodes what encode just produced; failing here is a programming error.
		panic(err)
	}
	fn(st)
}

func (s *Store) clone() (*State, error) {
	b, err := json.Marshal(s.st)
	if err != nil {
		return nil, fmt.Errorf("encode agent state: %w", err)
	}
	return decode(s.path, b)
}

// Update applies fn to a copy of the state and makes the result durable before it becomes
// the state in memory: if fn or the write fails, nothing changed.
func (s *Store) Update(fn func(st *State) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.clone()
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode agent state: %w", err)
	}
	if err := writeFile(s.dir, s.path, append(b, '\n')); err != nil {
		return err
	}
	s.st = st
	return nil
}

// Ack drops queued events with a sequence number up to seq.
func (s *Store) Ack(seq uint64) error {
	return s.Update(func(st *State) error {
		st.Events = slices.DeleteFunc(st.Events, func(e Proto[*captainv1.HostEvent]) bool { return e.M.GetSeq() <= seq })
		return nil
	})
}

// Pending returns the queued events in sequence order.
func (s *Store) Pending() []*captainv1.HostEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*captainv1.HostEvent, len(s.st.Events))
	for i, e := range s.st.Events {
		out[i] = proto.CloneOf(e.M)
	}
	return out
}

// writeFile replaces path atomically: a reader or a crash sees the old bytes or the new
// ones, never a mix, and after return the new bytes survive power loss.
func writeFile(_, path string, b []byte) error {
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("write agent state: %w", err)
	}
	return nil
}
