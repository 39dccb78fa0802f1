// Package ui is the web UI captaind serves at /ui/: the pipeline at a glance with live
// updates, each environment's history and hosts, where a commit is, releases and their diffs,
// and the operator actions (rollback with preview, promotions, manual approval).
//
// The UI holds no state of its own and reads nothing from the node directly: every page and
// action is a call to the node's own Connect API with the signed-in person's token, so roles,
// forwarding to the leader and validation stay in the API, and any node serves any request.
package ui

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"

	captainv1 "github.com/captain-cd/captain/protocol/gen/captain/v1"
	"github.com/captain-cd/captain/protocol/gen/captain/v1/captainv1connect"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

const (
	// Prefix is where the UI is mounted.
	Prefix = "/ui/"
	// SessionCookie holds the signed-in person's API token.
	SessionCookie = "captain_session"
	// CSRFField is the form field every POST must carry.
	CSRFField = "csrf"
	// csrfLabel separates the CSRF derivation from any other use of the token.
	csrfLabel = "captain-ui-csrf-v1"
	// callTimeout bounds one page's API calls; a live poll waits longer (liveWait).
	callTimeout = 15 * time.Second
	liveWait    = 10 * time.Second
)

// Config is what the UI needs from its node.
type Config struct {
	// API is this node's API base URL, e.g. "http://127.0.0.1:7400".
	API string
	// HTTPClient reaches the API (h2c, or TLS with the cluster's CA).
	HTTPClient *http.Client
	// Secure marks the session cookie Secure: the API is served over TLS.
	Secure bool
	// Logger receives errors the person does not see in full.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Handler serves the UI.
type Handler struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	pages map[string]*template.Template
	mux   *http.ServeMux
}

// New parses the embedded templates and returns the handler to mount at Prefix.
func New(cfg Config) (*Handler, error) {
	if cfg.API == "" || cfg.HTTPClient == nil {
		return nil, errors.New("ui: the API address and an HTTP client are required")
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, now: cfg.Now, pages: map[string]*template.Template{}}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	names, err := fs.Glob(templateFS, "templates/page_*.html")
	if err != nil {
		return nil, fmt.Errorf("ui: list templates: %w", err)
	}
	for _, name := range names {
		t, err := template.New("layout.html").Funcs(funcs()).ParseFS(templateFS, "templates/layout.html", "templates/parts.html", name)
		if err != nil {
			return nil, fmt.Errorf("ui: parse %s: %w", name, err)
		}
		h.pages[strings.TrimSuffix(strings.TrimPrefix(name, "templates/page_"), ".html")] = t
	}
	// The fragment the pipeline page polls for is the board alone.
	board, err := template.New("parts.html").Funcs(funcs()).ParseFS(templateFS, "templates/parts.html")
	if err != nil {
		return nil, fmt.Errorf("ui: parse parts: %w", err)
	}
	h.pages["board-fragment"] = board
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, fmt.Errorf("ui: static assets: %w", err)
	}
	m := http.NewServeMux()
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /ui/login", h.loginPage)
	m.HandleFunc("POST /ui/login", h.login)
	m.HandleFunc("POST /ui/logout", h.action(h.logout))
	m.HandleFunc("GET /ui/{$}", h.page(h.index))
	m.HandleFunc("GET /ui/commit", h.page(h.commit))
	m.HandleFunc("GET /ui/d/{id}", h.page(h.deployment))
	m.HandleFunc("GET /ui/p/{pipeline}", h.page(h.pipeline))
	m.HandleFunc("GET /ui/p/{pipeline}/live", h.live)
	m.HandleFunc("GET /ui/p/{pipeline}/s/{stage}", h.page(h.stage))
	m.HandleFunc("GET /ui/p/{pipeline}/e/{env}", h.page(h.environment))
	m.HandleFunc("GET /ui/p/{pipeline}/releases", h.page(h.releases))
	m.HandleFunc("GET /ui/p/{pipeline}/r/{number}", h.page(h.release))
	m.HandleFunc("GET /ui/p/{pipeline}/rollback", h.page(h.rollbackForm))
	m.HandleFunc("GET /ui/p/{pipeline}/rollback/preview", h.page(h.rollbackPreview))
	m.HandleFunc("POST /ui/p/{pipeline}/rollback", h.action(h.rollback))
	m.HandleFunc("POST /ui/p/{pipeline}/promotions", h.action(h.promotions))
	m.HandleFunc("POST /ui/p/{pipeline}/approve", h.action(h.approve))
	h.mux = m
	return h, nil
}

// ServeHTTP sets the security headers every answer carries, then routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "+
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "same-origin")
	if !strings.HasPrefix(r.URL.Path, "/ui/static/") {
		// Pages show live state and who is signed in: never from a cache.
		hd.Set("Cache-Control", "no-store")
	}
	h.mux.ServeHTTP(w, r)
}

// session is the signed-in person: their token and who the API says they are.
type session struct {
	token string
	who   *captainv1.Token
	c     *clients
}

// CanAct says whether the role may roll back, set promotions and approve (deployer or admin).
// Only the buttons depend on it; the API decides.
func (s *session) CanAct() bool {
	r := s.who.GetRole()
	return r == captainv1.Role_ROLE_DEPLOYER || r == captainv1.Role_ROLE_ADMIN
}

// CSRFToken derives the session's CSRF token from its API token, so any node can check it
// without a session table: HMAC-SHA256 keyed with the token over a fixed label.
func CSRFToken(sessionToken string) string {
	m := hmac.New(sha256.New, []byte(sessionToken))
	m.Write([]byte(csrfLabel))
	return hex.EncodeToString(m.Sum(nil))
}

type clients struct {
	deploy   captainv1connect.DeploymentServiceClient
	release  captainv1connect.ReleaseServiceClient
	host     captainv1connect.HostServiceClient
	operator captainv1connect.OperatorServiceClient
	token    captainv1connect.TokenServiceClient
	pipeline captainv1connect.PipelineServiceClient
}

func (h *Handler) clients(token string) *clients {
	opt := connect.WithInterceptors(bearer(token))
	hc, base := h.cfg.HTTPClient, h.cfg.API
	return &clients{
		deploy:   captainv1connect.NewDeploymentServiceClient(hc, base, opt),
		release:  captainv1connect.NewReleaseServiceClient(hc, base, opt),
		host:     captainv1connect.NewHostServiceClient(hc, base, opt),
		operator: captainv1connect.NewOperatorServiceClient(hc, base, opt),
		token:    captainv1connect.NewTokenServiceClient(hc, base, opt),
		pipeline: captainv1connect.NewPipelineServiceClient(hc, base, opt),
	}
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// sessionFrom checks the cookie's token with WhoAmI. It returns nil (and no error) when there is
// no cookie or the API no longer accepts the token.
func (h *Handler) sessionFrom(ctx context.Context, r *http.Request) (*session, error) {
	ck, err := r.Cookie(SessionCookie)
	if err != nil || ck.Value == "" {
		return nil, nil
	}
	c := h.clients(ck.Value)
	res, err := c.token.WhoAmI(ctx, connect.NewRequest(&captainv1.WhoAmIRequest{}))
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &session{token: ck.Value, who: res.Msg.GetToken(), c: c}, nil
}

// view is what every page template gets.
type view struct {
	Title     string
	Session   *session
	CSRF      string
	Pipelines []string
	Pipeline  string
	Flash     string
	Data      any
}

// User names the signed-in token for the header.
func (v *view) User() string {
	if v.Session == nil {
		return ""
	}
	return v.Session.who.GetName()
}

// Role names the signed-in token's role.
func (v *view) Role() string {
	if v.Session == nil {
		return ""
	}
	return roleWord(v.Session.who.GetRole())
}

// CanAct says whether to show action buttons.
func (v *view) CanAct() bool { return v.Session != nil && v.Session.CanAct() }

// pageFunc fills a view for a GET page; it returns the template name.
type pageFunc func(ctx context.Context, r *http.Request, s *session, v *view) (string, error)

// page wraps a GET handler: it requires a session (else to the sign-in page), fills the
// common parts of the view and turns API errors into pages that say what went wrong.
func (h *Handler) page(fn pageFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
		defer cancel()
		s, err := h.sessionFrom(ctx, r)
		if err != nil {
			h.fail(w, r, nil, err)
			return
		}
		if s == nil {
			h.toLogin(w, r, "")
			return
		}
		v := &view{Session: s, CSRF: CSRFToken(s.token), Pipeline: r.PathValue("pipeline")}
		if res, err := s.c.pipeline.ListPipelines(ctx, connect.NewRequest(&captainv1.ListPipelinesRequest{})); err == nil {
			for _, p := range res.Msg.GetPipelines() {
				v.Pipelines = append(v.Pipelines, p.GetSpec().GetName())
			}
		}
		name, err := fn(ctx, r, s, v)
		if err != nil {
			h.fail(w, r, v, err)
			return
		}
		h.render(w, http.StatusOK, name, v)
	}
}

// actionFunc performs a POST; it either writes its own answer or returns where to go next.
type actionFunc func(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session, v *view) (redirect string, err error)

// action wraps a state-changing POST: same-origin checks, a session, and the session's CSRF
// token, before anything reaches the API. A refusal changes nothing and says why.
func (h *Handler) action(fn actionFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if why := crossSite(r); why != "" {
			h.refuse(w, r, nil, why)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
		defer cancel()
		s, err := h.sessionFrom(ctx, r)
		if err != nil {
			h.fail(w, r, nil, err)
			return
		}
		if s == nil {
			h.refuse(w, r, nil, "you are not signed in (or your token is no longer valid); nothing was changed")
			return
		}
		v := &view{Session: s, CSRF: CSRFToken(s.token), Pipeline: r.PathValue("pipeline")}
		got := r.PostFormValue(CSRFField)
		if subtle.ConstantTimeCompare([]byte(got), []byte(v.CSRF)) != 1 {
			h.refuse(w, r, v, "this form did not come from a page of this session (missing or wrong CSRF token); nothing was changed")
			return
		}
		next, err := fn(ctx, w, r, s, v)
		if err != nil {
			h.fail(w, r, v, err)
			return
		}
		if next != "" {
			http.Redirect(w, r, next, http.StatusSeeOther)
		}
	}
}

// crossSite explains why a POST must not be trusted to come from this UI; "" when it may.
// Browsers send Origin on every POST and Sec-Fetch-Site where supported; SameSite=Strict
// already keeps the cookie off cross-site requests, so these are the second line.
func crossSite(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return fmt.Sprintf("cross-site request refused (Sec-Fetch-Site: %s); nothing was changed", site)
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		if origin != scheme+"://"+r.Host {
			return fmt.Sprintf("request from another origin (%s) refused; nothing was changed", origin)
		}
	}
	return ""
}

// loginNote is the note the sign-in page shows for the code in its msg parameter, from a
// fixed set: a link cannot make the page say anything else.
func loginNote(code string) string {
	switch code {
	case "signed-out":
		return "You are signed out."
	case "rejected":
		return "The API no longer accepts your token (revoked or expired); sign in again."
	}
	return ""
}

func (h *Handler) toLogin(w http.ResponseWriter, r *http.Request, code string) {
	q := url.Values{"next": {r.URL.RequestURI()}}
	if code != "" {
		q.Set("msg", code)
	}
	http.Redirect(w, r, "/ui/login?"+q.Encode(), http.StatusSeeOther)
}

type errorData struct {
	Status  int
	Heading string
	Message string
}

// refuse answers 403 with the reason, changing nothing.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, v *view, why string) {
	h.log.Info("ui: request refused", "path", r.URL.Path, "reason", why)
	if v == nil {
		v = &view{}
	}
	v.Title = "Refused"
	v.Data = errorData{Status: http.StatusForbidden, Heading: "Refused", Message: why}
	h.render(w, http.StatusForbidden, "error", v)
}

// fail turns an API error into a page: the API's own message, with a status that fits.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, v *view, err error) {
	if v == nil {
		v = &view{}
	}
	status, heading := http.StatusBadGateway, "Error"
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
		switch ce.Code() {
		case connect.CodeUnauthenticated:
			clearSession(w, h.cfg.Secure)
			h.log.Info("ui: session token refused", "reason", msg)
			h.toLogin(w, r, "rejected")
			return
		case connect.CodePermissionDenied:
			status, heading = http.StatusForbidden, "Refused by the API"
			msg += "; nothing was changed"
		case connect.CodeNotFound:
			status, heading = http.StatusNotFound, "Not found"
		case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeAlreadyExists, connect.CodeOutOfRange:
			status, heading = http.StatusBadRequest, "Not possible"
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
			status, heading = http.StatusServiceUnavailable, "Coordinator unavailable"
		}
	} else if errors.Is(err, errBadInput) {
		status, heading = http.StatusBadRequest, "Not possible"
	}
	if status >= 500 {
		h.log.Warn("ui: page failed", "path", r.URL.Path, "err", err)
	}
	v.Title = heading
	v.Data = errorData{Status: status, Heading: heading, Message: msg}
	h.render(w, status, "error", v)
}

var errBadInput = errors.New("bad input")

func badInput(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadInput, fmt.Sprintf(format, args...))
}

func (h *Handler) render(w http.ResponseWriter, status int, name string, v *view) {
	t, ok := h.pages[name]
	if !ok {
		http.Error(w, "no template "+name, http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	if err := t.Execute(&b, v); err != nil {
		h.log.Error("ui: render", "template", name, "err", err)
		http.Error(w, "the page could not be drawn: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// setSession stores the token in the session cookie: HttpOnly (no script reads it),
// SameSite=Strict (no other site's page sends it), scoped to the UI, Secure over TLS.
func setSession(w http.ResponseWriter, token string, secure bool) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: token, Path: Prefix, HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
}

func clearSession(w http.ResponseWriter, secure bool) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: Prefix, MaxAge: -1, HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
}

type loginData struct {
	Next    string
	Message string
}

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	v := &view{Title: "Sign in", Data: loginData{Next: safeNext(r.URL.Query().Get("next")), Message: loginNote(r.URL.Query().Get("msg"))}}
	h.render(w, http.StatusOK, "login", v)
}

// login checks the token with WhoAmI before it becomes the session.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.PostFormValue("next"))
	again := func(status int, msg string) {
		h.render(w, status, "login", &view{Title: "Sign in", Data: loginData{Next: next, Message: msg}})
	}
	if why := crossSite(r); why != "" {
		again(http.StatusForbidden, why)
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	if token == "" {
		again(http.StatusBadRequest, "paste an API token (captain token create --role viewer|deployer)")
		return
	}
	if !cookieSafe(token) || strings.HasPrefix(token, "host:") {
		again(http.StatusUnauthorized, "that is not an API token")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	res, err := h.clients(token).token.WhoAmI(ctx, connect.NewRequest(&captainv1.WhoAmIRequest{}))
	if err != nil {
		msg := err.Error()
		var ce *connect.Error
		if errors.As(err, &ce) {
			msg = ce.Message()
		}
		status := http.StatusUnauthorized
		if connect.CodeOf(err) != connect.CodeUnauthenticated && connect.CodeOf(err) != connect.CodePermissionDenied {
			status = http.StatusServiceUnavailable
		}
		again(status, "sign-in failed: "+msg)
		return
	}
	if res.Msg.GetToken().GetRole() == captainv1.Role_ROLE_AGENT {
		again(http.StatusForbidden, "agent tokens register hosts; sign in with a viewer, deployer or admin token")
		return
	}
	setSession(w, token, h.cfg.Secure)
	h.log.Info("ui: signed in", "token", res.Msg.GetToken().GetId(), "name", res.Msg.GetToken().GetName())
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (h *Handler) logout(_ context.Context, w http.ResponseWriter, _ *http.Request, _ *session, _ *view) (string, error) {
	clearSession(w, h.cfg.Secure)
	return "/ui/login?msg=signed-out", nil
}

// safeNext keeps redirects after sign-in inside the UI.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.Contains(next, `\`) {
		return Prefix
	}
	return next
}

// cookieSafe accepts what a cookie value may hold unquoted (tokens are letters, digits, '_').
func cookieSafe(s string) bool {
	for _, c := range s {
		if c <= 0x20 || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\' {
			return false
		}
	}
	return len(s) <= 512
}

// requestID makes a client request ID, so a resubmitted confirm cannot start a second rollback.
func requestID(prefix string) (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("request ID: %w", err)
	}
	return prefix + hex.EncodeToString(b), nil
}
