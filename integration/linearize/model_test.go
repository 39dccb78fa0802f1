package linearize

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// op builds a recorded call for the tables below.
func op(client int, call, ret int64, in Input, out Output) Op {
	if in.Pipeline == "" {
		in.Pipeline = "p"
	}
	return Op{Client: client, Input: in, Output: out, Call: call, Return: ret}
}

func create(id string) Input { return Input{Kind: CreateRelease, RequestID: id} }

func disable(stage int, dir Direction, reason string) Input {
	return Input{Kind: SetPromotions, Stage: stage, Direction: dir, Reason: reason}
}

func enable(stage int, dir Direction, reason string) Input {
	return Input{Kind: SetPromotions, Stage: stage, Direction: dir, Enabled: true, Reason: reason}
}

var status = Input{Kind: GetStatus}

func blocks(bs ...Block) []Block {
	out := make([]Block, MaxStages)
	copy(out, bs)
	return out
}

func TestModelAcceptsLinearizableAndRejectsImpossibleHistories(t *testing.T) {
	blockedIn := Block{In: true, Reason: "lin:a"}
	cases := []struct {
		name string
		ops  []Op
		want porcupine.CheckResult
	}{
		{
			name: "sequential creations numbered 1 and 2, then a read of 2",
			ops: []Op{
				op(0, 0, 10, create("a"), Output{Number: 1}),
				op(1, 20, 30, create("b"), Output{Number: 2}),
				op(0, 40, 50, status, Output{Latest: 2, Blocks: blocks()}),
			},
			want: porcupine.Ok,
		},
		{
			name: "two concurrent creations may be numbered in either order",
			ops: []Op{
				op(0, 0, 30, create("a"), Output{Number: 2}),
				op(1, 10, 20, create("b"), Output{Number: 1}),
			},
			want: porcupine.Ok,
		},
		{
			name: "two creations returning the same number",
			ops: []Op{
				op(0, 0, 30, create("a"), Output{Number: 1}),
				op(1, 10, 20, create("b"), Output{Number: 1}),
			},
			want: porcupine.Illegal,
		},
		{
			name: "a release number skipped by acknowledged creations",
			ops: []Op{
				op(0, 0, 10, create("a"), Output{Number: 1}),
				op(0, 20, 30, create("b"), Output{Number: 3}),
			},
			want: porcupine.Illegal,
		},
		{
			name: "a read that misses a creation acknowledged before it started",
			ops: []Op{
				op(0, 0, 10, create("a"), Output{Number: 1}),
				op(1, 20, 30, Input{Kind: ListReleases}, Output{Number: 0}),
			},
			want: porcupine.Illegal,
		},
		{
			name: "a creation whose outcome is unknown may show up in a later read",
			ops: []Op{
				op(0, 0, 10, create("a"), Output{Unknown: true, Err: "timeout"}),
				op(1, 20, 30, Input{Kind: GetRelease, Number: 1}, Output{Found: true}),
			},
			want: porcupine.Ok,
		},
		{
			name: "a creation whose outcome is unknown may never show up",
			ops: []Op{
				op(0, 0, 10, create("a"), Output{Unknown: true, Err: "timeout"}),
				op(1, 20, 30, Input{Kind: GetRelease, Number: 1}, Output{Found: false}),
				op(1, 40, 50, create("b"), Output{Number: 1}),
			},
			want: porcupine.Ok,
		},
		{
			name: "a read sees a block that was lifted before it started",
			ops: []Op{
				op(0, 0, 10, disable(1, In, "lin:a"), Output{Block: blockedIn}),
				op(0, 20, 30, enable(1, In, "lin:b"), Output{Block: Block{Reason: "lin:b"}}),
				op(1, 40, 50, status, Output{Blocks: blocks(Block{}, blockedIn)}),
			},
			want: porcupine.Illegal,
		},
		{
			name: "a read concurrent with lifting a block may see it either way",
			ops: []Op{
				op(0, 0, 10, disable(1, In, "lin:a"), Output{Block: blockedIn}),
				op(0, 20, 40, enable(1, In, "lin:b"), Output{Block: Block{Reason: "lin:b"}}),
				op(1, 30, 50, status, Output{Blocks: blocks(Block{}, blockedIn)}),
			},
			want: porcupine.Ok,
		},
		{
			name: "blocking one side keeps the other side as it was",
			ops: []Op{
				op(0, 0, 10, disable(0, In, "lin:a"), Output{Block: Block{In: true, Reason: "lin:a"}}),
				op(0, 20, 30, disable(0, Out, "lin:b"), Output{Block: Block{In: false, Out: true, Reason: "lin:b"}}),
			},
			want: porcupine.Illegal,
		},
		{
			name: "a rollback blocks the stage in and out with its reason",
			ops: []Op{
				op(0, 0, 10, Input{Kind: Rollback, Stage: 2, Reason: "lin:r"}, Output{}),
				op(1, 20, 30, status, Output{Blocks: blocks(Block{}, Block{}, Block{In: true, Out: true, Reason: "lin:r"})}),
			},
			want: porcupine.Ok,
		},
		{
			name: "a read that does not see an acknowledged rollback's block",
			ops: []Op{
				op(0, 0, 10, Input{Kind: Rollback, Stage: 2, Reason: "lin:r"}, Output{}),
				op(1, 20, 30, status, Output{Blocks: blocks()}),
			},
			want: porcupine.Illegal,
		},
		{
			name: "pipelines are independent",
			ops: []Op{
				op(0, 0, 10, create("a"), Output{Number: 1}),
				op(1, 20, 30, Input{Kind: CreateRelease, Pipeline: "q", RequestID: "b"}, Output{Number: 1}),
			},
			want: porcupine.Ok,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := &History{Ops: tc.ops}
			got, _ := h.Check(10 * time.Second)
			if got != tc.want {
				t.Fatalf("check = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestReasonTagFindsTheOperationInsideARollbackReason(t *testing.T) {
	cases := map[string]string{
		"lin:r1.c2.o3":                     "lin:r1.c2.o3",
		"rollback by admin: lin:r1.c2.o3":  "lin:r1.c2.o3",
		"release 4 failed: host h1 failed": "release 4 failed: host h1 failed",
		"":                                 "",
	}
	for in, want := range cases {
		if got := ReasonTag(in); got != want {
			t.Errorf("ReasonTag(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSavedHistoryReplaysToTheSameVerdict(t *testing.T) {
	h := &History{Seed: 42, Ops: []Op{
		op(0, 0, 30, create("a"), Output{Number: 1}),
		op(1, 10, 20, create("b"), Output{Number: 1}),
	}, Faults: []Note{{At: 5, End: 15, What: "kill n1"}}}
	res, info := h.Check(10 * time.Second)
	if res != porcupine.Illegal {
		t.Fatalf("check = %s, want Illegal", res)
	}
	dir := t.TempDir()
	jsonPath, htmlPath, err := h.Save(dir, "history", info)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(jsonPath) != dir || filepath.Dir(htmlPath) != dir {
		t.Fatalf("saved to %s and %s, want both in %s", jsonPath, htmlPath, dir)
	}
	back, err := Load(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if back.Seed != 42 || len(back.Ops) != 2 {
		t.Fatalf("loaded %+v, want seed 42 and 2 ops", back)
	}
	if res, _ := back.Check(10 * time.Second); res != porcupine.Illegal {
		t.Fatalf("replayed check = %s, want Illegal", res)
	}
}

// TestReplaySavedHistory checks a history saved by a failed run again, e.g. after changing the
// model or to look at it under a debugger:
//
//	CAPTAIN_LIN_REPLAY=/path/linearize-seed-N.json go test -run TestReplaySavedHistory ./integration/linearize
func TestReplaySavedHistory(t *testing.T) {
	path := os.Getenv("CAPTAIN_LIN_REPLAY")
	if path == "" {
		t.Skip("set CAPTAIN_LIN_REPLAY to a history saved by a failed linearizability run")
	}
	h, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	res, info := h.Check(5 * time.Minute)
	if res != porcupine.Ok {
		// Beside the input: a t.TempDir would be gone before anyone opened it.
		_, html, err := h.Save(filepath.Dir(path), strings.TrimSuffix(filepath.Base(path), ".json")+"-replay", info)
		if err != nil {
			t.Fatal(err)
		}
		t.Fatalf("history of seed %d (%d calls) is %s; visualisation: %s", h.Seed, len(h.Ops), res, html)
	}
	t.Logf("history of seed %d (%d calls) is linearizable", h.Seed, len(h.Ops))
}
