package dev.wxauth.example;

import com.google.gson.GsonBuilder;
import dev.wxauth.v1.BuildAuthorizeUrlRequest;
import dev.wxauth.v1.BuildAuthorizeUrlResponse;
import dev.wxauth.v1.ExchangeCodeRequest;
import dev.wxauth.v1.ExchangeCodeResponse;
import dev.wxauth.v1.GetUserInfoRequest;
import dev.wxauth.v1.GetUserInfoResponse;
import dev.wxauth.v1.RefreshTokenRequest;
import dev.wxauth.v1.Scope;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.Base64;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Callable;

/**
 * A product backend in Java signing a user in through wxauth, end to end.
 *
 * <p>What a Java internal service does with wxauth's gRPC API: BuildAuthorizeUrl, send the
 * browser to WeChat, take the code the relay hands back, ExchangeCode with the flow id kept in
 * the session, GetUserInfo, and react to failures by their ErrorInfo reason: start a new sign-in
 * (SIGN_IN_AGAIN), send the user through consent again (REAUTHORIZATION_REQUIRED), retry after
 * the RetryInfo delay (STORE_UNAVAILABLE), fix the request (INVALID_ARGUMENT + BadRequest).
 * Every call has a deadline and carries the caller's W3C {@code traceparent}.
 *
 * <pre>
 *   mvn -q package                          # in examples/java: code generated from ../../proto
 *   cargo run                               # the dev mode: wxauth on 50051/8080, simulator on 8081
 *   java -jar examples/java/target/wxauth-login.jar
 * </pre>
 *
 * <p>Prints one JSON object with what it saw (tests/api/polyglot.rs checks it).
 */
public final class WxauthLogin {
  private static final SecureRandom RANDOM = new SecureRandom();

  private final Wxauth wxauth;
  private final Browser browser;
  private final Map<String, String> options;
  private final String app;

  private WxauthLogin(Wxauth wxauth, Map<String, String> options) {
    this.wxauth = wxauth;
    this.browser = new Browser(options.get("relay"));
    this.options = options;
    this.app = options.get("app");
  }

  /** What the product keeps in the browser's session between the sign-in button and the return. */
  private record Session(String csrf, String flowId) {}

  /** One sign-in's result: the flow it went through and the first exchange's answer. */
  private record SignedIn(String flowId, ExchangeCodeResponse first) {}

  /**
   * One sign-in as the product runs it: "Sign in with WeChat" (BuildAuthorizeUrl, keep state and
   * flow id in the session), the browser's round trip, then the return URL's handler (check
   * state, ExchangeCode with the session's flow id; a reload exchanges again). A SIGN_IN_AGAIN
   * starts a new sign-in: the user is sent back to "Sign in with WeChat", never the same code
   * again.
   */
  private SignedIn signIn(Map<String, Object> seen) throws Exception {
    for (int attempt = 1; ; attempt++) {
      byte[] csrf = new byte[16];
      RANDOM.nextBytes(csrf);
      String state = Base64.getUrlEncoder().withoutPadding().encodeToString(csrf);
      BuildAuthorizeUrlRequest build =
          BuildAuthorizeUrlRequest.newBuilder()
              .setApp(app)
              .setReturnUrl(options.get("return-url"))
              .setScope(Scope.SCOPE_SNSAPI_USERINFO)
              .setState(state)
              .build();
      BuildAuthorizeUrlResponse built =
          wxauth.callRetrying("BuildAuthorizeUrl", new Trace(), 3, s -> s.buildAuthorizeUrl(build));
      Session session = new Session(state, built.getFlowId());
      String authorizeUrl = built.getAuthorizeUrl();
      seen.put("authorize_url_ends_with", authorizeUrl.substring(Math.max(0, authorizeUrl.length() - 16)));

      // The product redirects the browser to start_url, which binds the flow to it and sends it
      // to WeChat; the relay then answers the callback for this browser only.
      Browser.Started started = browser.start(built.getStartUrl());
      seen.put("start_url_on_callback_domain", built.getStartUrl().contains("/wechat/callback?start="));
      URI back = URI.create(browser.relay(browser.consent(started.toWechat(), options.get("user")), started.cookie()));
      seen.put("returned_to", back.getScheme() + "://" + back.getAuthority() + back.getPath());
      Map<String, String> query = query(back);
      seen.put("state_matches", session.csrf().equals(query.get("state")));
      if (!session.csrf().equals(query.get("state"))) {
        throw new IllegalStateException("state does not match the session: refuse");
      }

      // The return URL's handler: a trace of its own; ExchangeCode is never retried.
      Trace callback = new Trace();
      ExchangeCodeRequest exchange =
          ExchangeCodeRequest.newBuilder()
              .setFlowId(session.flowId())
              .setCode(query.getOrDefault("code", ""))
              .setIncludeUserInfo(true)
              .build();
      try {
        ExchangeCodeResponse first = wxauth.call("ExchangeCode", callback, s -> s.exchangeCode(exchange));
        ExchangeCodeResponse again = wxauth.call("ExchangeCode", callback, s -> s.exchangeCode(exchange));
        seen.put("same_result_again", again.equals(first));
        seen.put("sign_ins", attempt);
        return new SignedIn(session.flowId(), first);
      } catch (WxauthError e) {
        if (!e.reaction().equals("sign_in_again") || attempt >= 2) {
          throw e;
        }
        seen.put("exchange_failed", e.summary());
      }
    }
  }

  private static Map<String, String> query(URI uri) {
    Map<String, String> query = new HashMap<>();
    String raw = uri.getRawQuery();
    for (String pair : raw == null ? new String[0] : raw.split("&")) {
      String[] kv = pair.split("=", 2);
      query.put(
          URLDecoder.decode(kv[0], StandardCharsets.UTF_8),
          kv.length > 1 ? URLDecoder.decode(kv[1], StandardCharsets.UTF_8) : "");
    }
    return query;
  }

  /**
   * A forced refresh. REAUTHORIZATION_REQUIRED: the refresh token is dead, so the user consents
   * again (a new sign-in), and then the refresh works.
   */
  private void refresh(String openid, Trace page, Map<String, Object> seen) throws Exception {
    RefreshTokenRequest refresh = RefreshTokenRequest.newBuilder().setApp(app).setOpenid(openid).build();
    try {
      wxauth.call("RefreshToken", page, s -> s.refreshToken(refresh));
      seen.put("refresh", "ok");
    } catch (WxauthError e) {
      if (!e.reaction().equals("reauthorize")) {
        throw e;
      }
      seen.put("refresh", e.summary());
      SignedIn again = signIn(new HashMap<>());
      seen.put("reauthorized_same_user", again.first().getOpenid().equals(openid));
      wxauth.call("RefreshToken", page, s -> s.refreshToken(refresh));
      seen.put("refresh_after_reauthorization", "ok");
    }
  }

  /** A call that no retry fixes: how it was refused, with BadRequest's field violations. */
  private static Object refused(Callable<?> call) throws Exception {
    try {
      call.call();
      return "answered";
    } catch (WxauthError e) {
      Map<String, Object> summary = e.summary();
      summary.put("field_violations", e.fieldViolations);
      return summary;
    }
  }

  /**
   * A wxauth whose store is down: UNAVAILABLE with RetryInfo. Retried after the delay a couple of
   * times; then the product shows "try again in a moment" (the user's flow and session are still
   * good: no new sign-in needed).
   */
  private Object outage(String address) throws Exception {
    try (Wxauth down = new Wxauth(address, options.get("key"))) {
      BuildAuthorizeUrlRequest request =
          BuildAuthorizeUrlRequest.newBuilder()
              .setApp(app)
              .setReturnUrl(options.get("return-url"))
              .setState("csrf")
              .build();
      try {
        down.callRetrying("BuildAuthorizeUrl", new Trace(), 2, s -> s.buildAuthorizeUrl(request));
        return "answered";
      } catch (WxauthError e) {
        Map<String, Object> summary = e.summary();
        summary.put("retry_delay_ms", e.retryDelayMs);
        summary.put("attempts", e.attempts);
        return summary;
      } finally {
        wxauth.sent.addAll(down.sent);
      }
    }
  }

  private Map<String, Object> run() throws Exception {
    Map<String, Object> seen = new LinkedHashMap<>();
    // 1. Sign in (again, if the first exchange's answer was lost).
    SignedIn signedIn = signIn(seen);
    String openid = signedIn.first().getOpenid();
    seen.put("openid", openid);
    seen.put("nickname", signedIn.first().getUserInfo().getNickname());

    // 2. Later pages: the profile, from wxauth's cache.
    Trace page = new Trace();
    GetUserInfoRequest profileRequest = GetUserInfoRequest.newBuilder().setApp(app).setOpenid(openid).build();
    GetUserInfoResponse profile =
        wxauth.callRetrying("GetUserInfo", page, 3, s -> s.getUserInfo(profileRequest));
    seen.put("profile_nickname", profile.getUserInfo().getNickname());
    seen.put("profile_fetch_time", profile.getFetchTime().getSeconds());

    // 3. A forced refresh, with consent again where the refresh token is dead.
    refresh(openid, page, seen);

    // 4. Errors that no retry fixes.
    seen.put("bad_request", refused(() -> wxauth.call("GetUserInfo", page,
        s -> s.getUserInfo(GetUserInfoRequest.newBuilder().setApp(app).setOpenid("not an openid!").build()))));
    seen.put("unknown_user", refused(() -> wxauth.call("GetUserInfo", page,
        s -> s.getUserInfo(GetUserInfoRequest.newBuilder().setApp(app).setOpenid("oNobodyLoggedInHere0000000").build()))));
    // A code pasted into this session that the relay never brought through its flow.
    ExchangeCodeRequest injected =
        ExchangeCodeRequest.newBuilder().setFlowId(signedIn.flowId()).setCode("NotACodeThisFlowRelayed").build();
    seen.put("injected_code", refused(() -> wxauth.call("ExchangeCode", page, s -> s.exchangeCode(injected))));

    // 5. A wxauth whose store is down.
    if (options.containsKey("outage-grpc")) {
      seen.put("outage", outage(options.get("outage-grpc")));
    }
    seen.put("sent", wxauth.sent);
    return seen;
  }

  /** {@code --name value} pairs over the defaults (the dev mode's). */
  private static Map<String, String> parseOptions(String[] args) {
    Map<String, String> options = new HashMap<>();
    options.put("grpc", "127.0.0.1:50051"); // wxauth's gRPC address
    options.put("relay", "http://127.0.0.1:8080"); // wxauth's public listener
    options.put("key", "dev-only-key"); // this service's client key
    options.put("app", "demo-mp"); // the app's config name (dev mode: demo-mp)
    options.put("return-url", "http://127.0.0.1:8082/"); // an allowlisted return URL
    options.put("user", "alice"); // the simulator's test user
    // Optional: --outage-grpc, a wxauth whose Redis is down (STORE_UNAVAILABLE and its retries).
    for (int i = 0; i < args.length; i += 2) {
      if (!args[i].startsWith("--") || i + 1 >= args.length) {
        throw new IllegalArgumentException("expected --name value, got " + args[i]);
      }
      options.put(args[i].substring(2), args[i + 1]);
    }
    return options;
  }

  public static void main(String[] args) {
    // UTF-8 whatever the locale: the names are Chinese.
    PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
    try {
      Map<String, String> options = parseOptions(args);
      Map<String, Object> seen;
      try (Wxauth wxauth = new Wxauth(options.get("grpc"), options.get("key"))) {
        seen = new WxauthLogin(wxauth, options).run();
      }
      out.println(new GsonBuilder().disableHtmlEscaping().create().toJson(seen));
    } catch (Exception e) {
      System.err.println("WxauthLogin: " + e);
      System.exit(1);
    }
  }
}
