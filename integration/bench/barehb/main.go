// Command barehb is make bench's baseline for heartbeats: a Connect AgentService whose
// Heartbeat does what any heartbeat handler must and nothing else, a map lookup and a timer
// reset. The harness drives it with the same simulated agents as captaind, on the same cores,
// so the ratio of the two rates shows what Captain adds to the Connect stack.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

type handler struct {
	captainv1connect.UnimplementedAgentServiceHandler
	ttl    time.Duration
	mu     sync.Mutex
	timers map[string]*time.Timer
}

func (h *handler) Heartbeat(_ context.Context, req *connect.Request[captainv1.HeartbeatRequest]) (*connect.Response[captainv1.HeartbeatResponse], error) {
	id := req.Msg.GetHostId()
	h.mu.Lock()
	if t := h.timers[id]; t != nil {
		t.Reset(h.ttl)
	} else {
		h.timers[id] = time.AfterFunc(h.ttl, func() {})
	}
	h.mu.Unlock()
	return connect.NewResponse(&captainv1.HeartbeatResponse{HeartbeatInterval: durationpb.New(time.Second)}), nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "barehb:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	// The same compression threshold as captaind, so the baseline is Connect at its best
	// for this message size rather than Connect compressing 20-byte answers.
	mux.Handle(captainv1connect.NewAgentServiceHandler(&handler{ttl: time.Minute, timers: map[string]*time.Timer{}},
		connect.WithCompressMinBytes(4<<10)))
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: p, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("listening on %s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
