<?php
// A PHP product page signing a user in through wxauth's JSON face, end to end.
//
// What a PHP service (PHP 8, the curl extension; no gRPC extension, no Composer) does with
// wxauth: the Connect protocol's unary form on wxauth's gRPC port, `POST
// /wxauth.v1.WeChatOAuthService/<Method>` with a JSON body (docs/api.md, "JSON and curl").
// BuildAuthorizeUrl, send the browser to WeChat, take the code the relay hands back,
// ExchangeCode with the flow id kept in the session (twice: a reload), GetUserInfo,
// RefreshToken, and react to failures by their ErrorInfo reason: start a new sign-in
// (SIGN_IN_AGAIN), send the user through consent again (REAUTHORIZATION_REQUIRED), retry after
// the RetryInfo delay (STORE_UNAVAILABLE), fix the request (INVALID_ARGUMENT + BadRequest).
// Every call has a deadline (`Connect-Timeout-Ms`) and carries the caller's W3C `traceparent`.
//
// The "browser" (consent page, callback) is played by this script against the WeChat simulator,
// so it runs anywhere the dev mode or the test harness runs:
//
//     apt-get install php-cli php-curl
//     cargo run                 # the dev mode: wxauth on 50051/8080, simulator on 8081
//     php examples/php/wxauth_login.php
//
// Prints one JSON object with what it saw (tests/api/polyglot.rs checks it).

declare(strict_types=1);

// Every call's deadline: sent as Connect-Timeout-Ms (wxauth stops work the caller gave up on)
// and used as curl's own timeout, a little longer, so wxauth's answer arrives first.
const DEADLINE_MS = 5000;

// WeChat's in-app browser: an official account's authorize page opens nowhere else.
const WECHAT_BROWSER_UA = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 '
    . '(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800323b) NetType/WIFI Language/zh_CN';

/** A failed wxauth call, with what the Connect error's details say about it. */
final class WxauthError extends RuntimeException
{
    /** Connect's code (`invalid_argument`, ...), upper-cased as gRPC spells it. */
    public string $grpcCode;
    /** google.rpc.ErrorInfo.reason: the stable value to branch on. */
    public ?string $reason = null;
    /** ErrorInfo.metadata (errcode, errmsg, family, ...). */
    public array $metadata = [];
    /** google.rpc.BadRequest: field => what is wrong. */
    public array $fieldViolations = [];
    /** google.rpc.RetryInfo's delay: set only where retrying helps. */
    public ?int $retryDelayMs = null;
    /** How many times the call was made (callRetrying). */
    public int $attempts = 1;

    public function __construct(int $httpStatus, array $error)
    {
        parent::__construct((string) ($error['message'] ?? "HTTP $httpStatus"));
        $this->grpcCode = strtoupper((string) ($error['code'] ?? 'unknown'));
        // Each detail carries its protobuf (`value`, base64) and, from wxauth, its JSON (`debug`).
        foreach ($error['details'] ?? [] as $detail) {
            $debug = $detail['debug'] ?? [];
            switch ($detail['type'] ?? '') {
                case 'google.rpc.ErrorInfo':
                    $this->reason = $debug['reason'] ?? null;
                    $this->metadata = $debug['metadata'] ?? [];
                    break;
                case 'google.rpc.BadRequest':
                    foreach ($debug['fieldViolations'] ?? [] as $violation) {
                        $this->fieldViolations[$violation['field']] = $violation['description'] ?? '';
                    }
                    break;
                case 'google.rpc.RetryInfo':
                    // A google.protobuf.Duration in JSON: seconds with an `s` ("1s", "0.250s").
                    $this->retryDelayMs = (int) ceil(((float) rtrim($debug['retryDelay'] ?? '0s', 's')) * 1000);
                    break;
                default: // other details are ignored, as new ones may be added
            }
        }
    }

    /** The short form the script reports. */
    public function summary(): array
    {
        return ['code' => $this->grpcCode, 'reason' => $this->reason, 'action' => reactionTo($this)];
    }
}

/**
 * What the product does about a failed call: the one place it branches on wxauth's reasons
 * (as examples/node/wxauth_login.js explains for each).
 */
function reactionTo(WxauthError $error): string
{
    if ($error->retryDelayMs !== null) {
        return 'retry';
    }
    return match ($error->reason) {
        'SIGN_IN_AGAIN', 'CODE_NOT_FROM_FLOW', 'INVALID_CODE', 'CODE_EXPIRED', 'CODE_USED' => 'sign_in_again',
        'REAUTHORIZATION_REQUIRED', 'TOKEN_NOT_FOUND', 'SCOPE_NOT_GRANTED' => 'reauthorize',
        'INVALID_ARGUMENT', 'RETURN_URL_NOT_ALLOWED', 'APP_NOT_ALLOWED', 'CLIENT_UNAUTHENTICATED',
        'APP_MISCONFIGURED' => 'fix_request',
        default => 'fail',
    };
}

/**
 * The product's own trace for one of its request handlers: each call to wxauth is a client span
 * of it, whose id is the `traceparent` parent wxauth sees. (A service with OpenTelemetry's PHP
 * SDK gets this from its propagator.)
 */
final class Trace
{
    private string $traceId;

    public function __construct()
    {
        $this->traceId = bin2hex(random_bytes(16));
    }

    /** A W3C `traceparent` for one outgoing call: a new span id under this trace, sampled. */
    public function childTraceparent(): string
    {
        return sprintf('00-%s-%s-01', $this->traceId, bin2hex(random_bytes(8)));
    }
}

/** wxauth's JSON face for one client key: every call authenticated, traced and bounded. */
final class Wxauth
{
    /** Every (method, traceparent) sent, for the test to find wxauth's spans by. */
    public array $sent = [];

    public function __construct(private string $base, private string $key)
    {
    }

    /** Calls `method` with `request` (proto3 JSON field names) within `trace`. */
    public function call(string $method, array $request, Trace $trace): array
    {
        $traceparent = $trace->childTraceparent();
        $this->sent[] = ['method' => $method, 'traceparent' => $traceparent];
        $curl = curl_init("{$this->base}/wxauth.v1.WeChatOAuthService/$method");
        curl_setopt_array($curl, [
            CURLOPT_POST => true,
            // An empty request is `{}`, not `[]`.
            CURLOPT_POSTFIELDS => json_encode((object) $request, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES),
            CURLOPT_HTTPHEADER => [
                'Content-Type: application/json',
                'Connect-Protocol-Version: 1',
                'Connect-Timeout-Ms: ' . DEADLINE_MS,
                "Authorization: Bearer {$this->key}",
                "traceparent: $traceparent",
            ],
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT_MS => DEADLINE_MS + 1000,
        ]);
        $body = curl_exec($curl);
        $status = curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        $failure = curl_error($curl);
        curl_close($curl);
        if ($body === false) {
            throw new RuntimeException("$method: $failure");
        }
        $answer = json_decode($body, true, 512, JSON_THROW_ON_ERROR);
        if ($status !== 200) {
            throw new WxauthError($status, $answer);
        }
        return $answer;
    }

    /**
     * `call`, again after the RetryInfo delay while wxauth says a retry helps, at most
     * `attempts` times. Throws the last error, its `attempts` set.
     */
    public function callRetrying(string $method, array $request, Trace $trace, int $attempts = 3): array
    {
        for ($attempt = 1; ; $attempt++) {
            try {
                return $this->call($method, $request, $trace);
            } catch (WxauthError $error) {
                $error->attempts = $attempt;
                if (reactionTo($error) !== 'retry' || $attempt >= $attempts) {
                    throw $error;
                }
                usleep($error->retryDelayMs * 1000);
            }
        }
    }
}

/** One request as the in-app browser makes it (with `cookie`, when given), redirects not followed. */
function fetchPage(string $url, ?array $form = null, ?string $cookie = null): array
{
    $curl = curl_init($url);
    $headers = ['User-Agent: ' . WECHAT_BROWSER_UA];
    if ($cookie !== null) {
        $headers[] = "Cookie: $cookie";
    }
    curl_setopt_array($curl, [
        CURLOPT_HTTPHEADER => $headers,
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_HEADER => true,
        CURLOPT_TIMEOUT_MS => DEADLINE_MS,
    ]);
    if ($form !== null) {
        curl_setopt($curl, CURLOPT_POSTFIELDS, http_build_query($form));
    }
    $raw = curl_exec($curl);
    if ($raw === false) {
        throw new RuntimeException("$url: " . curl_error($curl));
    }
    $headerSize = curl_getinfo($curl, CURLINFO_HEADER_SIZE);
    $page = ['status' => curl_getinfo($curl, CURLINFO_RESPONSE_CODE), 'location' => null, 'cookie' => null];
    foreach (explode("\r\n", substr($raw, 0, $headerSize)) as $line) {
        if (stripos($line, 'location:') === 0) {
            $page['location'] = trim(substr($line, 9));
        } elseif (stripos($line, 'set-cookie:') === 0) {
            $page['cookie'] = trim(explode(';', substr($line, 11), 2)[0]);
        }
    }
    $page['body'] = substr($raw, $headerSize);
    curl_close($curl);
    return $page;
}

/** The user on WeChat's consent page: picks `user`, presses Allow. Returns the callback URL. */
function consent(string $authorizeUrl, string $user): string
{
    $pageUrl = explode('#', $authorizeUrl, 2)[0]; // `#wechat_redirect` is for WeChat's browser
    $page = fetchPage($pageUrl);
    if ($page['status'] !== 200) {
        throw new RuntimeException("consent page: HTTP {$page['status']}");
    }
    if (!preg_match('#<form method="post" action="([^"]+)">(.*?)</form>#s', $page['body'], $form)) {
        throw new RuntimeException('consent page: no form');
    }
    $fields = ['user' => $user];
    preg_match_all('#type="hidden" name="([^"]+)" value="([^"]*)"#', $form[2], $hidden, PREG_SET_ORDER);
    foreach ($hidden as [, $name, $value]) {
        $fields[$name] = html_entity_decode($value, ENT_QUOTES | ENT_HTML5);
    }
    $action = html_entity_decode($form[1], ENT_QUOTES | ENT_HTML5);
    $origin = preg_replace('#^(https?://[^/]+).*$#', '$1', $pageUrl);
    $allowed = fetchPage(str_starts_with($action, '/') ? $origin . $action : $action, $fields);
    if ($allowed['status'] !== 302) {
        throw new RuntimeException("consent: HTTP {$allowed['status']}, expected a redirect");
    }
    return $allowed['location'];
}

/** The query string of `url`, with its leading `?`. */
function query(string $url): string
{
    return '?' . (string) parse_url($url, PHP_URL_QUERY);
}

/**
 * One sign-in as the product runs it: "Sign in with WeChat" (BuildAuthorizeUrl, keep state and
 * flow id in the session), the browser's round trip through the start URL (a cookie binds the
 * flow to the browser), WeChat and the relay, then the return URL's handler (check state,
 * ExchangeCode with the session's flow id; a reload exchanges again). A SIGN_IN_AGAIN starts a
 * new sign-in, never the same code again.
 */
function signIn(Wxauth $wxauth, array $args, array &$seen): array
{
    for ($attempt = 1; ; $attempt++) {
        $session = ['csrf' => bin2hex(random_bytes(16))];
        $built = $wxauth->callRetrying('BuildAuthorizeUrl', [
            'app' => $args['app'],
            'returnUrl' => $args['return-url'],
            'scope' => 'SCOPE_SNSAPI_USERINFO',
            'state' => $session['csrf'],
        ], new Trace());
        $session['flowId'] = $built['flowId'];
        $seen['authorize_url_ends_with'] = substr($built['authorizeUrl'], -16);
        $seen['start_url_on_callback_domain'] = str_contains($built['startUrl'], '/wechat/callback?start=');

        $start = fetchPage("{$args['relay']}/wechat/callback" . query($built['startUrl']));
        if ($start['status'] !== 302 || $start['cookie'] === null) {
            throw new RuntimeException("start URL: HTTP {$start['status']}");
        }
        $callback = consent($start['location'], $args['user']);
        $relayed = fetchPage("{$args['relay']}/wechat/callback" . query($callback), null, $start['cookie']);
        if ($relayed['status'] !== 302) {
            throw new RuntimeException("relay: HTTP {$relayed['status']}");
        }
        $back = $relayed['location'];
        $seen['returned_to'] = explode('?', $back, 2)[0];
        parse_str((string) parse_url($back, PHP_URL_QUERY), $params);
        $seen['state_matches'] = ($params['state'] ?? null) === $session['csrf'];
        if (!$seen['state_matches']) {
            throw new RuntimeException('state does not match the session: refuse');
        }

        $handler = new Trace();
        $exchange = ['flowId' => $session['flowId'], 'code' => $params['code'], 'includeUserInfo' => true];
        try {
            $first = $wxauth->call('ExchangeCode', $exchange, $handler);
            $again = $wxauth->call('ExchangeCode', $exchange, $handler);
            $seen['same_result_again'] = $again === $first;
            $seen['sign_ins'] = $attempt;
            return ['flowId' => $session['flowId'], 'first' => $first];
        } catch (WxauthError $error) {
            if (reactionTo($error) !== 'sign_in_again' || $attempt >= 2) {
                throw $error;
            }
            $seen['exchange_failed'] = $error->summary();
        }
    }
}

/** The error a call meets (its summary and field violations), or 'answered'. */
function refused(Wxauth $wxauth, string $method, array $request, Trace $trace): array|string
{
    try {
        $wxauth->call($method, $request, $trace);
        return 'answered';
    } catch (WxauthError $error) {
        return $error->summary() + ['field_violations' => (object) $error->fieldViolations];
    }
}

function main(): void
{
    $args = getopt('', ['json:', 'relay:', 'key:', 'app:', 'return-url:', 'user:', 'outage-json:']) + [
        'json' => 'http://127.0.0.1:50051', // wxauth's gRPC port, where the JSON face is
        'relay' => 'http://127.0.0.1:8080', // wxauth's public listener
        'key' => 'dev-only-key', // this service's client key
        'app' => 'demo-mp', // the app's config name (dev mode: demo-mp)
        'return-url' => 'http://127.0.0.1:8082/', // an allowlisted return URL
        'user' => 'alice', // the simulator's test user
    ];
    $wxauth = new Wxauth($args['json'], $args['key']);
    $seen = [];

    // 1. Sign in (again, if the first exchange's answer was lost).
    ['flowId' => $flowId, 'first' => $first] = signIn($wxauth, $args, $seen);
    $seen['openid'] = $first['openid'];
    $seen['nickname'] = $first['userInfo']['nickname'];

    // 2. Later pages: the profile, from wxauth's cache.
    $page = new Trace();
    $profile = $wxauth->callRetrying('GetUserInfo', ['app' => $args['app'], 'openid' => $first['openid']], $page);
    $seen['profile_nickname'] = $profile['userInfo']['nickname'];
    // A google.protobuf.Timestamp in JSON: RFC 3339.
    $seen['profile_fetch_time'] = (new DateTimeImmutable($profile['fetchTime']))->getTimestamp();

    // 3. A forced refresh. REAUTHORIZATION_REQUIRED: the refresh token is dead, so the user
    //    consents again (a new sign-in), and then the refresh works.
    $refresh = ['app' => $args['app'], 'openid' => $first['openid']];
    try {
        $wxauth->call('RefreshToken', $refresh, $page);
        $seen['refresh'] = 'ok';
    } catch (WxauthError $error) {
        if (reactionTo($error) !== 'reauthorize') {
            throw $error;
        }
        $seen['refresh'] = $error->summary();
        $ignored = [];
        $again = signIn($wxauth, $args, $ignored);
        $seen['reauthorized_same_user'] = $again['first']['openid'] === $first['openid'];
        $wxauth->call('RefreshToken', $refresh, $page);
        $seen['refresh_after_reauthorization'] = 'ok';
    }

    // 4. Errors that no retry fixes.
    $seen['bad_request'] = refused($wxauth, 'GetUserInfo', ['app' => $args['app'], 'openid' => 'not an openid!'], $page);
    $seen['unknown_user'] = refused($wxauth, 'GetUserInfo', ['app' => $args['app'], 'openid' => 'oNobodyLoggedInHere0000000'], $page);
    // A code pasted into this session that the relay never brought through its flow.
    $seen['injected_code'] = refused($wxauth, 'ExchangeCode', ['flowId' => $flowId, 'code' => 'NotACodeThisFlowRelayed'], $page);

    // 5. A wxauth whose store is down: UNAVAILABLE with RetryInfo, retried after the delay a
    //    couple of times; then the product shows "try again in a moment".
    if (isset($args['outage-json'])) {
        $down = new Wxauth($args['outage-json'], $args['key']);
        try {
            $request = ['app' => $args['app'], 'returnUrl' => $args['return-url'], 'state' => 'csrf'];
            $down->callRetrying('BuildAuthorizeUrl', $request, new Trace(), 2);
            $seen['outage'] = 'answered';
        } catch (WxauthError $error) {
            $seen['outage'] = $error->summary() + ['retry_delay_ms' => $error->retryDelayMs, 'attempts' => $error->attempts];
        } finally {
            array_push($wxauth->sent, ...$down->sent);
        }
    }
    $seen['sent'] = $wxauth->sent;
    echo json_encode($seen, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";
}

try {
    main();
} catch (Throwable $error) {
    $details = $error instanceof WxauthError ? ' ' . json_encode($error->summary()) : '';
    fwrite(STDERR, 'wxauth_login.php: ' . $error->getMessage() . $details . "\n");
    exit(1);
}
