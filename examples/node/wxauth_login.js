#!/usr/bin/env node
// A product backend in Node signing a user in through wxauth, end to end.
//
// What a Node internal service does with wxauth's gRPC API: BuildAuthorizeUrl, send the browser
// to WeChat, take the code the relay hands back, ExchangeCode with the flow id kept in the
// session, GetUserInfo, and react to failures by their ErrorInfo reason: start a new sign-in
// (SIGN_IN_AGAIN), send the user through consent again (REAUTHORIZATION_REQUIRED), retry after
// the RetryInfo delay (STORE_UNAVAILABLE), fix the request (INVALID_ARGUMENT + BadRequest).
// Then what the app's own credentials buy a product granted them, without the appsecret:
// GetAppAccessToken (the app's access token, for WeChat's server APIs) and SignJsSdkConfig
// (wx.config for one of the product's H5 pages; the product never sees the jsapi_ticket).
// Every call has a deadline and carries the caller's W3C `traceparent`.
//
// The "browser" (consent page, callback) is played by this script against the WeChat simulator,
// so it runs anywhere the dev mode or the test harness runs:
//
//     cd examples/node && npm ci
//     cargo run                 # the dev mode: wxauth on 50051/8080, simulator on 8081
//     node examples/node/wxauth_login.js
//
// Prints one JSON object with what it saw (tests/api/polyglot.rs checks it).

'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// The contract, read from the repository's proto/ at start (as the Python example does).
const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
// google.rpc.Status and its details (googleapis, vendored under ./proto): what wxauth puts in
// the `grpc-status-details-bin` trailer.
const RPC_PROTOS = ['status.proto', 'error_details.proto'].map((f) => path.join(__dirname, 'proto', 'google', 'rpc', f));

// Every call's deadline. wxauth honours `grpc-timeout` and stops work the caller gave up on.
const DEADLINE_MS = 5000;

// WeChat's in-app browser: an official account's authorize page opens nowhere else, so the
// browser this script plays is inside WeChat.
const WECHAT_BROWSER_UA =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) ' +
  'Mobile/15E148 MicroMessenger/8.0.50(0x1800323b) NetType/WIFI Language/zh_CN';

const rpcTypes = new protobuf.Root().loadSync(RPC_PROTOS, { keepCase: true });
const STATUS = rpcTypes.lookupType('google.rpc.Status');

/** A failed wxauth call, with what `grpc-status-details-bin` says about it. */
class WxauthError extends Error {
  constructor(error) {
    super(error.details || error.message);
    this.code = grpc.status[error.code] || String(error.code);
    this.reason = undefined; // google.rpc.ErrorInfo.reason: the stable value to branch on
    this.metadata = {}; // ErrorInfo.metadata (errcode, errmsg, family, ...)
    this.fieldViolations = {}; // google.rpc.BadRequest: field -> what is wrong
    this.retryDelayMs = undefined; // google.rpc.RetryInfo: set only where retrying helps
    const raw = error.metadata && error.metadata.get('grpc-status-details-bin')[0];
    if (!raw) return;
    for (const any of STATUS.decode(raw).details) {
      const type = rpcTypes.lookupType(any.type_url.slice(any.type_url.lastIndexOf('/') + 1));
      const detail = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
      switch (type.fullName) {
        case '.google.rpc.ErrorInfo':
          this.reason = detail.reason;
          this.metadata = detail.metadata;
          break;
        case '.google.rpc.BadRequest':
          for (const v of detail.field_violations) this.fieldViolations[v.field] = v.description;
          break;
        case '.google.rpc.RetryInfo': {
          const delay = detail.retry_delay || {};
          this.retryDelayMs = (delay.seconds || 0) * 1000 + Math.ceil((delay.nanos || 0) / 1e6);
          break;
        }
        default: // other details are ignored, as new ones may be added
      }
    }
  }

  /** The short form the script reports. */
  summary() {
    return { code: this.code, reason: this.reason, action: reactionTo(this) };
  }
}

/**
 * What the product does about a failed call: the one place it branches on wxauth's reasons.
 *
 * - `retry`: wxauth sent RetryInfo (STORE_UNAVAILABLE, WECHAT_UNAVAILABLE, the rate limits):
 *   the same call after the delay, a few times, within the user's patience.
 * - `sign_in_again`: the code is spent or was never this flow's (SIGN_IN_AGAIN: the exchange was
 *   sent and its answer lost, so WeChat may have spent the code). Never retry the exchange:
 *   send the user to "Sign in with WeChat" again (a new flow, a new code).
 * - `reauthorize`: the user's stored token is gone or dead (REAUTHORIZATION_REQUIRED: the
 *   refresh token expired or was revoked; TOKEN_NOT_FOUND). Retrying cannot help: the user
 *   must consent again, so treat them as signed out and start a sign-in.
 * - `fix_request`: a bug or a config gap on the product's side (INVALID_ARGUMENT with BadRequest
 *   naming the fields, an app or return URL not allowed, a wrong key). Log it; never retry.
 */
function reactionTo(error) {
  if (error.retryDelayMs !== undefined) return 'retry';
  switch (error.reason) {
    case 'SIGN_IN_AGAIN':
    case 'CODE_NOT_FROM_FLOW':
    case 'INVALID_CODE':
    case 'CODE_EXPIRED':
    case 'CODE_USED':
      return 'sign_in_again';
    case 'REAUTHORIZATION_REQUIRED':
    case 'TOKEN_NOT_FOUND':
    case 'SCOPE_NOT_GRANTED':
      return 'reauthorize';
    case 'INVALID_ARGUMENT':
    case 'RETURN_URL_NOT_ALLOWED':
    case 'APP_NOT_ALLOWED':
    case 'CLIENT_UNAUTHENTICATED':
    case 'APP_MISCONFIGURED':
      return 'fix_request';
    default:
      return 'fail';
  }
}

/**
 * The product's own trace for one of its request handlers. A service instrumented with
 * OpenTelemetry gets this from its SDK (`@opentelemetry/instrumentation-grpc` injects the
 * header); it is written out here so the example needs no tracing set-up. Each gRPC call is a
 * client span of the handler's trace, and its id is the `traceparent` parent wxauth sees.
 */
class Trace {
  constructor() {
    this.traceId = crypto.randomBytes(16).toString('hex');
  }

  /** A W3C `traceparent` for one outgoing call: a new span id under this trace, sampled. */
  childTraceparent() {
    return `00-${this.traceId}-${crypto.randomBytes(8).toString('hex')}-01`;
  }
}

/** wxauth's gRPC API for one client key: every call authenticated, traced and bounded. */
class Wxauth {
  constructor(address, key) {
    const definition = protoLoader.loadSync('wxauth/v1/wxauth.proto', {
      includeDirs: [PROTO_ROOT],
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
    });
    const { WeChatOAuthService } = grpc.loadPackageDefinition(definition).wxauth.v1;
    this.stub = new WeChatOAuthService(address, grpc.credentials.createInsecure());
    this.key = key;
    this.sent = []; // every (method, traceparent) sent, for the test to find wxauth's spans by
  }

  /** Calls `method` within `trace`; rejects with a WxauthError. */
  call(method, request, trace) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this.key}`);
    const traceparent = trace.childTraceparent();
    metadata.set('traceparent', traceparent);
    this.sent.push({ method, traceparent });
    const deadline = new Date(Date.now() + DEADLINE_MS);
    return new Promise((resolve, reject) => {
      this.stub[method](request, metadata, { deadline }, (error, response) =>
        error ? reject(new WxauthError(error)) : resolve(response),
      );
    });
  }

  /**
   * `call`, again after the RetryInfo delay while wxauth says a retry helps, at most `attempts`
   * times. Rejects with the last error, its `attempts` set.
   */
  async callRetrying(method, request, trace, attempts = 3) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.call(method, request, trace);
      } catch (error) {
        error.attempts = attempt;
        if (!(error instanceof WxauthError) || reactionTo(error) !== 'retry' || attempt >= attempts) throw error;
        await new Promise((resolve) => setTimeout(resolve, error.retryDelayMs));
      }
    }
  }

  close() {
    this.stub.close();
  }
}

/** (status, headers, body) of one request as the in-app browser makes it (with `cookie`, when given), redirects not followed. */
async function fetchPage(url, form, cookie) {
  const response = await fetch(url, {
    method: form ? 'POST' : 'GET',
    body: form ? new URLSearchParams(form) : undefined,
    headers: cookie ? { 'User-Agent': WECHAT_BROWSER_UA, Cookie: cookie } : { 'User-Agent': WECHAT_BROWSER_UA },
    redirect: 'manual',
    signal: AbortSignal.timeout(DEADLINE_MS),
  });
  return {
    status: response.status,
    location: response.headers.get('location'),
    setCookie: response.headers.get('set-cookie'),
    body: await response.text(),
  };
}

function unescapeHtml(text) {
  return text
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

/** The user on WeChat's consent page: picks `user`, presses Allow. Returns the callback URL. */
async function consent(authorizeUrl, user) {
  const pageUrl = authorizeUrl.split('#', 1)[0]; // `#wechat_redirect` is for WeChat's browser
  const page = await fetchPage(pageUrl);
  if (page.status !== 200) throw new Error(`consent page: HTTP ${page.status}`);
  const form = /<form method="post" action="([^"]+)">([\s\S]*?)<\/form>/.exec(page.body);
  if (!form) throw new Error('consent page: no form');
  const fields = { user };
  for (const [, name, value] of form[2].matchAll(/type="hidden" name="([^"]+)" value="([^"]*)"/g)) {
    fields[name] = unescapeHtml(value);
  }
  const allowed = await fetchPage(new URL(unescapeHtml(form[1]), pageUrl).href, fields);
  if (allowed.status !== 302) throw new Error(`consent: HTTP ${allowed.status}, expected a redirect`);
  return allowed.location;
}

/**
 * The browser follows the product's redirect to the flow's start URL (on wxauth's callback
 * domain; `relayBase` reaches it here): wxauth binds the flow to this browser with a cookie and
 * redirects to WeChat. Returns WeChat's authorize URL and the cookie the browser keeps.
 */
async function start(startUrl, relayBase) {
  const answer = await fetchPage(`${relayBase}/wechat/callback${new URL(startUrl).search}`);
  if (answer.status !== 302) throw new Error(`start URL: HTTP ${answer.status}`);
  return { toWechat: answer.location, cookie: answer.setCookie.split(';', 1)[0] };
}

/** The callback reaches wxauth's relay with the browser's cookie; the relay redirects to the product's return URL. */
async function relay(callbackUrl, relayBase, cookie) {
  const answer = await fetchPage(`${relayBase}/wechat/callback${new URL(callbackUrl).search}`, undefined, cookie);
  if (answer.status !== 302) throw new Error(`relay: HTTP ${answer.status}`);
  return answer.location;
}

/**
 * One sign-in as the product runs it: "Sign in with WeChat" (BuildAuthorizeUrl, keep state and
 * flow id in the session), the browser's round trip, then the return URL's handler (check
 * state, ExchangeCode with the session's flow id; a reload exchanges again). A SIGN_IN_AGAIN
 * starts a new sign-in: the user is sent back to "Sign in with WeChat", never the same code
 * again. Returns the exchange and how many sign-ins it took.
 */
async function signIn(wxauth, args, seen) {
  for (let attempt = 1; ; attempt += 1) {
    const session = { csrf: crypto.randomBytes(16).toString('base64url') };
    const built = await wxauth.callRetrying(
      'BuildAuthorizeUrl',
      { app: args.app, return_url: args.returnUrl, scope: 'SCOPE_SNSAPI_USERINFO', state: session.csrf },
      new Trace(),
    );
    session.flowId = built.flow_id;
    seen.authorize_url_ends_with = built.authorize_url.slice(-16);

    // The product redirects the browser to `start_url`, which binds the flow to it and sends it
    // to WeChat; the relay then answers the callback for this browser only.
    const { toWechat, cookie } = await start(built.start_url, args.relay);
    seen.start_url_on_callback_domain = built.start_url.includes('/wechat/callback?start=');
    const backToProduct = new URL(await relay(await consent(toWechat, args.user), args.relay, cookie));
    seen.returned_to = `${backToProduct.origin}${backToProduct.pathname}`;
    seen.state_matches = backToProduct.searchParams.get('state') === session.csrf;
    if (!seen.state_matches) throw new Error('state does not match the session: refuse');

    const callback = new Trace();
    const exchange = {
      flow_id: session.flowId,
      code: backToProduct.searchParams.get('code'),
      include_user_info: true,
    };
    try {
      const first = await wxauth.call('ExchangeCode', exchange, callback);
      const again = await wxauth.call('ExchangeCode', exchange, callback);
      seen.same_result_again = JSON.stringify(again) === JSON.stringify(first);
      seen.sign_ins = attempt;
      return { flowId: session.flowId, first };
    } catch (error) {
      if (!(error instanceof WxauthError) || reactionTo(error) !== 'sign_in_again' || attempt >= 2) throw error;
      seen.exchange_failed = error.summary();
    }
  }
}

/**
 * GetAppAccessToken: the app's token for WeChat's server APIs (templates, menus, QR codes), read
 * from wxauth each time rather than cached for long (wxauth renews it; a WeChat 40001 with it
 * goes to InvalidateAppAccessToken). SignJsSdkConfig: what the page passes to wx.config.
 */
async function appLevel(product, args, seen) {
  const trace = new Trace();
  const token = await product.callRetrying('GetAppAccessToken', { app: args.app }, trace);
  // The token itself goes to WeChat only: the JSON line shows its life, never the token.
  seen.app_access_token = { expires_in_s: token.expire_time.seconds - Math.floor(Date.now() / 1000) };
  const request = { app: args.app, url: args['page-url'], js_api_list: ['updateAppMessageShareData'] };
  const config = await product.callRetrying('SignJsSdkConfig', request, trace);
  // wx.config({appId, timestamp, nonceStr, signature, jsApiList}) on the page at config.url.
  seen.jssdk = {
    app_id: config.app_id,
    timestamp: config.timestamp,
    nonce_str: config.nonce_str,
    signature: config.signature,
    js_api_list: config.js_api_list,
    url: config.url,
  };
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      grpc: { type: 'string', default: '127.0.0.1:50051' }, // wxauth's gRPC address
      relay: { type: 'string', default: 'http://127.0.0.1:8080' }, // wxauth's public listener
      key: { type: 'string', default: 'dev-only-key' }, // this service's client key
      app: { type: 'string', default: 'demo-mp' }, // the app's config name (dev mode: demo-mp)
      'return-url': { type: 'string', default: 'http://127.0.0.1:8082/' }, // an allowlisted return URL
      user: { type: 'string', default: 'alice' }, // the simulator's test user
      // Optional: a wxauth whose Redis is down, to show STORE_UNAVAILABLE and its retries.
      'outage-grpc': { type: 'string' },
      // The key of a client granted `app_access_token` and `jssdk` (dev mode: the demo client),
      // and one of its H5 pages (under its return URLs) to sign wx.config for; empty: skipped.
      'app-key': { type: 'string', default: 'dev-only-key' },
      'page-url': { type: 'string', default: 'http://127.0.0.1:8082/jssdk' },
    },
  });
  args.returnUrl = args['return-url'];
  const wxauth = new Wxauth(args.grpc, args.key);
  const seen = {};
  try {
    // 1. Sign in (again, if the first exchange's answer was lost).
    const { flowId, first } = await signIn(wxauth, args, seen);
    seen.openid = first.openid;
    seen.nickname = first.user_info.nickname;

    // 2. Later pages: the profile, from wxauth's cache.
    const page = new Trace();
    const profile = await wxauth.callRetrying('GetUserInfo', { app: args.app, openid: first.openid }, page);
    seen.profile_nickname = profile.user_info.nickname;
    seen.profile_fetch_time = profile.fetch_time.seconds;

    // 3. A forced refresh. REAUTHORIZATION_REQUIRED: the refresh token is dead, so the user
    //    consents again (a new sign-in), and then the refresh works.
    const refresh = { app: args.app, openid: first.openid };
    try {
      await wxauth.call('RefreshToken', refresh, page);
      seen.refresh = 'ok';
    } catch (error) {
      if (!(error instanceof WxauthError) || reactionTo(error) !== 'reauthorize') throw error;
      seen.refresh = error.summary();
      const again = await signIn(wxauth, args, {});
      seen.reauthorized_same_user = again.first.openid === first.openid;
      await wxauth.call('RefreshToken', refresh, page);
      seen.refresh_after_reauthorization = 'ok';
    }

    // 4. Errors that no retry fixes.
    const refused = async (method, request) => {
      try {
        await wxauth.call(method, request, page);
        return 'answered';
      } catch (error) {
        if (!(error instanceof WxauthError)) throw error;
        return { ...error.summary(), field_violations: error.fieldViolations };
      }
    };
    seen.bad_request = await refused('GetUserInfo', { app: args.app, openid: 'not an openid!' });
    seen.unknown_user = await refused('GetUserInfo', { app: args.app, openid: 'oNobodyLoggedInHere0000000' });
    // A code pasted into this session that the relay never brought through its flow.
    seen.injected_code = await refused('ExchangeCode', { flow_id: flowId, code: 'NotACodeThisFlowRelayed' });

    // 5. A wxauth whose store is down: UNAVAILABLE with RetryInfo. Retried after the delay a
    //    couple of times; then the product shows "try again in a moment" (the user's flow and
    //    session are still good: no new sign-in needed).
    if (args['outage-grpc']) {
      const down = new Wxauth(args['outage-grpc'], args.key);
      try {
        const request = { app: args.app, return_url: args.returnUrl, state: 'csrf' };
        await down.callRetrying('BuildAuthorizeUrl', request, new Trace(), 2);
        seen.outage = 'answered';
      } catch (error) {
        if (!(error instanceof WxauthError)) throw error;
        seen.outage = { ...error.summary(), retry_delay_ms: error.retryDelayMs, attempts: error.attempts };
      } finally {
        wxauth.sent.push(...down.sent);
        down.close();
      }
    }
    // 6. The app's own credentials, for a client granted them (`clients.<name>.grants`).
    if (args['app-key']) {
      const product = new Wxauth(args.grpc, args['app-key']);
      try {
        await appLevel(product, args, seen);
      } finally {
        wxauth.sent.push(...product.sent);
        product.close();
      }
    }
    seen.sent = wxauth.sent;
  } finally {
    wxauth.close();
  }
  process.stdout.write(`${JSON.stringify(seen)}\n`);
}

main().catch((error) => {
  const details = error instanceof WxauthError ? ` ${JSON.stringify({ ...error.summary(), ...error })}` : '';
  process.stderr.write(`wxauth_login.js: ${error.message}${details}\n`);
  process.exit(1);
});
