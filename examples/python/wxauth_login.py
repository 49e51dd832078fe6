#!/usr/bin/env python3
"""A product backend in Python signing a user in through wxauth, end to end.

What a non-Rust internal service does with wxauth's gRPC API: BuildAuthorizeUrl, send the
browser to WeChat, take the code the relay hands back, ExchangeCode, GetUserInfo, read wxauth's
error details (google.rpc.ErrorInfo) when a call fails, sign the same person in through the mini
program (SignInMiniProgram) and find their web account by unionid (FindAccounts), and
ForgetUser. Every call has a deadline and carries the caller's W3C `traceparent`. The "browser"
part (consent
page, callback) is played by this script against the WeChat simulator, so it runs anywhere
the dev mode or the test harness runs.

    pip install -r examples/python/requirements.txt
    cargo run   # the dev mode: wxauth on 50051/8080, simulator on 8081
    python3 examples/python/wxauth_login.py

Prints one JSON object with what it saw. Stubs are generated from proto/ at start (into a
temporary directory), as a service's build would.
"""

import argparse
import html
import importlib
import json
import re
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def generate_stubs():
    """Compiles wxauth.proto with grpc_tools into a temp dir and imports the modules."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="wxauth-py-")
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / "wxauth/v1/wxauth.proto"),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on proto/wxauth/v1/wxauth.proto")
    sys.path.insert(0, out)
    return importlib.import_module("wxauth.v1.wxauth_pb2"), importlib.import_module("wxauth.v1.wxauth_pb2_grpc")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are what we want to look at, not follow."""

    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


# WeChat's in-app browser: an official account's authorize page opens nowhere else (elsewhere
# WeChat shows "请在微信客户端打开链接"), so the browser this script plays is inside WeChat.
WECHAT_BROWSER_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.50(0x1800323b) NetType/WIFI Language/zh_CN"
)


def fetch(url, data=None, cookie=None):
    """(status, headers, body) of one request, 3xx included."""
    headers = {"User-Agent": WECHAT_BROWSER_UA}
    if cookie:
        headers["Cookie"] = cookie
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def consent(authorize_url, user):
    """Plays the user on WeChat's consent page: picks `user`, presses Allow. Returns where
    WeChat sends the browser (the callback URL with code and state)."""
    page_url = authorize_url.split("#", 1)[0]  # `#wechat_redirect` is for WeChat's browser
    status, _, page = fetch(page_url)
    if status != 200:
        sys.exit(f"consent page: HTTP {status}")
    allow = re.search(r'<form method="post" action="([^"]+)">(.*?)</form>', page, re.S)
    if not allow:
        sys.exit("consent page: no form")
    action, form = allow.groups()
    fields = {name: html.unescape(value) for name, value in re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', form)}
    fields["user"] = user
    target = urllib.parse.urljoin(page_url, html.unescape(action))
    status, headers, _ = fetch(target, urllib.parse.urlencode(fields).encode())
    if status != 302:
        sys.exit(f"consent: HTTP {status}, expected a redirect to the callback")
    return headers["Location"]


def start(start_url, relay_base):
    """The browser follows the product's redirect to the flow's start URL (on wxauth's callback
    domain; `relay_base` reaches it here). wxauth binds the flow to this browser with a cookie
    and redirects to WeChat. Returns WeChat's authorize URL and the cookie the browser keeps."""
    query = urllib.parse.urlsplit(start_url).query
    status, headers, _ = fetch(f"{relay_base}/wechat/callback?{query}")
    if status != 302:
        sys.exit(f"start URL: HTTP {status}")
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    return headers["Location"], cookie


def relay(callback_url, relay_base, cookie):
    """The callback reaches wxauth's relay (through the Ingress of the callback domain in
    production) with the browser's cookie; the relay answers with a redirect to the product's
    return URL."""
    query = urllib.parse.urlsplit(callback_url).query
    status, headers, _ = fetch(f"{relay_base}/wechat/callback?{query}", cookie=cookie)
    if status != 302:
        sys.exit(f"relay: HTTP {status}")
    return headers["Location"]


def status_detail(error, message_type):
    """The `message_type` detail (google.rpc) of a failed call's status, or None."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            return message
    return None


def error_reason(error):
    """wxauth's machine-readable reason (google.rpc.ErrorInfo) of a failed call."""
    info = status_detail(error, error_details_pb2.ErrorInfo)
    return (info.reason, dict(info.metadata)) if info else (None, {})


def field_violations(error):
    """The invalid fields (google.rpc.BadRequest) of an INVALID_ARGUMENT answer."""
    bad = status_detail(error, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad.field_violations} if bad else {}


def retry_delay_ms(error):
    """How long wxauth asks the caller to wait before a retry (google.rpc.RetryInfo), or None:
    only an answer carrying RetryInfo is worth retrying."""
    info = status_detail(error, error_details_pb2.RetryInfo)
    return info.retry_delay.seconds * 1000 + info.retry_delay.nanos // 1_000_000 if info else None


def reaction_to(error):
    """What the product does about a failed call, from its reason (docs/api.md, the error table):
    `retry` (after RetryInfo's delay), `sign_in_again` (a new flow: never retry an exchange whose
    answer was lost, WeChat may have spent the code), `reauthorize` (the user's token is gone or
    dead: consent again), `fix_request` (a bug or config gap: log it, never retry), or `fail`."""
    if retry_delay_ms(error) is not None:
        return "retry"
    reason, _ = error_reason(error)
    if reason in ("SIGN_IN_AGAIN", "CODE_NOT_FROM_FLOW", "INVALID_CODE", "CODE_EXPIRED", "CODE_USED"):
        return "sign_in_again"
    if reason in ("REAUTHORIZATION_REQUIRED", "TOKEN_NOT_FOUND", "SCOPE_NOT_GRANTED"):
        return "reauthorize"
    if reason in ("INVALID_ARGUMENT", "RETURN_URL_NOT_ALLOWED", "APP_NOT_ALLOWED", "CLIENT_UNAUTHENTICATED",
                  "APP_MISCONFIGURED"):
        return "fix_request"
    return "fail"


def summary(error):
    """A failed call as the product logs it: gRPC code, wxauth's reason, the reaction."""
    return {"code": error.code().name, "reason": error_reason(error)[0], "action": reaction_to(error)}


# Every call's deadline (seconds). wxauth honours `grpc-timeout` and stops work the caller gave up on.
DEADLINE = 5


class Trace:
    """The product's own trace for one of its request handlers. A service instrumented with
    OpenTelemetry gets this from its SDK (opentelemetry-instrumentation-grpc injects the header);
    it is written out here so the example needs no tracing set-up. Each gRPC call is a client
    span of the handler's trace, and its id is the `traceparent` parent wxauth sees."""

    def __init__(self):
        self.trace_id = secrets.token_hex(16)

    def child_traceparent(self):
        """A W3C `traceparent` for one outgoing call: a new span id under this trace, sampled."""
        return f"00-{self.trace_id}-{secrets.token_hex(8)}-01"


class Wxauth:
    """wxauth's gRPC API for one client key: every call authenticated, traced and bounded."""

    def __init__(self, stub, key):
        self.stub = stub
        self.key = key
        self.sent = []  # every (method, traceparent) sent, for the test to find wxauth's spans by

    def call(self, method, request, trace):
        traceparent = trace.child_traceparent()
        self.sent.append({"method": method, "traceparent": traceparent})
        metadata = (("authorization", f"Bearer {self.key}"), ("traceparent", traceparent))
        return getattr(self.stub, method)(request, metadata=metadata, timeout=DEADLINE)

    def call_retrying(self, method, request, trace, attempts=3):
        """`call`, again after RetryInfo's delay while wxauth says a retry helps, at most
        `attempts` times; raises the last error with `attempts` set on it."""
        for attempt in range(1, attempts + 1):
            try:
                return self.call(method, request, trace)
            except grpc.RpcError as e:
                e.attempts = attempt
                delay = retry_delay_ms(e)
                if delay is None or attempt >= attempts:
                    raise
                time.sleep(delay / 1000)
        raise AssertionError("unreachable")


def sign_in(wxauth, pb, args, seen):
    """"Sign in with WeChat", end to end: a flow bound to our return URL and CSRF state (a real
    product keeps `csrf` and the flow id in the browser's session), the browser's hops (the
    flow's start URL binds it to the browser; WeChat's consent; the relay answers the callback
    for this browser only), then the exchange, twice as a reload would. An exchange whose answer
    was lost (SIGN_IN_AGAIN) is never retried: the user signs in again, a new flow, a new code.
    Returns the flow id and the exchange's answer."""
    for attempt in (1, 2):
        csrf = secrets.token_urlsafe(16)
        request = pb.BuildAuthorizeUrlRequest(
            app=args.app, return_url=args.return_url, scope=pb.SCOPE_SNSAPI_USERINFO, state=csrf
        )
        built = wxauth.call_retrying("BuildAuthorizeUrl", request, Trace())
        seen["authorize_url_ends_with"] = built.authorize_url[-16:]
        to_wechat, cookie = start(built.start_url, args.relay)
        seen["start_url_on_callback_domain"] = "/wechat/callback?start=" in built.start_url
        back_to_product = relay(consent(to_wechat, args.user), args.relay, cookie)
        returned = urllib.parse.urlsplit(back_to_product)
        params = dict(urllib.parse.parse_qsl(returned.query))
        seen["returned_to"] = f"{returned.scheme}://{returned.netloc}{returned.path}"
        seen["state_matches"] = params.get("state") == csrf
        if not seen["state_matches"]:
            sys.exit("state does not match the session: refuse")
        # wxauth refuses a code that did not come through this flow, so a code leaked from
        # someone else's sign-in signs no one in.
        callback = Trace()
        exchange = pb.ExchangeCodeRequest(flow_id=built.flow_id, code=params["code"], include_user_info=True)
        try:
            first = wxauth.call("ExchangeCode", exchange, callback)
            again = wxauth.call("ExchangeCode", exchange, callback)
        except grpc.RpcError as e:
            if reaction_to(e) != "sign_in_again" or attempt == 2:
                raise
            seen["exchange_failed"] = summary(e)
            continue
        seen["same_result_again"] = again.openid == first.openid and again.user_info == first.user_info
        seen["sign_ins"] = attempt
        return built.flow_id, first
    raise AssertionError("unreachable")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", default="127.0.0.1:50051", help="wxauth's gRPC address")
    parser.add_argument("--relay", default="http://127.0.0.1:8080", help="wxauth's public listener")
    parser.add_argument("--key", default="dev-only-key", help="this service's client key")
    parser.add_argument("--app", default="demo-mp", help="the WeChat app's config name (dev mode: demo-mp)")
    parser.add_argument("--return-url", default="http://127.0.0.1:8082/", help="an allowlisted return URL")
    parser.add_argument("--user", default="alice", help="the simulator's test user to sign in")
    parser.add_argument("--sim", default="http://127.0.0.1:8081", help="the WeChat simulator (mints js_codes)")
    parser.add_argument("--mini-app", default="demo-mini", help="the mini program's config name")
    parser.add_argument("--mini-appid", default="wxd0000000000000d4", help="the mini program's appid")
    parser.add_argument("--outage-grpc", help="optional: a wxauth whose Redis is down (STORE_UNAVAILABLE, retries)")
    args = parser.parse_args()

    pb, pb_grpc = generate_stubs()
    channel = grpc.insecure_channel(args.grpc)
    wxauth = Wxauth(pb_grpc.WeChatOAuthServiceStub(channel), args.key)
    seen = {}

    # 1-3. Sign in (again, if the first exchange's answer was lost).
    flow_id, first = sign_in(wxauth, pb, args, seen)
    seen["openid"] = first.openid
    seen["nickname"] = first.user_info.nickname

    # 4. Later pages: the profile, answered from wxauth's cache.
    page = Trace()
    profile = wxauth.call_retrying("GetUserInfo", pb.GetUserInfoRequest(app=args.app, openid=first.openid), page)
    seen["profile_nickname"] = profile.user_info.nickname
    seen["profile_fetch_time"] = profile.fetch_time.seconds

    # 4b. A forced refresh. REAUTHORIZATION_REQUIRED: the refresh token is dead, so the user
    #     consents again (a new sign-in), and then the refresh works.
    refresh = pb.RefreshTokenRequest(app=args.app, openid=first.openid)
    try:
        wxauth.call("RefreshToken", refresh, page)
        seen["refresh"] = "ok"
    except grpc.RpcError as e:
        if reaction_to(e) != "reauthorize":
            raise
        seen["refresh"] = summary(e)
        _, again = sign_in(wxauth, pb, args, {})
        seen["reauthorized_same_user"] = again.openid == first.openid
        wxauth.call("RefreshToken", refresh, page)
        seen["refresh_after_reauthorization"] = "ok"

    # 5. Errors that no retry fixes carry a reason to branch on (and BadRequest names the field).
    def refused(method, request):
        try:
            wxauth.call(method, request, page)
            return "answered"
        except grpc.RpcError as e:
            return {**summary(e), "field_violations": field_violations(e)}

    seen["bad_request"] = refused("GetUserInfo", pb.GetUserInfoRequest(app=args.app, openid="not an openid!"))
    unknown = pb.GetUserInfoRequest(app=args.app, openid="oNobodyLoggedInHere0000000")
    seen["unknown_user"] = refused("GetUserInfo", unknown)
    # A code pasted into this session that the relay never brought here (code injection).
    injected = pb.ExchangeCodeRequest(flow_id=flow_id, code="NotACodeThisFlowRelayed")
    seen["injected_code"] = refused("ExchangeCode", injected)

    # 5b. A wxauth whose store is down: UNAVAILABLE with RetryInfo. Retried after the delay a
    #     couple of times; then the product shows "try again in a moment" (the user's session is
    #     still good: no new sign-in needed).
    if args.outage_grpc:
        down = Wxauth(pb_grpc.WeChatOAuthServiceStub(grpc.insecure_channel(args.outage_grpc)), args.key)
        request = pb.BuildAuthorizeUrlRequest(app=args.app, return_url=args.return_url, state="csrf")
        try:
            down.call_retrying("BuildAuthorizeUrl", request, Trace(), attempts=2)
            seen["outage"] = "answered"
        except grpc.RpcError as e:
            seen["outage"] = {**summary(e), "retry_delay_ms": retry_delay_ms(e), "attempts": e.attempts}
        wxauth.sent.extend(down.sent)

    # 6. The same person opens the mini program: wx.login() gives it a js_code (played here by the
    #    simulator's control API), the mini program posts it to us, we sign them in. The
    #    session_key stays in wxauth; the unionid finds the account they signed in with on the web.
    minted = urllib.parse.urlencode({"appid": args.mini_appid, "user": args.user})
    status, _, body = fetch(f"{args.sim}/sim/js_code?{minted}", b"")
    if status != 200:
        sys.exit(f"simulator js_code: HTTP {status}")
    js_code = json.loads(body)["js_code"]
    mini = wxauth.call("SignInMiniProgram", pb.SignInMiniProgramRequest(app=args.mini_app, js_code=js_code), page)
    seen["mini_openid_differs"] = mini.openid != first.openid
    seen["mini_unionid_matches"] = bool(mini.unionid) and mini.unionid == first.unionid
    found = wxauth.call("FindAccounts", pb.FindAccountsRequest(unionid=mini.unionid), page)
    seen["accounts"] = sorted(f"{a.app}:{pb.AppKind.Name(a.kind)}" for a in found.accounts)
    seen["web_account_by_unionid"] = next((a.openid for a in found.accounts if a.app == args.app), None)

    # 7. The user closes their account: wxauth forgets them.
    forget = pb.ForgetUserRequest(app=args.app, openid=first.openid)
    seen["forgot_a_token"] = wxauth.call("ForgetUser", forget, page).had_token
    try:
        wxauth.call("GetUserInfo", pb.GetUserInfoRequest(app=args.app, openid=first.openid), page)
        seen["after_forget"] = "answered"
    except grpc.RpcError as e:
        seen["after_forget"] = error_reason(e)[0]

    # 8. The app's own access token (template messages, menus, QR codes): wxauth alone holds the
    #    appsecret and hands the token to clients granted `app_access_token` (the dev mode's
    #    demo client is); after WeChat answers 40001 with it, InvalidateAppAccessToken gives the
    #    one to use. A client without the grant is told which grant it lacks.
    try:
        token = wxauth.call("GetAppAccessToken", pb.GetAppAccessTokenRequest(app=args.app), page)
        fresh = wxauth.call(
            "InvalidateAppAccessToken",
            pb.InvalidateAppAccessTokenRequest(app=args.app, access_token=token.access_token),
            page,
        )
        seen["app_token"] = "replaced" if fresh.replaced else "kept"
    except grpc.RpcError as e:
        reason, metadata = error_reason(e)
        seen["app_token"] = {"reason": reason, "grant": metadata.get("grant")}

    # 9. Users WeChat says revoked, closed or changed: a product polls its own feed (every few
    #    seconds, in a loop of its own), keeps `next_cursor` where it survives a restart, acts on
    #    each event, and re-checks all its users when `gap` says it fell behind. Here one poll:
    #    no push reached this wxauth, and a product's own ForgetUser writes no event.
    cursor = ""  # a real product loads the cursor it saved
    feed = wxauth.call("ReadUserEvents", pb.ReadUserEventsRequest(after=cursor, limit=100), page)
    for event in feed.events:
        gone = event.kind in (pb.USER_EVENT_KIND_REVOKED, pb.USER_EVENT_KIND_ACCOUNT_CLOSED)
        print(f"{event.app}:{event.openid} {'sign out' if gone else 'read the profile again'}", file=sys.stderr)
    seen["user_events"] = {"events": len(feed.events), "gap": feed.gap}
    seen["next_cursor_kept"] = feed.next_cursor == cursor  # nothing new: the same cursor (empty)

    seen["sent"] = wxauth.sent
    print(json.dumps(seen, ensure_ascii=False))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        reason, metadata = error_reason(e)
        sys.exit(f"wxauth answered {e.code().name}: {reason} {metadata or ''} {field_violations(e) or ''}".rstrip())
