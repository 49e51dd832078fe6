package main

// The gRPC side of the example: one client connection whose interceptors give every call what
// wxauth expects of a caller (the client key, a deadline, the caller's W3C `traceparent`), an
// error type that reads wxauth's status details, and a retry driven by RetryInfo.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	wxauthv1 "wxauth.dev/gen/go/wxauth/v1"
)

// callTimeout is every call's deadline. wxauth honours `grpc-timeout` and stops work the caller
// gave up on.
const callTimeout = 5 * time.Second

// WxauthError is a failed wxauth call, with what its status details (the
// `grpc-status-details-bin` trailer, read by status.Details) say about it.
type WxauthError struct {
	Code            codes.Code
	Message         string
	Reason          string            // google.rpc.ErrorInfo.reason: the stable value to branch on
	Metadata        map[string]string // ErrorInfo.metadata (errcode, errmsg, family, ...)
	FieldViolations map[string]string // google.rpc.BadRequest: field -> what is wrong
	RetryDelay      time.Duration     // google.rpc.RetryInfo: set only where retrying helps
	HasRetryInfo    bool
	Attempts        int // how many times the call was made (the retry interceptor counts)
}

func (e *WxauthError) Error() string {
	return codeNames[e.Code] + " " + e.Reason + ": " + e.Message
}

// fromStatus reads a gRPC error's details; other details are ignored, as new ones may be added.
func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err // not a gRPC status: the caller's own context, say
	}
	e := &WxauthError{Code: st.Code(), Message: st.Message(), FieldViolations: map[string]string{}, Attempts: 1}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Metadata = d.GetReason(), d.GetMetadata()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations[v.GetField()] = v.GetDescription()
			}
		case *errdetails.RetryInfo:
			e.RetryDelay, e.HasRetryInfo = d.GetRetryDelay().AsDuration(), true
		}
	}
	return e
}

// Summary is the short form the example reports.
func (e *WxauthError) Summary() map[string]any {
	return map[string]any{"code": codeNames[e.Code], "reason": e.Reason, "action": reactionTo(e)}
}

// reactionTo is what the product does about a failed call: the one place it branches on
// wxauth's reasons.
//
//   - retry: wxauth sent RetryInfo (STORE_UNAVAILABLE, WECHAT_UNAVAILABLE, the rate limits): the
//     same call after the delay, a few times, within the user's patience.
//   - sign_in_again: the code is spent or was never this flow's (SIGN_IN_AGAIN: the exchange
//     was sent and its answer lost, so WeChat may have spent the code). Never retry the
//     exchange: send the user to "Sign in with WeChat" again (a new flow, a new code).
//   - reauthorize: the user's stored token is gone or dead (REAUTHORIZATION_REQUIRED: the
//     refresh token expired or was revoked; TOKEN_NOT_FOUND). The user must consent again.
//   - fix_request: a bug or a config gap on the product's side (INVALID_ARGUMENT with
//     BadRequest naming the fields, an app or return URL not allowed, a wrong key). Log it;
//     never retry.
func reactionTo(e *WxauthError) string {
	if e.HasRetryInfo {
		return "retry"
	}
	switch e.Reason {
	case "SIGN_IN_AGAIN", "CODE_NOT_FROM_FLOW", "INVALID_CODE", "CODE_EXPIRED", "CODE_USED":
		return "sign_in_again"
	case "REAUTHORIZATION_REQUIRED", "TOKEN_NOT_FOUND", "SCOPE_NOT_GRANTED":
		return "reauthorize"
	case "INVALID_ARGUMENT", "RETURN_URL_NOT_ALLOWED", "APP_NOT_ALLOWED", "CLIENT_UNAUTHENTICATED", "APP_MISCONFIGURED":
		return "fix_request"
	default:
		return "fail"
	}
}

// reaction is reactionTo for any error: "fail" for one that is not wxauth's.
func reaction(err error) (*WxauthError, string) {
	var e *WxauthError
	if errors.As(err, &e) {
		return e, reactionTo(e)
	}
	return nil, "fail"
}

// codeNames are the canonical names of gRPC codes (codes.Code.String() is CamelCase).
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL",
	codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

// Trace is the product's own trace for one of its request handlers. A service instrumented
// with OpenTelemetry gets this from its SDK (otelgrpc injects the header); it is written out
// here so the example needs no tracing set-up. Each gRPC call is a client span of the
// handler's trace, and its id is the `traceparent` parent wxauth sees.
type Trace struct{ traceID string }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go >= 1.24)
	return hex.EncodeToString(b)
}

// NewTrace starts a trace: a new trace id.
func NewTrace() *Trace { return &Trace{traceID: randomHex(16)} }

// childTraceparent is a W3C `traceparent` for one outgoing call: a new span id, sampled.
func (t *Trace) childTraceparent() string { return "00-" + t.traceID + "-" + randomHex(8) + "-01" }

type traceKey struct{}
type attemptsKey struct{}

// WithTrace makes the calls made with ctx spans of trace.
func WithTrace(ctx context.Context, trace *Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, trace)
}

// Retrying lets the calls made with ctx be made up to attempts times while wxauth answers with
// RetryInfo. A call without it is made once.
func Retrying(ctx context.Context, attempts int) context.Context {
	return context.WithValue(ctx, attemptsKey{}, attempts)
}

// Sent is one call as the example reports it, for the test to find wxauth's span by.
type Sent struct {
	Method      string `json:"method"`
	Traceparent string `json:"traceparent"`
}

// Wxauth is wxauth's gRPC API for one client key: every call authenticated, traced, bounded.
type Wxauth struct {
	wxauthv1.WeChatOAuthServiceClient
	conn *grpc.ClientConn
	key  string
	mu   sync.Mutex
	sent []Sent
}

// Dial connects to wxauth at address (plaintext: inside the company's network, as the other
// examples; use credentials.NewTLS where wxauth's listener has TLS).
func Dial(address, key string) (*Wxauth, error) {
	w := &Wxauth{key: key}
	conn, err := grpc.NewClient(address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Outermost first: the retry loop wraps each attempt, and each attempt gets its own
		// deadline, traceparent and parsed error.
		grpc.WithChainUnaryInterceptor(w.retryOnRetryInfo, w.eachAttempt))
	if err != nil {
		return nil, err
	}
	w.conn, w.WeChatOAuthServiceClient = conn, wxauthv1.NewWeChatOAuthServiceClient(conn)
	return w, nil
}

// Close closes the connection.
func (w *Wxauth) Close() error { return w.conn.Close() }

// Sent is every call made so far.
func (w *Wxauth) Sent() []Sent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Sent(nil), w.sent...)
}

// record adds calls to Sent (another connection's, too: the example reports them all).
func (w *Wxauth) record(calls ...Sent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sent = append(w.sent, calls...)
}

// eachAttempt adds the client key, a deadline and a `traceparent` (a new span of the
// context's trace) to one attempt, and turns its error into a *WxauthError.
func (w *Wxauth) eachAttempt(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	trace, ok := ctx.Value(traceKey{}).(*Trace)
	if !ok {
		trace = NewTrace()
	}
	traceparent := trace.childTraceparent()
	w.record(Sent{Method: method[strings.LastIndex(method, "/")+1:], Traceparent: traceparent})
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+w.key, "traceparent", traceparent)
	if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
		return fromStatus(err)
	}
	return nil
}

// retryOnRetryInfo makes the call again after RetryInfo's delay while wxauth says a retry
// helps, up to the context's Retrying attempts; the last error carries how many were made.
// Errors without RetryInfo (SIGN_IN_AGAIN above all) are never retried.
func (w *Wxauth) retryOnRetryInfo(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	attempts, ok := ctx.Value(attemptsKey{}).(int)
	if !ok {
		attempts = 1
	}
	for attempt := 1; ; attempt++ {
		err := invoker(ctx, method, req, reply, cc, opts...)
		e, react := reaction(err)
		if e != nil {
			e.Attempts = attempt
		}
		if err == nil || react != "retry" || attempt >= attempts {
			return err
		}
		select {
		case <-time.After(e.RetryDelay):
		case <-ctx.Done():
			return err
		}
	}
}
