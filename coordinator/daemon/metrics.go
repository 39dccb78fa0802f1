package daemon

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/captain-cd/captain/coordinator/fsm"
	"github.com/captain-cd/captain/coordinator/raftnode"
)

type metrics struct {
	reg      *prometheus.Registry
	apply    prometheus.Histogram
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "captain_raft_apply_duration_seconds",
			Help:    "Time from raft.Apply to the entry being applied on this leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "captain_api_requests_total",
			Help: "API requests by procedure and result code.",
		}, []string{"procedure", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "captain_api_request_duration_seconds",
			Help:    "API request latency by procedure.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"procedure"}),
	}
	m.reg.MustRegister(m.apply, m.requests, m.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// registerNode adds gauges read from the node at scrape time.
func (m *metrics) registerNode(n *raftnode.Node) {
	for _, st := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		st := st
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "captain_raft_state",
			Help:        "1 for the Raft state this node is in.",
			ConstLabels: prometheus.Labels{"state": st.String()},
		}, func() float64 {
			if n.State() == st {
				return 1
			}
			return 0
		}))
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "captain_raft_commit_index", Help: "Last committed Raft index known here."},
			func() float64 { return float64(n.CommitIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "captain_raft_applied_index", Help: "Last Raft index applied to the state here."},
			func() float64 { return float64(n.AppliedIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "captain_raft_last_log_index", Help: "Index of the last entry in this node's log."},
			func() float64 { return float64(n.LastLogIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "captain_raft_term", Help: "Current Raft term."},
			func() float64 { return float64(n.Term()) }),
	)
}

// registerFSM adds counters read from the FSM at scrape time.
func (m *metrics) registerFSM(f *fsm.FSM) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "captain_raft_applied_bytes_total", Help: "Bytes of Raft commands applied to the state here since the process started.",
	}, func() float64 { return float64(f.AppliedBytes()) }))
}

// interceptor counts every RPC by procedure and code.
func (m *metrics) interceptor() connect.Interceptor { return metricsInterceptor{m} }

type metricsInterceptor struct{ m *metrics }

func (mi metricsInterceptor) observe(procedure string, start time.Time, err error) {
	code := "ok"
	if err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) {
			code = ce.Code().String()
		} else {
			code = connect.CodeOf(err).String()
		}
	}
	mi.m.requests.WithLabelValues(procedure, code).Inc()
	mi.m.latency.WithLabelValues(procedure).Observe(time.Since(start).Seconds())
}

func (mi metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		res, err := next(ctx, req)
		mi.observe(req.Spec().Procedure, start, err)
		return res, err
	}
}

func (mi metricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (mi metricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		mi.observe(conn.Spec().Procedure, start, err)
		return err
	}
}
