// Command wxauth-login is a product backend in Go signing a user in through wxauth, end to end.
//
// What a Go internal service does with wxauth's gRPC API: BuildAuthorizeUrl, send the browser
// to WeChat, take the code the relay hands back, ExchangeCode with the flow id kept in the
// session, GetUserInfo, and react to failures by their ErrorInfo reason: start a new sign-in
// (SIGN_IN_AGAIN), send the user through consent again (REAUTHORIZATION_REQUIRED), retry after
// the RetryInfo delay (STORE_UNAVAILABLE), fix the request (INVALID_ARGUMENT + BadRequest).
// Every call has a deadline and carries the caller's W3C `traceparent`.
//
//	buf generate                # the Go code of ../../proto (scripts/setup does it)
//	cargo run                   # the dev mode: wxauth on 50051/8080, simulator on 8081
//	go run .                    # from examples/go
//
// Prints one JSON object with what it saw (tests/api/polyglot.rs checks it).
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"

	"google.golang.org/protobuf/proto"

	wxauthv1 "wxauth.dev/gen/go/wxauth/v1"
)

type options struct {
	grpc, relay, key, app, returnURL, user, outageGrpc string
}

func parseOptions() options {
	var o options
	flag.StringVar(&o.grpc, "grpc", "127.0.0.1:50051", "wxauth's gRPC address")
	flag.StringVar(&o.relay, "relay", "http://127.0.0.1:8080", "wxauth's public listener")
	flag.StringVar(&o.key, "key", "dev-only-key", "this service's client key")
	flag.StringVar(&o.app, "app", "demo-mp", "the app's config name (dev mode: demo-mp)")
	flag.StringVar(&o.returnURL, "return-url", "http://127.0.0.1:8082/", "an allowlisted return URL")
	flag.StringVar(&o.user, "user", "alice", "the simulator's test user")
	flag.StringVar(&o.outageGrpc, "outage-grpc", "", "optional: a wxauth whose Redis is down, to show STORE_UNAVAILABLE and its retries")
	flag.Parse()
	return o
}

// session is what the product keeps in the browser's session between "Sign in with WeChat"
// and the return URL.
type session struct{ csrf, flowID string }

// signIn is one sign-in as the product runs it: "Sign in with WeChat" (BuildAuthorizeUrl, keep
// state and flow id in the session), the browser's round trip, then the return URL's handler
// (check state, ExchangeCode with the session's flow id; a reload exchanges again). A
// SIGN_IN_AGAIN starts a new sign-in: the user is sent back to "Sign in with WeChat", never the
// same code again. Returns the flow id and the first exchange's answer.
func signIn(w *Wxauth, o options, seen map[string]any) (string, *wxauthv1.ExchangeCodeResponse, error) {
	for attempt := 1; ; attempt++ {
		csrf := make([]byte, 16)
		_, _ = rand.Read(csrf) // crypto/rand.Read never fails (Go >= 1.24)
		s := session{csrf: base64.RawURLEncoding.EncodeToString(csrf)}
		ctx := Retrying(WithTrace(context.Background(), NewTrace()), 3)
		built, err := w.BuildAuthorizeUrl(ctx, &wxauthv1.BuildAuthorizeUrlRequest{
			App: o.app, ReturnUrl: o.returnURL, Scope: wxauthv1.Scope_SCOPE_SNSAPI_USERINFO, State: s.csrf,
		})
		if err != nil {
			return "", nil, err
		}
		s.flowID = built.GetFlowId()
		authorizeURL := built.GetAuthorizeUrl()
		seen["authorize_url_ends_with"] = authorizeURL[max(0, len(authorizeURL)-16):]

		// The product redirects the browser to start_url, which binds the flow to it and sends
		// it to WeChat; the relay then answers the callback for this browser only.
		toWechat, cookie, err := start(built.GetStartUrl(), o.relay)
		if err != nil {
			return "", nil, err
		}
		seen["start_url_on_callback_domain"] = strings.Contains(built.GetStartUrl(), "/wechat/callback?start=")
		callback, err := consent(toWechat, o.user)
		if err != nil {
			return "", nil, err
		}
		returned, err := relay(callback, o.relay, cookie)
		if err != nil {
			return "", nil, err
		}
		back, err := url.Parse(returned)
		if err != nil {
			return "", nil, err
		}
		seen["returned_to"] = back.Scheme + "://" + back.Host + back.Path
		seen["state_matches"] = back.Query().Get("state") == s.csrf
		if back.Query().Get("state") != s.csrf {
			return "", nil, errors.New("state does not match the session: refuse")
		}

		// The return URL's handler: a trace of its own, ExchangeCode never retried.
		ctx = WithTrace(context.Background(), NewTrace())
		exchange := &wxauthv1.ExchangeCodeRequest{FlowId: s.flowID, Code: back.Query().Get("code"), IncludeUserInfo: true}
		first, err := w.ExchangeCode(ctx, exchange)
		if err == nil {
			var again *wxauthv1.ExchangeCodeResponse
			if again, err = w.ExchangeCode(ctx, exchange); err == nil {
				seen["same_result_again"] = proto.Equal(again, first)
				seen["sign_ins"] = attempt
				return s.flowID, first, nil
			}
		}
		failure, react := reaction(err)
		if react != "sign_in_again" || attempt >= 2 {
			return "", nil, err
		}
		seen["exchange_failed"] = failure.Summary()
	}
}

// refused makes a call that should fail and reports how, with BadRequest's field violations.
func refused(err error) (any, error) {
	if err == nil {
		return "answered", nil
	}
	failure, _ := reaction(err)
	if failure == nil {
		return nil, err
	}
	summary := failure.Summary()
	summary["field_violations"] = failure.FieldViolations
	return summary, nil
}

// refreshOrReauthorize is a forced refresh. REAUTHORIZATION_REQUIRED: the refresh token is
// dead, so the user consents again (a new sign-in), and then the refresh works.
func refreshOrReauthorize(ctx context.Context, w *Wxauth, o options, openid string, seen map[string]any) error {
	refresh := &wxauthv1.RefreshTokenRequest{App: o.app, Openid: openid}
	_, err := w.RefreshToken(ctx, refresh)
	if err == nil {
		seen["refresh"] = "ok"
		return nil
	}
	failure, react := reaction(err)
	if react != "reauthorize" {
		return err
	}
	seen["refresh"] = failure.Summary()
	_, again, err := signIn(w, o, map[string]any{})
	if err != nil {
		return err
	}
	seen["reauthorized_same_user"] = again.GetOpenid() == openid
	if _, err := w.RefreshToken(ctx, refresh); err != nil {
		return err
	}
	seen["refresh_after_reauthorization"] = "ok"
	return nil
}

// outage calls a wxauth whose store is down: UNAVAILABLE with RetryInfo, retried after the
// delay a couple of times; then the product shows "try again in a moment" (the user's flow
// and session are still good: no new sign-in needed).
func outage(o options, w *Wxauth, seen map[string]any) error {
	down, err := Dial(o.outageGrpc, o.key)
	if err != nil {
		return err
	}
	defer func() { w.record(down.Sent()...); _ = down.Close() }()
	ctx := Retrying(WithTrace(context.Background(), NewTrace()), 2)
	_, err = down.BuildAuthorizeUrl(ctx, &wxauthv1.BuildAuthorizeUrlRequest{App: o.app, ReturnUrl: o.returnURL, State: "csrf"})
	if err == nil {
		seen["outage"] = "answered"
		return nil
	}
	failure, _ := reaction(err)
	if failure == nil {
		return err
	}
	summary := failure.Summary()
	summary["retry_delay_ms"] = failure.RetryDelay.Milliseconds()
	summary["attempts"] = failure.Attempts
	seen["outage"] = summary
	return nil
}

func run(o options, w *Wxauth) (map[string]any, error) {
	seen := map[string]any{}
	// 1. Sign in (again, if the first exchange's answer was lost).
	flowID, first, err := signIn(w, o, seen)
	if err != nil {
		return nil, err
	}
	seen["openid"], seen["nickname"] = first.GetOpenid(), first.GetUserInfo().GetNickname()

	// 2. Later pages: the profile, from wxauth's cache.
	page := WithTrace(context.Background(), NewTrace())
	profile, err := w.GetUserInfo(Retrying(page, 3), &wxauthv1.GetUserInfoRequest{App: o.app, Openid: first.GetOpenid()})
	if err != nil {
		return nil, err
	}
	seen["profile_nickname"] = profile.GetUserInfo().GetNickname()
	seen["profile_fetch_time"] = profile.GetFetchTime().GetSeconds()

	// 3. A forced refresh, with consent again where the refresh token is dead.
	if err := refreshOrReauthorize(page, w, o, first.GetOpenid(), seen); err != nil {
		return nil, err
	}

	// 4. Errors that no retry fixes.
	checks := []struct {
		key string
		err func() error
	}{
		{"bad_request", func() error {
			_, err := w.GetUserInfo(page, &wxauthv1.GetUserInfoRequest{App: o.app, Openid: "not an openid!"})
			return err
		}},
		{"unknown_user", func() error {
			_, err := w.GetUserInfo(page, &wxauthv1.GetUserInfoRequest{App: o.app, Openid: "oNobodyLoggedInHere0000000"})
			return err
		}},
		// A code pasted into this session that the relay never brought through its flow.
		{"injected_code", func() error {
			_, err := w.ExchangeCode(page, &wxauthv1.ExchangeCodeRequest{FlowId: flowID, Code: "NotACodeThisFlowRelayed"})
			return err
		}},
	}
	for _, check := range checks {
		if seen[check.key], err = refused(check.err()); err != nil {
			return nil, err
		}
	}

	// 5. A wxauth whose store is down.
	if o.outageGrpc != "" {
		if err := outage(o, w, seen); err != nil {
			return nil, err
		}
	}
	seen["sent"] = w.Sent()
	return seen, nil
}

func main() {
	o := parseOptions()
	w, err := Dial(o.grpc, o.key)
	if err == nil {
		var seen map[string]any
		if seen, err = run(o, w); err == nil {
			out := json.NewEncoder(os.Stdout)
			out.SetEscapeHTML(false)
			err = out.Encode(seen)
		}
		_ = w.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "wxauth-login: %v\n", err)
		os.Exit(1)
	}
}
