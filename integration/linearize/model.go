// Package linearize checks that the coordinator's release and promotion-block operations are
// linearizable: clients drive a real captaind cluster while leaders are killed and the network is
// partitioned, record every call with its start and end time, and porcupine searches for a
// sequential order of the calls that the model below accepts.
//
// The model is, per pipeline, the newest release number and each stage's promotion block
// (in, out, reason). It only covers what every acknowledged write must leave behind and what a
// consistent read must see; the pipeline engine moves releases through stages at the same time
// but never changes a block unless a deployment fails, which the test pipelines cannot do (their
// environments have no hosts).
package linearize

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// MaxStages bounds the stages of one test pipeline, so a state is a comparable value.
const MaxStages = 3

// Kind names an operation.
type Kind string

// The operations of a history.
const (
	// CreateRelease creates the pipeline's next release; the output is its number.
	CreateRelease Kind = "create_release"
	// SetPromotions sets or lifts one side (or both) of a stage's block; the output is the
	// block the call returned.
	SetPromotions Kind = "set_promotions"
	// Rollback rolls a stage back, which blocks it in and out; the output carries nothing.
	Rollback Kind = "rollback"
	// GetStatus reads the newest release number and every stage's block.
	GetStatus Kind = "get_status"
	// ListReleases reads the newest release number.
	ListReleases Kind = "list_releases"
	// GetRelease asks whether release Number exists.
	GetRelease Kind = "get_release"
)

// Direction is the side of a stage a SetPromotions call changes.
type Direction string

// The sides.
const (
	In   Direction = "in"
	Out  Direction = "out"
	Both Direction = "both"
)

// Block is a stage's promotion block as the model keeps it. Reason is normalised by
// ReasonTag, so a rollback's "rollback by admin: lin:…" and the request's "lin:…" compare equal.
type Block struct {
	In     bool   `json:"in"`
	Out    bool   `json:"out"`
	Reason string `json:"reason"`
}

func (b Block) String() string {
	side := "open"
	switch {
	case b.In && b.Out:
		side = "in+out"
	case b.In:
		side = "in"
	case b.Out:
		side = "out"
	}
	if b.Reason == "" {
		return side
	}
	return side + " (" + b.Reason + ")"
}

// ReasonPrefix starts every reason the test sends, so the tag of an operation can be found
// inside the longer reason a rollback stores.
const ReasonPrefix = "lin:"

// ReasonTag returns the part of a stored block reason that names the operation that set it:
// from the last ReasonPrefix on. A reason without one (empty, or set by the engine) is returned
// as it is, and never equals a tag the test sent.
func ReasonTag(reason string) string {
	if i := strings.LastIndex(reason, ReasonPrefix); i >= 0 {
		return reason[i:]
	}
	return reason
}

// Input is one call as issued.
type Input struct {
	Kind      Kind      `json:"kind"`
	Pipeline  string    `json:"pipeline"`
	Stage     int       `json:"stage,omitempty"`
	Direction Direction `json:"direction,omitempty"`
	Enabled   bool      `json:"enabled,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Number    uint64    `json:"number,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
	// Node is the API URL the call was sent to first (for reading a failing history).
	Node string `json:"node,omitempty"`
}

// Output is what a call returned. Unknown marks a call whose outcome the client never learned
// (a timeout, a lost connection): it may have taken effect at any time after it started, so its
// return time is the end of the history and any output is accepted.
type Output struct {
	Unknown bool `json:"unknown,omitempty"`
	// Number is the created release (CreateRelease) or the newest release (ListReleases).
	Number uint64 `json:"number,omitempty"`
	// Found answers GetRelease.
	Found bool `json:"found,omitempty"`
	// Block is the stage's block after SetPromotions.
	Block Block `json:"block"`
	// Latest and Blocks answer GetStatus.
	Latest uint64  `json:"latest,omitempty"`
	Blocks []Block `json:"blocks,omitempty"`
	// Err and Code say why a call failed; Tries lists every attempt's error.
	Err   string   `json:"err,omitempty"`
	Code  string   `json:"code,omitempty"`
	Tries []string `json:"tries,omitempty"`
}

// State is one pipeline's state in the model.
type State struct {
	Latest uint64
	Blocks [MaxStages]Block
}

func (s State) String() string {
	parts := []string{fmt.Sprintf("latest=%d", s.Latest)}
	for i, b := range s.Blocks {
		parts = append(parts, fmt.Sprintf("s%d=%s", i, b))
	}
	return strings.Join(parts, " ")
}

// Step applies one operation to a state: whether the output is possible, and the next state.
func Step(s State, in Input, out Output) (bool, State) {
	switch in.Kind {
	case CreateRelease:
		next := s
		next.Latest++
		return out.Unknown || out.Number == next.Latest, next
	case SetPromotions:
		if in.Stage < 0 || in.Stage >= MaxStages {
			return false, s
		}
		next := s
		b := next.Blocks[in.Stage]
		if in.Direction != Out {
			b.In = !in.Enabled
		}
		if in.Direction != In {
			b.Out = !in.Enabled
		}
		b.Reason = in.Reason
		next.Blocks[in.Stage] = b
		return out.Unknown || out.Block == b, next
	case Rollback:
		if in.Stage < 0 || in.Stage >= MaxStages {
			return false, s
		}
		next := s
		next.Blocks[in.Stage] = Block{In: true, Out: true, Reason: in.Reason}
		return true, next
	case GetStatus:
		if out.Unknown {
			return true, s
		}
		if out.Latest != s.Latest || len(out.Blocks) > MaxStages {
			return false, s
		}
		for i, b := range out.Blocks {
			if b != s.Blocks[i] {
				return false, s
			}
		}
		return true, s
	case ListReleases:
		return out.Unknown || out.Number == s.Latest, s
	case GetRelease:
		return out.Unknown || out.Found == (in.Number >= 1 && in.Number <= s.Latest), s
	}
	return false, s
}

// Model is the porcupine model: partitioned by pipeline, each starting with no release and no
// block.
func Model() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			by := map[string][]porcupine.Operation{}
			var names []string
			for _, op := range history {
				p := op.Input.(Input).Pipeline
				if _, ok := by[p]; !ok {
					names = append(names, p)
				}
				by[p] = append(by[p], op)
			}
			sort.Strings(names)
			out := make([][]porcupine.Operation, 0, len(names))
			for _, n := range names {
				out = append(out, by[n])
			}
			return out
		},
		Init: func() any { return State{} },
		Step: func(state, input, output any) (bool, any) {
			return Step(state.(State), input.(Input), output.(Output))
		},
		Equal: func(a, b any) bool { return a.(State) == b.(State) },
		DescribeOperation: func(input, output any) string {
			return Describe(input.(Input), output.(Output))
		},
		DescribeState: func(state any) string { return state.(State).String() },
	}
}

// Describe renders one call for the visualisation and for failure messages.
func Describe(in Input, out Output) string {
	var call string
	switch in.Kind {
	case CreateRelease:
		call = fmt.Sprintf("create(%s)", in.RequestID)
	case SetPromotions:
		verb := "disable"
		if in.Enabled {
			verb = "enable"
		}
		call = fmt.Sprintf("%s(s%d %s, %s)", verb, in.Stage, in.Direction, in.Reason)
	case Rollback:
		call = fmt.Sprintf("rollback(s%d, %s)", in.Stage, in.Reason)
	case GetStatus:
		call = "status()"
	case ListReleases:
		call = "list()"
	case GetRelease:
		call = fmt.Sprintf("get(%d)", in.Number)
	default:
		call = string(in.Kind)
	}
	if out.Unknown {
		return call + " -> ? (" + out.Err + ")"
	}
	switch in.Kind {
	case CreateRelease, ListReleases:
		return fmt.Sprintf("%s -> %d", call, out.Number)
	case SetPromotions:
		return fmt.Sprintf("%s -> %s", call, out.Block)
	case GetStatus:
		bs := make([]string, len(out.Blocks))
		for i, b := range out.Blocks {
			bs[i] = fmt.Sprintf("s%d=%s", i, b)
		}
		return fmt.Sprintf("%s -> latest=%d %s", call, out.Latest, strings.Join(bs, " "))
	case GetRelease:
		return fmt.Sprintf("%s -> found=%t", call, out.Found)
	}
	return call + " -> ok"
}

// Op is one recorded call. Times are nanoseconds since the history began.
type Op struct {
	Client int    `json:"client"`
	Input  Input  `json:"input"`
	Output Output `json:"output"`
	Call   int64  `json:"call"`
	Return int64  `json:"return"`
}

// History is what a run recorded, as saved for replay.
type History struct {
	Seed   int64  `json:"seed"`
	Ops    []Op   `json:"ops"`
	Faults []Note `json:"faults,omitempty"`
	// Dropped are calls refused before they could change anything (kept for reading only).
	Dropped []Op `json:"dropped,omitempty"`
}

// Note is a fault injected during the run, for the visualisation.
type Note struct {
	At   int64  `json:"at"`
	End  int64  `json:"end"`
	What string `json:"what"`
}

// Operations turns the history into porcupine's form: calls whose outcome is unknown return
// after every other call, so the checker may place them anywhere after they started, or last,
// which is the same as never having happened.
func (h *History) Operations() []porcupine.Operation {
	var end int64
	for _, op := range h.Ops {
		end = max(end, op.Return, op.Call)
	}
	ops := make([]porcupine.Operation, 0, len(h.Ops))
	for _, op := range h.Ops {
		ret := op.Return
		if op.Output.Unknown {
			ret = end + 1
		}
		ops = append(ops, porcupine.Operation{ClientId: op.Client, Input: op.Input, Call: op.Call, Output: op.Output, Return: ret})
	}
	return ops
}

// Check runs porcupine over the history. Unknown (the search timed out) is reported as such;
// callers treat it as a failure, since a check that gave up proved nothing.
func (h *History) Check(timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(Model(), h.Operations(), timeout)
}

// Save writes the history as JSON and porcupine's visualisation as HTML into dir and returns
// both paths.
func (h *History) Save(dir, name string, info porcupine.LinearizationInfo) (string, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("create %s: %w", dir, err)
	}
	jsonPath := filepath.Join(dir, name+".json")
	b, err := json.MarshalIndent(h, "", " ")
	if err != nil {
		return "", "", fmt.Errorf("encode history: %w", err)
	}
	if err := os.WriteFile(jsonPath, b, 0o644); err != nil {
		return "", "", fmt.Errorf("write history: %w", err)
	}
	var notes []porcupine.Annotation
	for _, f := range h.Faults {
		notes = append(notes, porcupine.Annotation{Tag: "faults", Start: f.At, End: f.End, Description: f.What, BackgroundColor: "#ffd0d0"})
	}
	info.AddAnnotations(notes)
	htmlPath := filepath.Join(dir, name+".html")
	if err := porcupine.VisualizePath(Model(), info, htmlPath); err != nil {
		return jsonPath, "", fmt.Errorf("write visualisation: %w", err)
	}
	return jsonPath, htmlPath, nil
}

// Load reads a history saved by Save, for replaying a failed check.
func Load(path string) (*History, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	var h History
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("decode history %s: %w", path, err)
	}
	return &h, nil
}
