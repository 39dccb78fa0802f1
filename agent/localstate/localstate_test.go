package localstate

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
)

const childEnv = "CAPTAIN_LOCALSTATE_TEST_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(writeForever(dir))
	}
	os.Exit(m.Run())
}

// writeForever updates the state as fast as it can until it is killed, printing the
// sequence number of every durable update.
func writeForever(dir string) int {
	s, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for i := 0; ; i++ {
		err := s.Update(func(st *State) error {
			a := st.App("web")
			a.CurrentRelease = uint64(i)
			// Grow the file so a torn write would show.
			a.Releases = append(a.Releases, Release{Release: uint64(i), DeploymentID: strings.Repeat("d", 200), Dir: "x"})
			st.Enqueue(&captainv1.HostEvent{Pipeline: "web", Message: strings.Repeat("m", 100)})
			return nil
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		fmt.Println(i)
	}
}

func desiredApp() *captainv1.DesiredApp {
	return &captainv1.DesiredApp{
		Pipeline: "web", Release: 7, DeploymentId: "d-7",
		Artifact: &captainv1.ArtifactRef{Bucket: "b", Sha256: strings.Repeat("a", 64)},
		Deploy: &captainv1.DeploySettings{
			AppRoot:        "/srv/web",
			MinHealthyTime: durationpb.New(1500 * time.Millisecond),
			Hooks:          &captainv1.Hooks{Activate: &captainv1.Hook{Command: []string{"true"}}},
		},
		KeepReleases: []uint64{5, 6},
	}
}

func TestStateSurvivesReopenWithProtoPartsAndEventSequence(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := desiredApp()
	err = s.Update(func(st *State) error {
		a := st.App("web")
		a.AppRoot = "/srv/web"
		a.Desired.M = want
		a.Step = StepFlip
		a.LastResult = &Result{DeploymentID: "d-6", State: captainv1.HostDeployState_HOST_DEPLOY_STATE_HEALTHY, Outputs: []Proto[*captainv1.StepOutput]{{M: &captainv1.StepOutput{Name: "http", ExitCode: 200, Passed: true}}}}
		for range 3 {
			st.Enqueue(&captainv1.HostEvent{Pipeline: "web", State: captainv1.HostDeployState_HOST_DEPLOY_STATE_FETCHING})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(2); err != nil {
		t.Fatal(err)
	}
	s.Close()

	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %04o, want 0600", fi.Mode().Perm())
	}

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.View(func(st *State) {
		a := st.Apps["web"]
		if !proto.Equal(a.Desired.M, want) {
			t.Errorf("desired after reopen:\n got %v\nwant %v", a.Desired.M, want)
		}
		if a.Step != StepFlip || a.LastResult.Outputs[0].M.GetExitCode() != 200 {
			t.Errorf("app after reopen: %+v", a)
		}
	})
	if p := s.Pending(); len(p) != 1 || p[0].GetSeq() != 3 {
		t.Fatalf("pending after ack 2: %v", p)
	}
	// Sequence numbers never repeat, even after every event was acknowledged.
	if err := s.Ack(3); err != nil {
		t.Fatal(err)
	}
	var seq uint64
	if err := s.Update(func(st *State) error { seq = st.Enqueue(&captainv1.HostEvent{}); return nil }); err != nil {
		t.Fatal(err)
	}
	if seq != 4 {
		t.Errorf("next seq %d, want 4", seq)
	}
}

func TestUnreadableStateFileIsAClearError(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"not json", "{\"apps\": {", "unexpected end of JSON"},
		{"newer format", `{"format_version": 9}`, "format_version 9"},
		{"bad proto part", `{"format_version": 1, "apps": {"web": {"desired": {"release": "x"}}}}`, "release"},
		{"events not a list", `{"format_version": 1, "events": {"seq": 1}}`, "events"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open: %v; want ErrCorrupt naming %s and %q", err, path, tt.want)
			}
			if _, err := Load(dir); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Load: %v", err)
			}
		})
	}
}

func TestFieldsFromANewerAgentAreIgnored(t *testing.T) {
	dir := t.TempDir()
	content := `{"format_version": 1, "apps": {"web": {"pipeline": "web", "desired": {"pipeline": "web", "release": 3, "futureField": true}}}, "next_seq": 5}`
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Apps["web"].Desired.M; d.GetRelease() != 3 || st.NextSeq != 5 {
		t.Errorf("loaded %v next seq %d", d, st.NextSeq)
	}
}

func TestSecondAgentOnTheSameStateDirIsRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Errorf("second Open: %v, want ErrLocked", err)
	}
	s.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func TestFailedUpdateChangesNothing(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	boom := errors.New("boom")
	err = s.Update(func(st *State) error {
		st.App("web").CurrentRelease = 9
		st.Enqueue(&captainv1.HostEvent{})
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: %v", err)
	}
	s.View(func(st *State) {
		if len(st.Apps) != 0 || st.NextSeq != 1 {
			t.Errorf("state changed by a failed update: %+v", st)
		}
	})
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed update wrote the file")
	}
}

func TestKill9DuringWritesLeavesALoadableState(t *testing.T) {
	for round := range 5 {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+dir, "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a different number of durable writes each round.
		want := 5 + round*17
		buf := make([]byte, 1<<16)
		var seen string
		for strings.Count(seen, "\n") < want {
			n, err := out.Read(buf)
			if err != nil {
				t.Fatalf("child ended early: %v", err)
			}
			seen += string(buf[:n])
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		lines := strings.Fields(seen)
		lastDurable, _ := strconv.Atoi(lines[len(lines)-1])

		st, err := Load(dir)
		if err != nil {
			t.Fatalf("round %d: state unreadable after kill -9: %v", round, err)
		}
		got := int(st.Apps["web"].CurrentRelease)
		if got < lastDurable || len(st.Apps["web"].Releases) != got+1 || len(st.Events) != got+1 || st.NextSeq != uint64(got+2) {
			t.Errorf("round %d: loaded update %d (%d releases, %d events, next seq %d), last acknowledged write %d", round, got, len(st.Apps["web"].Releases), len(st.Events), st.NextSeq, lastDurable)
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("round %d: temp file %s not cleaned on open", round, e.Name())
			}
		}
		s.Close()
	}
}
