package dev.wxauth.example;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

/**
 * The "browser" of the sign-in (consent page, callback), played against the WeChat simulator so
 * that the example runs anywhere the dev mode or the test harness runs. A real product only
 * redirects; none of this is in it.
 */
final class Browser {
  /**
   * WeChat's in-app browser: an official account's authorize page opens nowhere else, so the
   * browser played here is inside WeChat.
   */
  private static final String WECHAT_BROWSER_UA =
      "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
          + " Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800323b) NetType/WIFI Language/zh_CN";

  private static final Pattern FORM =
      Pattern.compile("<form method=\"post\" action=\"([^\"]+)\">([\\s\\S]*?)</form>");
  private static final Pattern HIDDEN =
      Pattern.compile("type=\"hidden\" name=\"([^\"]+)\" value=\"([^\"]*)\"");

  private final HttpClient http =
      HttpClient.newBuilder()
          .followRedirects(HttpClient.Redirect.NEVER)
          .connectTimeout(Duration.ofMillis(Wxauth.DEADLINE_MS))
          .build();
  private final String relayBase;

  /** {@code relayBase} reaches wxauth's public listener (its callback domain). */
  Browser(String relayBase) {
    this.relayBase = relayBase;
  }

  /** The flow's start URL and WeChat's authorize URL, and the cookie the browser keeps. */
  record Started(String toWechat, String cookie) {}

  private HttpResponse<String> fetch(String url, Map<String, String> form, String cookie)
      throws IOException, InterruptedException {
    HttpRequest.Builder request =
        HttpRequest.newBuilder(URI.create(url))
            .timeout(Duration.ofMillis(Wxauth.DEADLINE_MS))
            .header("User-Agent", WECHAT_BROWSER_UA);
    if (cookie != null) {
      request.header("Cookie", cookie);
    }
    if (form != null) {
      String body =
          form.entrySet().stream()
              .map(e -> encode(e.getKey()) + "=" + encode(e.getValue()))
              .collect(Collectors.joining("&"));
      request
          .header("Content-Type", "application/x-www-form-urlencoded")
          .POST(HttpRequest.BodyPublishers.ofString(body));
    }
    return http.send(request.build(), HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
  }

  private static String encode(String value) {
    return URLEncoder.encode(value, StandardCharsets.UTF_8);
  }

  private static String unescapeHtml(String text) {
    return text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
  }

  private static String location(HttpResponse<String> response, String what) throws IOException {
    if (response.statusCode() != 302) {
      throw new IOException(what + ": HTTP " + response.statusCode() + ", expected a redirect");
    }
    return response.headers().firstValue("location").orElseThrow(() -> new IOException(what));
  }

  /**
   * The browser follows the product's redirect to the flow's start URL (on wxauth's callback
   * domain): wxauth binds the flow to this browser with a cookie and redirects to WeChat.
   */
  Started start(String startUrl) throws IOException, InterruptedException {
    var answer = fetch(relayBase + "/wechat/callback?" + URI.create(startUrl).getRawQuery(), null, null);
    String cookie = answer.headers().firstValue("set-cookie").orElse("").split(";", 2)[0];
    return new Started(location(answer, "start URL"), cookie);
  }

  /** The user on WeChat's consent page: picks {@code user}, presses Allow. The callback URL. */
  String consent(String authorizeUrl, String user) throws IOException, InterruptedException {
    String pageUrl = authorizeUrl.split("#", 2)[0]; // `#wechat_redirect` is for WeChat's browser
    var page = fetch(pageUrl, null, null);
    if (page.statusCode() != 200) {
      throw new IOException("consent page: HTTP " + page.statusCode());
    }
    Matcher form = FORM.matcher(page.body());
    if (!form.find()) {
      throw new IOException("consent page: no form");
    }
    Map<String, String> fields = new LinkedHashMap<>();
    fields.put("user", user);
    Matcher hidden = HIDDEN.matcher(form.group(2));
    while (hidden.find()) {
      fields.put(hidden.group(1), unescapeHtml(hidden.group(2)));
    }
    String action = URI.create(pageUrl).resolve(unescapeHtml(form.group(1))).toString();
    return location(fetch(action, fields, null), "consent");
  }

  /** The callback reaches wxauth's relay with the browser's cookie; it redirects to the product. */
  String relay(String callbackUrl, String cookie) throws IOException, InterruptedException {
    String query = URI.create(callbackUrl).getRawQuery();
    return location(fetch(relayBase + "/wechat/callback?" + query, null, cookie), "relay");
  }
}
