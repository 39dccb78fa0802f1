package devcmd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// embeddedS3 is the artifact store of `captain dev` when versitygw is not installed: gofakes3
// with its in-memory backend, served on loopback by this process, behind a SigV4 check so that
// it takes exactly the credentials a real gateway would. It is for development only: objects
// live in memory and are gone when captain dev stops.
type embeddedS3 struct {
	endpoint string
	srv      *http.Server
	done     chan error
}

// s3Auth is the one key pair and region the embedded store accepts.
type s3Auth struct {
	access, secret, region string
}

func startEmbeddedS3(auth s3Auth, bucket string, log *slog.Logger) (*embeddedS3, error) {
	backend := s3mem.New()
	if err := backend.CreateBucket(bucket); err != nil {
		return nil, fmt.Errorf("embedded S3: create bucket %s: %w", bucket, err)
	}
	fake := gofakes3.New(backend, gofakes3.WithLogger(s3Logger{log}), gofakes3.WithoutVersioning())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("embedded S3: listen: %w", err)
	}
	e := &embeddedS3{
		endpoint: "http://" + ln.Addr().String(),
		srv: &http.Server{
			Handler:           &sigV4{auth: auth, now: time.Now, log: log, next: &ifNoneMatch{backend: backend, next: fake.Server()}},
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		done: make(chan error, 1),
	}
	go func() { e.done <- e.srv.Serve(ln) }()
	return e, nil
}

// stop ends the server; uploads still running get five seconds.
func (e *embeddedS3) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, e.srv.Close())
	}
	if serr := <-e.done; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("stop the embedded S3: %w", err)
	}
	return nil
}

// s3Logger sends gofakes3's log lines to slog.
type s3Logger struct{ log *slog.Logger }

func (l s3Logger) Print(level gofakes3.LogLevel, v ...any) {
	lv := slog.LevelInfo
	switch level {
	case gofakes3.LogErr:
		lv = slog.LevelError
	case gofakes3.LogWarn:
		lv = slog.LevelWarn
	case gofakes3.LogDebug:
		lv = slog.LevelDebug
	}
	l.log.Log(context.Background(), lv, strings.TrimSpace(fmt.Sprintln(v...)))
}

const (
	sigV4Algorithm  = "AWS4-HMAC-SHA256"
	amzDateFormat   = "20060102T150405Z"
	streamingSigned = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	unsignedPayload = "UNSIGNED-PAYLOAD"
	// maxChunk bounds one aws-chunked chunk held in memory; minio-go sends 64 KiB chunks.
	maxChunk = 16 << 20
	// maxSkew is S3's own limit between the client's clock and the server's.
	maxSkew = 15 * time.Minute
)

var emptySHA256 = hex.EncodeToString(sha256.New().Sum(nil))

// sigV4 checks AWS Signature Version 4 on every request (headers, the seed signature of
// aws-chunked uploads and every chunk signature, payload hashes) before gofakes3, which checks
// no credentials at all, sees it. Signed chunked bodies reach gofakes3 decoded, as plain
// bodies: gofakes3 would otherwise skip the chunk signatures and store Content-Encoding:
// aws-chunked as the object's encoding.
type sigV4 struct {
	auth s3Auth
	now  func() time.Time
	log  *slog.Logger
	next http.Handler
}

// ifNoneMatch makes "If-None-Match: *" hold for multipart uploads too. gofakes3 checks it on
// PutObject only; minio-go sends it when it initiates a multipart upload, and gofakes3 would
// let the completion replace an existing object. Such uploads are remembered by id and
// checked again when they complete. Conditional writes and completions hold mu from their
// check to their end, so that two of them cannot both find the key free.
type ifNoneMatch struct {
	backend gofakes3.Backend
	next    http.Handler

	mu sync.Mutex
	// conditional are the ids of multipart uploads initiated with If-None-Match: *.
	conditional map[string]bool
}

func (c *ifNoneMatch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	conditional := r.Header.Get("If-None-Match") == "*"
	initiate := r.Method == http.MethodPost && q.Has("uploads")
	complete := r.Method == http.MethodPost && q.Has("uploadId")
	put := r.Method == http.MethodPut && !q.Has("uploadId")
	if !(conditional && (initiate || put)) && !complete {
		c.next.ServeHTTP(w, r)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id := q.Get("uploadId")
	if complete && c.conditional[id] {
		conditional = true
	}
	if conditional && (initiate || complete) {
		bucketName, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		_, err := c.backend.HeadObject(bucketName, key)
		switch {
		case err == nil:
			writeS3Error(w, r, &s3Error{status: http.StatusPreconditionFailed, code: "PreconditionFailed", msg: "the object already exists"})
			return
		case !gofakes3.HasErrorCode(err, gofakes3.ErrNoSuchKey):
			writeS3Error(w, r, &s3Error{status: http.StatusInternalServerError, code: "InternalError", msg: err.Error()})
			return
		}
	}
	if !initiate {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		c.next.ServeHTTP(sw, r)
		// A completion that failed may be retried; it stays conditional until one succeeds.
		if complete && sw.status < 300 {
			delete(c.conditional, id)
		}
		return
	}
	rec := &recorder{header: w.Header(), status: http.StatusOK}
	c.next.ServeHTTP(rec, r)
	var res struct {
		UploadID string `xml:"UploadId"`
	}
	if rec.status == http.StatusOK && xml.Unmarshal(rec.body.Bytes(), &res) == nil && res.UploadID != "" {
		if c.conditional == nil {
			c.conditional = map[string]bool{}
		}
		c.conditional[res.UploadID] = true
	}
	w.WriteHeader(rec.status)
	_, _ = w.Write(rec.body.Bytes())
}

// statusWriter remembers the status of an answer that goes straight out.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(status int) {
	s.status = status
	s.ResponseWriter.WriteHeader(status)
}

// recorder holds a small answer (an InitiateMultipartUpload result) to read it before it goes
// out; headers go straight to the real writer's map.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(status int)      { r.status = status }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }

// s3Error is an S3 error answer.
type s3Error struct {
	status int
	code   string
	msg    string
}

func (e *s3Error) Error() string { return e.code + ": " + e.msg }

func denied(code, format string, args ...any) *s3Error {
	return &s3Error{status: http.StatusForbidden, code: code, msg: fmt.Sprintf(format, args...)}
}

func badRequest(code, format string, args ...any) *s3Error {
	return &s3Error{status: http.StatusBadRequest, code: code, msg: fmt.Sprintf(format, args...)}
}

func (v *sigV4) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := v.verify(r); err != nil {
		v.log.Warn("refused request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
		writeS3Error(w, r, err)
		return
	}
	v.next.ServeHTTP(w, r)
}

func writeS3Error(w http.ResponseWriter, r *http.Request, err *s3Error) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(err.status)
	if r.Method == http.MethodHead {
		return
	}
	body := struct {
		XMLName  xml.Name `xml:"Error"`
		Code     string   `xml:"Code"`
		Message  string   `xml:"Message"`
		Resource string   `xml:"Resource"`
	}{Code: err.code, Message: err.msg, Resource: r.URL.Path}
	_, _ = io.WriteString(w, xml.Header)
	_ = xml.NewEncoder(w).Encode(body)
}

// verify authenticates r and, for a signed body, replaces r.Body with a reader that fails
// when the body does not match its signature or hash.
func (v *sigV4) verify(r *http.Request) *s3Error {
	if r.URL.Query().Has("X-Amz-Algorithm") {
		return denied("AccessDenied", "the embedded development S3 does not serve presigned URLs")
	}
	alg, params, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if alg != sigV4Algorithm {
		return denied("AccessDenied", "the embedded development S3 takes only requests signed with %s", sigV4Algorithm)
	}
	var credential, signedHeaders, signature string
	for _, f := range strings.Split(params, ",") {
		k, val, _ := strings.Cut(strings.TrimSpace(f), "=")
		switch k {
		case "Credential":
			credential = val
		case "SignedHeaders":
			signedHeaders = val
		case "Signature":
			signature = val
		}
	}
	scopeParts := strings.Split(credential, "/")
	if len(scopeParts) != 5 || scopeParts[3] != "s3" || scopeParts[4] != "aws4_request" || signedHeaders == "" || signature == "" {
		return badRequest("AuthorizationHeaderMalformed", "the Authorization header is malformed")
	}
	if scopeParts[0] != v.auth.access {
		return denied("InvalidAccessKeyId", "the access key %q is not the one captain dev gave its agents", scopeParts[0])
	}
	if scopeParts[2] != v.auth.region {
		return badRequest("AuthorizationHeaderMalformed", "the region %q is wrong; expecting %q", scopeParts[2], v.auth.region)
	}
	amzDate := r.Header.Get("X-Amz-Date")
	at, err := time.Parse(amzDateFormat, amzDate)
	if err != nil || !strings.HasPrefix(amzDate, scopeParts[1]) {
		return denied("AccessDenied", "X-Amz-Date %q is missing or does not match the credential date %s", amzDate, scopeParts[1])
	}
	if skew := v.now().Sub(at); skew > maxSkew || skew < -maxSkew {
		return denied("RequestTimeTooSkewed", "the request time %s differs from the server's by more than %s", amzDate, maxSkew)
	}
	signed := strings.Split(signedHeaders, ";")
	if !slices.Contains(signed, "host") || !slices.IsSorted(signed) {
		return badRequest("AuthorizationHeaderMalformed", "SignedHeaders %q must be sorted and include host", signedHeaders)
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	if payload == "" {
		return badRequest("InvalidRequest", "missing X-Amz-Content-Sha256")
	}
	canonical := strings.Join([]string{
		r.Method,
		awsEscape(r.URL.Path, false),
		canonicalQuery(r.URL.RawQuery),
		canonicalHeaders(r, signed),
		signedHeaders,
		payload,
	}, "\n")
	scope := strings.Join(scopeParts[1:], "/")
	key := signingKey(v.auth.secret, scopeParts[1], v.auth.region)
	want := hex.EncodeToString(hmacSHA256(key, sigV4Algorithm+"\n"+amzDate+"\n"+scope+"\n"+hexSHA256([]byte(canonical))))
	if !hmac.Equal([]byte(want), []byte(signature)) {
		return denied("SignatureDoesNotMatch", "the request signature does not match the secret key captain dev gave its agents")
	}

	switch {
	case payload == unsignedPayload:
	case payload == streamingSigned:
		decoded, err := strconv.ParseInt(r.Header.Get("X-Amz-Decoded-Content-Length"), 10, 64)
		if err != nil || decoded < 0 {
			return badRequest("MissingContentLength", "an aws-chunked upload needs X-Amz-Decoded-Content-Length")
		}
		r.Body = struct {
			io.Reader
			io.Closer
		}{&chunkReader{br: bufio.NewReader(r.Body), key: key, amzDate: amzDate, scope: scope, prev: signature, want: decoded}, r.Body}
		r.ContentLength = decoded
		r.Header.Set("Content-Length", strconv.FormatInt(decoded, 10))
		r.Header.Set("X-Amz-Content-Sha256", unsignedPayload)
		r.Header.Del("X-Amz-Decoded-Content-Length")
		var encodings []string
		for _, e := range strings.Split(r.Header.Get("Content-Encoding"), ",") {
			if e = strings.TrimSpace(e); e != "" && e != "aws-chunked" {
				encodings = append(encodings, e)
			}
		}
		if len(encodings) == 0 {
			r.Header.Del("Content-Encoding")
		} else {
			r.Header.Set("Content-Encoding", strings.Join(encodings, ","))
		}
	case isHexSHA256(payload):
		if payload != emptySHA256 || r.ContentLength != 0 {
			r.Body = struct {
				io.Reader
				io.Closer
			}{&hashReader{r: r.Body, h: sha256.New(), want: payload, size: r.ContentLength}, r.Body}
		}
	default:
		return badRequest("InvalidRequest", "X-Amz-Content-Sha256 %q is not supported by the embedded development S3", payload)
	}
	return nil
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func signingKey(secret, date, region string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), date)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, "s3")
	return hmacSHA256(k, "aws4_request")
}

// awsEscape is SigV4's URI encoding: every byte but the unreserved characters is %XX, and '/'
// too unless it separates path segments.
func awsEscape(s string, slash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == '/' && !slash:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func canonicalQuery(raw string) string {
	q, err := url.ParseQuery(raw)
	if err != nil {
		// A query that does not parse cannot have been signed as parsed; signing it verbatim
		// makes the comparison fail rather than the request pass.
		return raw
	}
	var pairs []string
	for k, vals := range q {
		for _, val := range vals {
			pairs = append(pairs, awsEscape(k, true)+"="+awsEscape(val, true))
		}
	}
	slices.Sort(pairs)
	return strings.Join(pairs, "&")
}

// canonicalHeaders is each signed header as "name:value\n", values trimmed, inner runs of
// spaces collapsed and repeated headers joined with commas. net/http moves Host out of the
// header map, so it comes from r.Host.
func canonicalHeaders(r *http.Request, signed []string) string {
	var b strings.Builder
	for _, name := range signed {
		raw := []string{r.Host}
		if name != "host" {
			raw = r.Header.Values(name)
		}
		vals := make([]string, len(raw))
		for i, val := range raw {
			vals[i] = strings.Join(strings.Fields(val), " ")
		}
		b.WriteString(name + ":" + strings.Join(vals, ",") + "\n")
	}
	return b.String()
}

// chunkReader decodes an aws-chunked body ("SIZE;chunk-signature=SIG\r\nDATA\r\n" until an
// empty chunk) and checks every chunk's signature, each chained to the one before, so a body
// altered or cut short yields an error instead of an object.
type chunkReader struct {
	br      *bufio.Reader
	key     []byte
	amzDate string
	scope   string
	prev    string
	want    int64
	got     int64
	pending []byte
	buf     []byte
	done    bool
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.done {
			return 0, io.EOF
		}
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *chunkReader) next() error {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("aws-chunked body: read chunk header: %w", err)
	}
	head, ok := strings.CutSuffix(string(line), "\r\n")
	sizeHex, sig, found := strings.Cut(head, ";chunk-signature=")
	if !ok || !found {
		return fmt.Errorf("aws-chunked body: malformed chunk header %q", line)
	}
	size, err := strconv.ParseInt(sizeHex, 16, 64)
	if err != nil || size < 0 || size > maxChunk || c.got+size > c.want {
		return fmt.Errorf("aws-chunked body: chunk size %q is invalid or exceeds the declared %d bytes", sizeHex, c.want)
	}
	if int64(cap(c.buf)) < size+2 {
		c.buf = make([]byte, size+2)
	}
	data := c.buf[:size+2]
	if _, err := io.ReadFull(c.br, data); err != nil {
		return fmt.Errorf("aws-chunked body: read chunk: %w", err)
	}
	if string(data[size:]) != "\r\n" {
		return errors.New("aws-chunked body: chunk not terminated by CRLF")
	}
	data = data[:size]
	sts := "AWS4-HMAC-SHA256-PAYLOAD\n" + c.amzDate + "\n" + c.scope + "\n" + c.prev + "\n" + emptySHA256 + "\n" + hexSHA256(data)
	if want := hex.EncodeToString(hmacSHA256(c.key, sts)); !hmac.Equal([]byte(want), []byte(sig)) {
		return errors.New("aws-chunked body: chunk signature does not match")
	}
	c.prev = sig
	c.got += size
	if size == 0 {
		c.done = true
		if c.got != c.want {
			return fmt.Errorf("aws-chunked body: %d bytes, declared %d", c.got, c.want)
		}
		return nil
	}
	c.pending = data
	return nil
}

// hashReader fails the read that completes the body when its sha256 is not the signed one.
type hashReader struct {
	r    io.Reader
	h    hash.Hash
	want string
	size int64 // -1 when unknown: checked at EOF
	n    int64
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	if err == io.EOF || (h.size >= 0 && h.n == h.size) {
		if got := hex.EncodeToString(h.h.Sum(nil)); got != h.want {
			return n, fmt.Errorf("body sha256 %s does not match the signed X-Amz-Content-Sha256 %s", got, h.want)
		}
	}
	return n, err
}
