package linearize

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	"github.com/captain-cd/captain/integration/harness"
	"github.com/captain-cd/captain/integration/netns"
	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

func TestMain(m *testing.M) { os.Exit(harness.Run(m)) }

const (
	// clients issue calls concurrently, each mostly to its own node.
	clients = 4
	// workload is how long the clients run in one run; faults happen inside it.
	workload = 5 * time.Second
	// callTimeout bounds one attempt; longer than --election-wait, so a forwarded write gets
	// its answer (or its Unavailable) before the client gives up on it.
	callTimeout = 4 * time.Second
	// retryFor bounds how long a create or a rollback is retried with its request ID.
	retryFor = 8 * time.Second
	// checkTimeout bounds porcupine's search; a search that runs out fails the run.
	checkTimeout = time.Minute
)

// stageNames are the stages of every test pipeline; their environments select no host, so the
// engine moves releases through them at once and no deployment can fail (a failure would block
// a stage behind the model's back).
var stageNames = [MaxStages]string{"one-box", "zone", "region"}

func testPipeline(name string) *captainv1.PipelineSpec {
	spec := &captainv1.PipelineSpec{
		Name:   name,
		Deploy: &captainv1.DeploySettings{AppRoot: "/srv/" + name, ArtifactStore: &captainv1.ArtifactStore{Bucket: "lin", Region: "us-east-1"}},
	}
	for i, s := range stageNames {
		spec.Stages = append(spec.Stages, &captainv1.Stage{
			Name: s, Wave: uint32(i + 1),
			Environments: []*captainv1.Environment{{Name: s, Selector: map[string]string{"lin-env": name + "-" + s}}},
		})
	}
	return spec
}

func envInt(t *testing.T, key string, def int64) (int64, bool) {
	t.Helper()
	s := os.Getenv(key)
	if s == "" {
		return def, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: want an integer", key, s)
	}
	return v, true
}

// TestReleasesAndBlocksStayLinearizableThroughFaults runs randomized histories of release
// creations, promotion blocks, rollbacks and consistent reads from several clients against a
// 3-node cluster while the leader is killed and (with network namespaces) nodes are cut off,
// and checks each history with porcupine. CAPTAIN_LIN_SEED=S reruns the run with seed S
// (CAPTAIN_LIN_RUNS=N runs N seeds from S on); a failing history is saved under
// CAPTAIN_TEST_ARTIFACTS (default: the temp dir) as JSON and as porcupine's HTML.
func TestReleasesAndBlocksStayLinearizableThroughFaults(t *testing.T) {
	seed, seeded := envInt(t, "CAPTAIN_LIN_SEED", time.Now().UnixNano()%1_000_000_000)
	defRuns := int64(20)
	if seeded {
		defRuns = 1
	}
	runs, _ := envInt(t, "CAPTAIN_LIN_RUNS", defRuns)
	t.Logf("runs %d from seed %d (rerun one with CAPTAIN_LIN_SEED=<seed>)", runs, seed)
	c := startCluster(t)
	for i := range runs {
		s := seed + i
		if !t.Run(fmt.Sprintf("seed=%d", s), func(t *testing.T) { runOnce(t, c, s) }) {
			break // the cluster may be left broken; later runs would only repeat the noise
		}
	}
}

// recorder collects a run's calls; times are relative to its start.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	h     History
}

func (r *recorder) now() int64 { return time.Since(r.start).Nanoseconds() }

func (r *recorder) add(op Op, dropped bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if dropped {
		r.h.Dropped = append(r.h.Dropped, op)
		return
	}
	r.h.Ops = append(r.h.Ops, op)
}

func (r *recorder) note(at int64, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Faults = append(r.h.Faults, Note{At: at, End: r.now(), What: what})
}

func runOnce(t *testing.T, c *cluster, seed int64) {
	t.Logf("seed %d", seed)
	c.healthy(t, 30*time.Second)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	pipelines := []string{fmt.Sprintf("lin-%d-a", seed), fmt.Sprintf("lin-%d-b", seed)}
	for _, p := range pipelines {
		applyPipeline(t, c, p)
	}

	rec := &recorder{start: time.Now(), h: History{Seed: seed}}
	ctx, cancel := context.WithTimeout(context.Background(), workload)
	defer cancel()
	var wg sync.WaitGroup
	for i := range clients {
		cl := &client{id: i, c: c, rec: rec, pipelines: pipelines, rng: rand.New(rand.NewPCG(uint64(seed), uint64(i+1))), tag: fmt.Sprintf("%d.%d", seed, i)}
		wg.Go(func() { cl.loop(ctx) })
	}
	kills, cuts := nemesis(ctx, t, c, rec, rng)
	wg.Wait()

	// Bring everything back and read every pipeline through every node: these reads end the
	// history, so whatever the faults did must be visible in them.
	c.healthy(t, 30*time.Second)
	final := &client{id: clients, c: c, rec: rec, pipelines: pipelines}
	for _, p := range pipelines {
		for _, n := range c.nodes {
			harness.Eventually(t, 20*time.Second, "a consistent status read through "+n.id, func() bool {
				return final.status(context.Background(), n, p)
			})
		}
	}

	h := &rec.h
	unknown := 0
	for _, op := range h.Ops {
		if op.Output.Unknown {
			unknown++
		}
	}
	left := map[string]int{}
	for _, op := range h.Dropped {
		left[fmt.Sprintf("%s:%s", op.Input.Kind, op.Output.Code)]++
	}
	t.Logf("%d calls in the history (%d outcomes unknown), %d left out %v, %d leader kills, %d partitions",
		len(h.Ops), unknown, len(h.Dropped), left, kills, cuts)
	if kills+cuts == 0 {
		t.Fatalf("no fault was injected")
	}
	for _, p := range pipelines {
		assertOutcome(t, h, p, clients)
	}

	began := time.Now()
	res, info := h.Check(checkTimeout)
	t.Logf("porcupine: %s in %s", res, time.Since(began).Round(time.Millisecond))
	if res != porcupine.Ok {
		dir := os.Getenv("CAPTAIN_TEST_ARTIFACTS")
		if dir == "" {
			dir = os.TempDir()
		}
		jsonPath, htmlPath, err := h.Save(dir, fmt.Sprintf("linearize-seed-%d", seed), info)
		if err != nil {
			t.Errorf("save history: %v", err)
		}
		t.Fatalf("history of seed %d is %s (not linearizable, or the search gave up)\nhistory: %s\nvisualisation: %s\nrerun: CAPTAIN_LIN_SEED=%d go test -run 'TestReleasesAndBlocksStayLinearizableThroughFaults' -count=1 ./integration/linearize",
			seed, res, jsonPath, htmlPath, seed)
	}
}

// assertOutcome checks what the run left behind in one pipeline, without porcupine: releases
// were created, no two acknowledged creations got the same number, and every node's final
// consistent read shows the same state, whose newest release lies between the acknowledged
// creations and those plus the ones whose outcome is unknown.
func assertOutcome(t *testing.T, h *History, pipeline string, finalClient int) {
	t.Helper()
	numbers := map[uint64]string{}
	maybe := 0
	var finals []Output
	for _, op := range h.Ops {
		switch {
		case op.Input.Pipeline != pipeline:
		case op.Input.Kind == CreateRelease && op.Output.Unknown:
			maybe++
		case op.Input.Kind == CreateRelease:
			if other, dup := numbers[op.Output.Number]; dup {
				t.Errorf("%s: requests %s and %s were both answered with release %d", pipeline, other, op.Input.RequestID, op.Output.Number)
			}
			numbers[op.Output.Number] = op.Input.RequestID
		case op.Client == finalClient:
			finals = append(finals, op.Output)
		}
	}
	if len(numbers) == 0 {
		t.Fatalf("%s: no release was created in %s: the workload did not run", pipeline, workload)
	}
	if len(finals) == 0 {
		t.Fatalf("%s: no final read", pipeline)
	}
	latest := finals[0].Latest
	for _, f := range finals[1:] {
		if f.Latest != latest || fmt.Sprint(f.Blocks) != fmt.Sprint(finals[0].Blocks) {
			t.Errorf("%s: final reads disagree: latest %d %v and latest %d %v", pipeline, latest, finals[0].Blocks, f.Latest, f.Blocks)
		}
	}
	if latest < uint64(len(numbers)) || latest > uint64(len(numbers)+maybe) {
		t.Errorf("%s: newest release is %d after %d acknowledged creations and %d with unknown outcome", pipeline, latest, len(numbers), maybe)
	}
	t.Logf("%s: %d releases acknowledged, %d unknown, newest %d, blocks %v", pipeline, len(numbers), maybe, latest, finals[0].Blocks)
}

// applyPipeline stores a fresh pipeline and waits until every node has it, so the checks a
// follower makes before forwarding (does the pipeline exist?) pass from the first call.
func applyPipeline(t *testing.T, c *cluster, name string) {
	t.Helper()
	spec := testPipeline(name)
	harness.Eventually(t, 20*time.Second, "pipeline "+name+" applied", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		_, err := captainv1connect.NewPipelineServiceClient(c.http, c.nodes[0].url(), c.opts()).ApplyPipeline(ctx,
			connect.NewRequest(&captainv1.ApplyPipelineRequest{Spec: spec, RequestId: "apply-" + name}))
		if err != nil {
			t.Logf("apply pipeline %s: %v", name, err)
		}
		return err == nil
	})
	for _, n := range c.nodes {
		harness.Eventually(t, 20*time.Second, "pipeline "+name+" on "+n.id, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			_, err := captainv1connect.NewPipelineServiceClient(c.http, n.url(), c.opts()).GetPipeline(ctx,
				connect.NewRequest(&captainv1.GetPipelineRequest{Name: name}))
			return err == nil
		})
	}
}

// nemesis injects faults until ctx ends: SIGKILL of the leader (restarted a moment later so
// quorum comes back) and, with network namespaces, one node cut off from the other two (the
// leader or a follower), healed a moment later. It returns how many of each it did.
func nemesis(ctx context.Context, t *testing.T, c *cluster, rec *recorder, rng *rand.Rand) (kills, cuts int) {
	pause := func(lo, hi time.Duration) bool {
		d := lo + time.Duration(rng.Int64N(int64(hi-lo)))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	for pause(300*time.Millisecond, 1200*time.Millisecond) {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		leader, err := c.leader(lctx)
		cancel()
		if err != nil {
			continue // an election is running; try again shortly
		}
		at := rec.now()
		fault := rng.IntN(3)
		if c.net == nil {
			fault = 0
		}
		switch fault {
		case 0:
			c.kill(leader)
			kills++
			pause(500*time.Millisecond, 2*time.Second)
			c.restart(leader)
			rec.note(at, "SIGKILL leader "+leader.id+", restarted")
		default:
			victim := leader
			what := "leader"
			if fault == 2 {
				for victim == leader {
					victim = c.nodes[rng.IntN(len(c.nodes))]
				}
				what = "follower"
			}
			heal := c.net.Partition(t, []*netns.Host{victim.host})
			cuts++
			pause(700*time.Millisecond, 2500*time.Millisecond)
			heal()
			rec.note(at, fmt.Sprintf("%s %s cut off, healed", what, victim.id))
		}
	}
	return kills, cuts
}

// client issues random calls, mostly to its own node.
type client struct {
	id        int
	c         *cluster
	rec       *recorder
	pipelines []string
	rng       *rand.Rand
	tag       string
	seq       int
	latest    map[string]uint64 // highest release number seen per pipeline, to aim GetRelease
}

func (cl *client) loop(ctx context.Context) {
	cl.latest = map[string]uint64{}
	for ctx.Err() == nil {
		p := cl.pipelines[cl.rng.IntN(len(cl.pipelines))]
		n := cl.node()
		switch r := cl.rng.Float64(); {
		case r < 0.30:
			cl.create(ctx, n, p)
		case r < 0.50:
			cl.setPromotions(ctx, n, p)
		case r < 0.58:
			cl.rollback(ctx, n, p)
		case r < 0.80:
			cl.status(ctx, n, p)
		case r < 0.90:
			cl.list(ctx, n, p)
		default:
			cl.get(ctx, n, p)
		}
	}
}

// node picks the client's own node most of the time, another one sometimes, and a running one
// when it can.
func (cl *client) node() *node {
	nodes := cl.c.nodes
	n := nodes[cl.id%len(nodes)]
	if cl.rng.IntN(4) == 0 {
		n = nodes[cl.rng.IntN(len(nodes))]
	}
	for i := 0; i < len(nodes) && !n.running(); i++ {
		n = nodes[(cl.id+i+1)%len(nodes)]
	}
	return n
}

func (cl *client) reason() string {
	cl.seq++
	return fmt.Sprintf("%s%s.%d", ReasonPrefix, cl.tag, cl.seq)
}

// definite reports whether a failed call certainly changed nothing: refused by validation or
// by a state check before any Raft entry was written, refused by a node that said it does not
// lead, or never sent because the connection could not be opened. Everything else (timeouts,
// Unavailable from a node that may have written, lost connections) leaves the outcome unknown.
func definite(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodeFailedPrecondition,
		connect.CodeAlreadyExists, connect.CodePermissionDenied, connect.CodeUnauthenticated:
		return true
	}
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Meta().Get("Captain-Not-Leader") != "" {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// failed records why a call failed.
func (o *Output) failed(err error) {
	o.Err, o.Code = err.Error(), connect.CodeOf(err).String()
}

// attempt runs one call with its own timeout.
func attempt[Res any](ctx context.Context, call func(context.Context) (*connect.Response[Res], error)) (*Res, error) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	res, err := call(actx)
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// idempotent runs a write that carries a request ID: retried on another node while its outcome
// is unknown. It ends known when an attempt answers, unknown when every attempt failed and one
// of them may have written, and refused only when the first attempt was refused.
func idempotent[Res any](cl *client, ctx context.Context, in Input, n *node, call func(context.Context, *node) (*connect.Response[Res], error)) (*Res, Op, bool) {
	op := Op{Client: cl.id, Input: in, Call: cl.rec.now()}
	op.Input.Node = n.url()
	began := time.Now()
	maybe := false
	for try := 0; ; try++ {
		res, err := attempt(ctx, func(actx context.Context) (*connect.Response[Res], error) { return call(actx, n) })
		op.Return = cl.rec.now()
		if err == nil {
			return res, op, true
		}
		op.Output.Tries = append(op.Output.Tries, n.id+": "+err.Error())
		if definite(err) && !maybe {
			op.Output.failed(err)
			cl.rec.add(op, true)
			return nil, op, false
		}
		maybe = maybe || !definite(err)
		if try >= 3 || time.Since(began) > retryFor {
			op.Output.Unknown = true
			op.Output.failed(err)
			cl.rec.add(op, false)
			return nil, op, false
		}
		n = cl.c.nodes[(indexOf(cl.c.nodes, n)+1)%len(cl.c.nodes)]
	}
}

func indexOf(nodes []*node, n *node) int {
	for i, m := range nodes {
		if m == n {
			return i
		}
	}
	return 0
}

func (cl *client) releases(n *node) captainv1connect.ReleaseServiceClient {
	return captainv1connect.NewReleaseServiceClient(cl.c.http, n.url(), cl.c.opts())
}

func (cl *client) create(ctx context.Context, n *node, p string) {
	id := "req-" + cl.reason()
	sha := randomHex(32)
	req := &captainv1.CreateReleaseRequest{
		Pipeline: p, RequestId: id, HeadCommit: sha[:40],
		Artifact: &captainv1.ArtifactRef{Bucket: "lin", Key: "artifacts/" + p + "/" + sha + ".tar.zst", Sha256: sha, Size: 1},
	}
	res, op, ok := idempotent(cl, ctx, Input{Kind: CreateRelease, Pipeline: p, RequestID: id}, n,
		func(actx context.Context, n *node) (*connect.Response[captainv1.CreateReleaseResponse], error) {
			return cl.releases(n).CreateRelease(actx, connect.NewRequest(req))
		})
	if !ok {
		return
	}
	op.Output.Number = res.GetRelease().GetNumber()
	cl.latest[p] = max(cl.latest[p], op.Output.Number)
	cl.rec.add(op, false)
}

func (cl *client) rollback(ctx context.Context, n *node, p string) {
	stage := cl.rng.IntN(MaxStages)
	reason := cl.reason()
	req := &captainv1.RollbackRequest{
		Target:    &captainv1.RollbackTarget{Pipeline: p, Stages: []string{stageNames[stage]}, ToRelease: 1, Force: true},
		Reason:    reason,
		RequestId: "req-" + reason,
	}
	_, op, ok := idempotent(cl, ctx, Input{Kind: Rollback, Pipeline: p, Stage: stage, Reason: reason, RequestID: req.RequestId}, n,
		func(actx context.Context, n *node) (*connect.Response[captainv1.RollbackResponse], error) {
			return captainv1connect.NewOperatorServiceClient(cl.c.http, n.url(), cl.c.opts()).Rollback(actx, connect.NewRequest(req))
		})
	if ok {
		cl.rec.add(op, false)
	}
}

// setPromotions is not retried: it carries no request ID, so a retry could apply it a second
// time after another client's change. An attempt whose outcome is unknown stays unknown.
func (cl *client) setPromotions(ctx context.Context, n *node, p string) {
	stage := cl.rng.IntN(MaxStages)
	dir := []Direction{In, Out, Both}[cl.rng.IntN(3)]
	enabled := cl.rng.IntN(5) < 2
	in := Input{Kind: SetPromotions, Pipeline: p, Stage: stage, Direction: dir, Enabled: enabled, Reason: cl.reason(), Node: n.url()}
	pd := map[Direction]captainv1.PromotionDirection{
		In: captainv1.PromotionDirection_PROMOTION_DIRECTION_IN, Out: captainv1.PromotionDirection_PROMOTION_DIRECTION_OUT,
		Both: captainv1.PromotionDirection_PROMOTION_DIRECTION_BOTH,
	}[dir]
	op := Op{Client: cl.id, Input: in, Call: cl.rec.now()}
	res, err := attempt(ctx, func(actx context.Context) (*connect.Response[captainv1.SetPromotionsResponse], error) {
		return captainv1connect.NewOperatorServiceClient(cl.c.http, n.url(), cl.c.opts()).SetPromotions(actx, connect.NewRequest(&captainv1.SetPromotionsRequest{
			Pipeline: p, Stage: stageNames[stage], Direction: pd, Enabled: enabled, Reason: in.Reason,
		}))
	})
	op.Return = cl.rec.now()
	switch {
	case err == nil:
		b := res.GetStage().GetBlock()
		op.Output.Block = Block{In: b.GetIn(), Out: b.GetOut(), Reason: ReasonTag(b.GetReason())}
		cl.rec.add(op, false)
	case definite(err):
		op.Output.failed(err)
		cl.rec.add(op, true)
	default:
		op.Output.Unknown = true
		op.Output.failed(err)
		cl.rec.add(op, false)
	}
}

// read runs a consistent read. A read that fails changed nothing and observed nothing, so it
// is left out of the history.
func read[Res any](cl *client, ctx context.Context, in Input, n *node, call func(context.Context) (*connect.Response[Res], error), fill func(*Res, *Output)) bool {
	in.Node = n.url()
	op := Op{Client: cl.id, Input: in, Call: cl.rec.now()}
	res, err := attempt(ctx, call)
	op.Return = cl.rec.now()
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound && in.Kind == GetRelease {
			cl.rec.add(op, false) // Found: false
			return true
		}
		op.Output.failed(err)
		cl.rec.add(op, true)
		return false
	}
	fill(res, &op.Output)
	cl.rec.add(op, false)
	return true
}

// consistent asks for a linearizable read. Default reads are served from the receiving node's
// own state, which a follower (or a deposed leader) may not have brought up to date: they are
// not linearizable by design, so the model checks only consistent reads.
func consistent() *captainv1.ReadOptions { return &captainv1.ReadOptions{Consistent: true} }

func (cl *client) status(ctx context.Context, n *node, p string) bool {
	return read(cl, ctx, Input{Kind: GetStatus, Pipeline: p}, n,
		func(actx context.Context) (*connect.Response[captainv1.GetStatusResponse], error) {
			return captainv1connect.NewDeploymentServiceClient(cl.c.http, n.url(), cl.c.opts()).GetStatus(actx,
				connect.NewRequest(&captainv1.GetStatusRequest{Pipeline: p, Read: consistent()}))
		},
		func(res *captainv1.GetStatusResponse, out *Output) {
			out.Latest = res.GetLatestRelease()
			for _, st := range res.GetStages() {
				b := st.GetBlock()
				out.Blocks = append(out.Blocks, Block{In: b.GetIn(), Out: b.GetOut(), Reason: ReasonTag(b.GetReason())})
			}
		})
}

func (cl *client) list(ctx context.Context, n *node, p string) {
	read(cl, ctx, Input{Kind: ListReleases, Pipeline: p}, n,
		func(actx context.Context) (*connect.Response[captainv1.ListReleasesResponse], error) {
			return cl.releases(n).ListReleases(actx, connect.NewRequest(&captainv1.ListReleasesRequest{Pipeline: p, Limit: 1, Read: consistent()}))
		},
		func(res *captainv1.ListReleasesResponse, out *Output) {
			if rels := res.GetReleases(); len(rels) > 0 {
				out.Number = rels[0].GetNumber()
			}
		})
}

func (cl *client) get(ctx context.Context, n *node, p string) {
	num := uint64(cl.rng.IntN(int(cl.latest[p])+3)) + 1
	read(cl, ctx, Input{Kind: GetRelease, Pipeline: p, Number: num}, n,
		func(actx context.Context) (*connect.Response[captainv1.GetReleaseResponse], error) {
			return cl.releases(n).GetRelease(actx, connect.NewRequest(&captainv1.GetReleaseRequest{Pipeline: p, Number: num, Read: consistent()}))
		},
		func(res *captainv1.GetReleaseResponse, out *Output) { out.Found = res.GetRelease().GetNumber() == num })
}
