// Package clientcfg holds what every `captain` command needs to reach a coordinator:
// address, token, CA certificate and output format, from flags or the CAPTAIN_* environment.
package clientcfg

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Config is shared by every command of the CLI.
type Config struct {
	// Addr is the coordinator API address: "host:port" or a full http(s):// URL.
	Addr string
	// Token is the bearer token.
	Token string
	// CACert is a PEM file of CAs to trust for a TLS API.
	CACert string
	// Output is "table" or "json".
	Output string
	// Timeout bounds one command's RPCs.
	Timeout time.Duration
}

// BindFlags registers the global flags with defaults from CAPTAIN_ADDR, CAPTAIN_TOKEN and
// CAPTAIN_CACERT.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Addr, "addr", envOr("CAPTAIN_ADDR", "127.0.0.1:7400"), "coordinator API address, host:port or URL (env CAPTAIN_ADDR)")
	fs.StringVar(&c.Token, "token", os.Getenv("CAPTAIN_TOKEN"), "bearer token (env CAPTAIN_TOKEN)")
	fs.StringVar(&c.CACert, "cacert", os.Getenv("CAPTAIN_CACERT"), "PEM file of CAs trusted for a TLS API (env CAPTAIN_CACERT)")
	fs.StringVarP(&c.Output, "output", "o", "table", "output format: table or json")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "how long a command waits for the coordinator")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// JSON reports whether machine-readable output was asked for.
func (c *Config) JSON() bool { return c.Output == "json" }

// Validate checks the output format so a typo fails before any RPC.
func (c *Config) Validate() error {
	switch c.Output {
	case "table", "json":
		return nil
	default:
		return fmt.Errorf("--output %q: expected table or json", c.Output)
	}
}

// BaseURL turns Addr into a URL; a bare host:port means https when a CA file is set, else http.
func (c *Config) BaseURL() string {
	a := strings.TrimRight(c.Addr, "/")
	if strings.HasPrefix(a, "http://") || strings.HasPrefix(a, "https://") {
		return a
	}
	if c.CACert != "" {
		return "https://" + a
	}
	return "http://" + a
}

// HTTPClient returns a client speaking HTTP/2: h2c (prior knowledge) for plain http, so
// streaming RPCs work without TLS, or HTTPS trusting the configured CA.
func (c *Config) HTTPClient() (*http.Client, error) {
	protocols := new(http.Protocols)
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, Protocols: protocols}
	if strings.HasPrefix(c.BaseURL(), "https://") {
		protocols.SetHTTP1(true)
		protocols.SetHTTP2(true)
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CACert != "" {
			pem, err := os.ReadFile(c.CACert)
			if err != nil {
				return nil, fmt.Errorf("read CA file (--cacert / CAPTAIN_CACERT): %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA file %s: no PEM certificates found", c.CACert)
			}
			tlsConf.RootCAs = pool
		}
		tr.TLSClientConfig = tlsConf
		return &http.Client{Transport: tr}, nil
	}
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}, nil
}

// ClientOptions returns the connect options every generated client needs: the bearer token.
func (c *Config) ClientOptions() []connect.ClientOption {
	return []connect.ClientOption{connect.WithInterceptors(BearerInterceptor(c.Token))}
}

// Context returns a context bounded by the configured timeout.
func (c *Config) Context(parent context.Context) (context.Context, context.CancelFunc) {
	if c.Timeout <= 0 {
		return context.WithCancel(parent)
	}
	return context.WithTimeout(parent, c.Timeout)
}

// BearerInterceptor adds "Authorization: Bearer TOKEN" to every request, unary and streaming.
func BearerInterceptor(token string) connect.Interceptor {
	return bearer(token)
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b != "" {
			req.Header().Set("Authorization", "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if b != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// PrintJSON writes a protobuf message as indented JSON with proto field names.
func PrintJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true, EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// PrintAnyJSON writes a plain Go value as indented JSON.
func PrintAnyJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Explain turns an RPC error into one line an operator can act on.
func (c *Config) Explain(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	switch ce.Code() {
	case connect.CodeUnauthenticated:
		return fmt.Errorf("not authenticated: %s (set CAPTAIN_TOKEN or --token)", ce.Message())
	case connect.CodePermissionDenied:
		return fmt.Errorf("permission denied: %s", ce.Message())
	case connect.CodeUnavailable:
		if ce.Message() == "" || strings.Contains(ce.Message(), "connect: connection refused") {
			return fmt.Errorf("coordinator %s unreachable: %s (check CAPTAIN_ADDR or --addr)", c.BaseURL(), ce.Message())
		}
		return fmt.Errorf("unavailable: %s", ce.Message())
	case connect.CodeDeadlineExceeded:
		return fmt.Errorf("timed out after %s waiting for %s", c.Timeout, c.BaseURL())
	default:
		return fmt.Errorf("%s", ce.Message())
	}
}
