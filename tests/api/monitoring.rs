//! What the chart ships for monitoring holds against what wxauth really exports: the alert rules
//! (helm/wxauth/files/alerts.yaml, the PrometheusRule's `spec`) and the Grafana dashboard
//! (helm/wxauth/files/dashboard.json). wxauth walks sign-ins, refusals and a Redis outage so
//! that every metric has series; then the rules pass `promtool check rules`, are evaluated by
//! `promtool test rules` over series taken from that scrape (held as scraped, none fires; moved as
//! in a failure, the alert for it fires), and every metric, label and `=` value the rules and the
//! dashboard's queries name is one the scrape has (or, for the rules, one the rule declares
//! external). The alert table of docs/operations.md is the rules file.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use wxauth::proto::{
    BuildAuthorizeUrlRequest, GetAppAccessTokenRequest, InvalidateAppAccessTokenRequest, RefreshTokenRequest, Scope,
    WxLoginOptions,
};
use wxauth::sim::{Endpoint, Fault};

use crate::helpers::{Backend, PASSPORT_KEY, Relayed, TRADE_KEY, authed, eventually, spawn_app_configured};

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/wxauth/files/alerts.yaml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/wxauth/files/dashboard.json");
const OPERATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");

/// Labels Prometheus adds to every series it scrapes through the chart's ServiceMonitor (target
/// labels): queries may filter on them though wxauth's own scrape has none. `endpoint` is not
/// here: wxauth's `endpoint` label (the WeChat endpoint) is kept by the ServiceMonitor's
/// `honorLabels`.
const TARGET_LABELS: &[&str] = &["namespace", "pod", "service", "job", "instance", "container"];

/// A client with a tiny `authorize` rate, so that one walk has a refusal.
const GREEDY_KEY: &str = "monitoring-greedy-key";

/// Each series of one sample name: its labels and value.
type Series = Vec<(BTreeMap<String, String>, f64)>;

/// The series of a real scrape, by sample name (histograms by their `_bucket`, `_sum` and
/// `_count` names, as the text format writes them): each series as its labels and value.
struct Scrape {
    series: BTreeMap<String, Series>,
    /// Each series as written (`name{labels}`) with its value, for promtool's input series.
    lines: Vec<(String, String)>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut series: BTreeMap<String, Series> = BTreeMap::new();
        let mut lines = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (selector, value) = line.rsplit_once(' ').expect("a sample line is `series value`");
            let (name, labels) = match selector.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("labels end in }"))),
                None => (selector, BTreeMap::new()),
            };
            let number: f64 = value.parse().unwrap_or_else(|_| panic!("sample value {value:?}"));
            series.entry(name.to_owned()).or_default().push((labels, number));
            lines.push((selector.to_owned(), value.to_owned()));
        }
        Scrape { series, lines }
    }

    /// The names of every label on any series of `name`.
    fn label_names(&self, name: &str) -> BTreeSet<&str> {
        self.series.get(name).into_iter().flatten().flat_map(|(labels, _)| labels.keys().map(String::as_str)).collect()
    }

    fn has_value(&self, name: &str, label: &str, value: &str) -> bool {
        self.series
            .get(name)
            .into_iter()
            .flatten()
            .any(|(labels, _)| labels.get(label).map(String::as_str) == Some(value))
    }
}

/// `a="x",b="y\"z"` as a map (the text format's escapes undone).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
        let (value, after) = take_string(after, '"');
        labels.insert(name.trim_start_matches(',').trim().to_owned(), value);
        rest = after.trim_start_matches(',');
    }
    labels
}

/// The rest of a quoted string whose opening quote was consumed: its unescaped text and what
/// follows the closing quote.
fn take_string(text: &str, quote: char) -> (String, &str) {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c if c == quote => return (value, &text[i + c.len_utf8()..]),
            c => value.push(c),
        }
    }
    panic!("unterminated string in {text:?}")
}

// --- A small PromQL reader: what an expression selects and groups by ---------------------------

/// One vector selector of an expression: `name{label op "value", ...}`.
#[derive(Debug)]
struct Selector {
    name: String,
    /// `(label, operator, value)`.
    matchers: Vec<(String, String, String)>,
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Matchers(Vec<(String, String, String)>),
    Open,
    Close,
    Other,
}

/// PromQL's aggregation operators, functions' names aside (those are followed by `(`).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"];
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

fn tokens(expr: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if c == '[' {
            // A range or subquery: durations, `$__rate_interval` and the like.
            let end = rest.find(']').unwrap_or_else(|| panic!("unclosed [ in {expr}"));
            rest = &rest[end + 1..];
        } else if c == '"' || c == '\'' || c == '`' {
            let (_, after) = take_string(&rest[1..], c);
            rest = after;
            out.push(Token::Other);
        } else if c == '{' {
            let (matchers, after) = matchers(&rest[1..], expr);
            out.push(Token::Matchers(matchers));
            rest = after;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            out.push(Token::Ident(rest[..end].to_owned()));
            rest = &rest[end..];
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (`offset 10m`), exponents included.
            let end = rest
                .char_indices()
                .find(|&(i, c)| {
                    !(c.is_ascii_alphanumeric()
                        || c == '.'
                        || ((c == '+' || c == '-') && rest[..i].ends_with(['e', 'E'])))
                })
                .map_or(rest.len(), |(i, _)| i);
            rest = &rest[end..];
            out.push(Token::Other);
        } else {
            out.push(match c {
                '(' => Token::Open,
                ')' => Token::Close,
                _ => Token::Other,
            });
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The matchers after a `{`, and what follows its `}`.
fn matchers<'a>(mut rest: &'a str, expr: &str) -> (Vec<(String, String, String)>, &'a str) {
    let mut found = Vec::new();
    loop {
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return (found, after);
        }
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or_else(|| panic!("{expr}"));
        let label = rest[..end].to_owned();
        rest = rest[end..].trim_start();
        let op =
            ["=~", "!~", "!=", "="].into_iter().find(|op| rest.starts_with(op)).unwrap_or_else(|| panic!("{expr}"));
        rest = rest[op.len()..].trim_start();
        let quote = rest.chars().next().unwrap_or_else(|| panic!("{expr}"));
        let (value, after) = take_string(&rest[quote.len_utf8()..], quote);
        found.push((label, op.to_owned(), value));
        rest = after;
    }
}

/// The vector selectors of `expr` and the labels it groups or matches on (`by`, `on`, ...).
fn read_promql(expr: &str) -> (Vec<Selector>, BTreeSet<String>) {
    let tokens = tokens(expr);
    let (mut selectors, mut grouping) = (Vec::new(), BTreeSet::new());
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) if GROUPING.contains(&word.as_str()) && tokens.get(i + 1) == Some(&Token::Open) => {
                i += 2;
                while let Some(token) = tokens.get(i).filter(|t| **t != Token::Close) {
                    if let Token::Ident(label) = token {
                        grouping.insert(label.clone());
                    }
                    i += 1;
                }
            }
            Token::Ident(word)
                if KEYWORDS.contains(&word.as_str())
                    || GROUPING.contains(&word.as_str())
                    || tokens.get(i + 1) == Some(&Token::Open)
                    || (AGGREGATIONS.contains(&word.as_str())
                        && matches!(tokens.get(i + 1), Some(Token::Ident(next)) if GROUPING.contains(&next.as_str()))) =>
                {}
            Token::Ident(name) => {
                let matchers = match tokens.get(i + 1) {
                    Some(Token::Matchers(m)) => {
                        i += 1;
                        m.clone()
                    }
                    _ => Vec::new(),
                };
                selectors.push(Selector { name: name.clone(), matchers });
            }
            Token::Matchers(m) => {
                let name = m.iter().find(|(l, op, _)| l == "__name__" && op == "=").map(|(_, _, v)| v.clone());
                let name = name.unwrap_or_else(|| panic!("a selector without a metric name in {expr}"));
                selectors.push(Selector { name, matchers: m.clone() });
            }
            _ => {}
        }
        i += 1;
    }
    (selectors, grouping)
}

#[test]
fn the_promql_reader_finds_selectors_and_grouping_labels() {
    let (selectors, grouping) = read_promql(
        r#"histogram_quantile(0.99, sum by (le, grpc_method) (rate(a_bucket{x="1", y=~"a|b"}[$__rate_interval])))
           / on (grpc_method) group_left sum without (z) (b offset 10m) > bool 1e-05 and count(c{__name__="c", w!="q\"r"})"#,
    );
    let names: Vec<_> = selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b", "c"]);
    assert_eq!(selectors[0].matchers, [("x".into(), "=".into(), "1".into()), ("y".into(), "=~".into(), "a|b".into())]);
    assert_eq!(selectors[2].matchers[1], ("w".into(), "!=".into(), "q\"r".into()));
    assert_eq!(grouping.into_iter().collect::<Vec<_>>(), ["grpc_method", "le", "z"]);
}

/// Every problem with `expr`'s names against the scrape: metrics it has not (unless `external`),
/// labels no series of that metric carries, `=` values no series has, grouping labels none of
/// the selected metrics carries. Returns the metric names the expression selects.
fn check_names(
    scrape: &Scrape,
    what: &str,
    expr: &str,
    external: &BTreeSet<&str>,
    problems: &mut Vec<String>,
) -> BTreeSet<String> {
    let (selectors, grouping) = read_promql(expr);
    if selectors.is_empty() {
        problems.push(format!("{what}: selects no metric: {expr}"));
    }
    let mut labels_here: BTreeSet<&str> = TARGET_LABELS.iter().copied().chain(["le", "quantile"]).collect();
    for selector in &selectors {
        let name = selector.name.as_str();
        if external.contains(name) {
            labels_here.extend(selector.matchers.iter().map(|(l, _, _)| l.as_str()));
            continue;
        }
        if !scrape.series.contains_key(name) {
            problems.push(format!(
                "{what}: {name} is not in wxauth's scrape (a metric of wxauth's without a series yet: make \
                 walk() in tests/api/monitoring.rs give it one): {expr}"
            ));
            continue;
        }
        let known = scrape.label_names(name);
        labels_here.extend(known.iter().copied());
        for (label, op, value) in &selector.matchers {
            if label == "__name__" || TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !known.contains(label.as_str()) {
                problems.push(format!("{what}: {name} has no label {label} (it has {known:?})"));
            } else if op == "=" && !scrape.has_value(name, label, value) {
                problems.push(format!("{what}: no series {name}{{{label}=\"{value}\"}} in the scrape"));
            }
        }
    }
    for label in grouping {
        if !labels_here.contains(label.as_str()) {
            problems.push(format!("{what}: groups by {label}, a label none of its metrics has: {expr}"));
        }
    }
    selectors.into_iter().map(|s| s.name).collect()
}

// --- The walk and its scrape -------------------------------------------------------------------

/// One scrape after a walk through everything the metrics count, shared by the tests here.
static SCRAPE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn scrape() -> Scrape {
    Scrape::parse(SCRAPE.get_or_init(walk).await)
}

/// wxauth on Redis, walked through sign-ins, a profile read (cached, then not), a forced
/// refresh, WeChat errors, relay refusals, a client over its rate and a Redis outage with the
/// recovery after it; then its `/metrics`.
async fn walk() -> String {
    // `trade` holds the app-level grant (the first line lands in its table).
    let greedy = format!(
        "grants = [\"app_access_token\"]\n[clients.greedy]\nkey_sha256 = \"{}\"\napps = [\"mp\"]\nreturn_urls = [\"https://passport.example.com/\"]\n\
         rate_limits = {{ authorize = \"1/min\", authorize_burst = 1 }}\n",
        hex::encode(wxauth::config::key_digest(GREEDY_KEY)),
    );
    let app = spawn_app_configured(Backend::Redis, &greedy).await;
    // A connection that never sends the HTTP/2 preface: closed after `server.header_timeout`
    // (10 s by default), counted while the rest of the walk runs (waited for at its end).
    let silent = tokio::net::TcpStream::connect(app.grpc_addr).await.expect("a silent connection");
    let login = app.login("alice", "snsapi_userinfo").await;
    app.mobile_login("bob").await;
    app.mini_login("alice").await;
    app.profile(&login.openid, wxauth::proto::Lang::Unspecified, false).await.expect("a miss");
    app.profile(&login.openid, wxauth::proto::Lang::Unspecified, false).await.expect("a hit");
    let refresh = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    app.grpc.clone().refresh_token(app.req(refresh)).await.expect("an upstream refresh");
    // The app's own token: fetched, force-refreshed once on a report, then reported stale.
    let request = authed(TRADE_KEY, GetAppAccessTokenRequest { app: "mp".into() });
    let token = app.grpc.clone().get_app_access_token(request).await.expect("an app token").into_inner().access_token;
    for expect in ["a forced refresh", "a stale report"] {
        let report = InvalidateAppAccessTokenRequest { app: "mp".into(), access_token: token.clone() };
        app.grpc.clone().invalidate_app_access_token(authed(TRADE_KEY, report)).await.expect(expect);
    }
    // WeChat answers 502 to each of the three attempts: WECHAT_UNAVAILABLE, result="http_error".
    app.sim.inject(Endpoint::UserInfo, Fault::HttpStatus(502), 3);
    app.user_info(&login.openid).await.expect_err("WeChat unavailable");
    // WeChat's rate limit (45011, never retried) and a rotated appsecret (40125).
    app.sim.inject(Endpoint::UserInfo, Fault::Errcode(45011), 1);
    app.user_info(&login.openid).await.expect_err("rate limited");
    let relayed = app.relayed("mp", "alice", "snsapi_base").await;
    app.sim.inject(Endpoint::AccessToken, Fault::Errcode(40125), 1);
    app.exchange("mp", &relayed).await.expect_err("app misconfigured");
    // A code WeChat refuses (40029) and relay refusals.
    let flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_base").await;
    app.relay(&flow, "bogusCode").await;
    app.exchange("mp", &Relayed { flow_id: flow, code: "bogusCode".into() }).await.expect_err("40029");
    assert_eq!(app.callback("state=UnknownFlow1").await.status(), 400);
    assert_eq!(app.callback("nothing=here").await.status(), 400);
    // A client over its rate.
    let request = || BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/back".into(),
        scope: Scope::SnsapiBase as i32,
        ..Default::default()
    };
    app.grpc.clone().build_authorize_url(authed(GREEDY_KEY, request())).await.expect("within the burst");
    app.grpc.clone().build_authorize_url(authed(GREEDY_KEY, request())).await.expect_err("over the rate");
    // Refusals an attack makes: a call without a key (refused from its headers), a return URL
    // with a network-path path, an href that is not a stylesheet URL.
    app.grpc.clone().build_authorize_url(tonic::Request::new(request())).await.expect_err("no key");
    let network_path =
        BuildAuthorizeUrlRequest { return_url: "https://passport.example.com//evil.example".into(), ..request() };
    app.grpc.clone().build_authorize_url(app.req(network_path)).await.expect_err("a network-path return URL");
    let href = WxLoginOptions { href: "https:cdn.example/x.css".into(), ..Default::default() };
    let qr = BuildAuthorizeUrlRequest {
        app: "web".into(),
        scope: Scope::SnsapiLogin as i32,
        wx_login_options: Some(href),
        ..request()
    };
    app.grpc.clone().build_authorize_url(app.req(qr)).await.expect_err("an href that is not canonical");
    // A browser starts a flow through its start URL, and the start URL is replayed.
    let built = app.grpc.clone().build_authorize_url(app.req(request())).await.expect("a flow").into_inner();
    let start_url = built
        .start_url
        .replace(&format!("https://{}", crate::helpers::CALLBACK_HOST), &format!("http://{}", app.public_addr));
    assert_eq!(app.http.get(&start_url).send().await.expect("start").status(), 302, "started");
    assert_eq!(app.http.get(&start_url).send().await.expect("start again").status(), 400, "a start URL works once");
    // The flow moved to its browser's id: its first id is now an unknown flow at the relay.
    assert_eq!(app.callback(&format!("state={}", built.flow_id)).await.status(), 400, "unknown flow");

    // A Redis outage: store errors, the breaker opens and refuses; then it comes back.
    let redis = app.redis.clone().expect("redis");
    redis.lock().await.kill();
    let metrics = async || {
        let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
        scrape.text().await.expect("text")
    };
    let value = |text: &str, name: &str| Scrape::parse(text).series.get(name).map(|s| s.iter().map(|(_, v)| v).sum());
    let opened = eventually(async || {
        let _ = app.grpc.clone().build_authorize_url(app.req(request())).await;
        value(&metrics().await, "wxauth_store_breaker_rejections_total") > Some(0.0)
    })
    .await;
    assert!(opened, "the breaker opened and refused a call");
    redis.lock().await.restart().await;
    let closed = eventually(async || {
        let _ = app.grpc.clone().build_authorize_url(app.req(request())).await;
        value(&metrics().await, "wxauth_store_breaker_state") == Some(0.0)
    })
    .await;
    assert!(closed, "the breaker closed again");
    // A silent sign-in's client asks for the profile: its own sign-in did not grant it.
    let silent_login = app.login("bob", "snsapi_base").await;
    app.user_info(&silent_login.openid).await.expect_err("SCOPE_NOT_GRANTED");
    // The header timeout is 10 s: poll for twice that (a hang guard, not a bound under test).
    let mut closed = false;
    for _ in 0..200 {
        closed = value(&metrics().await, "wxauth_connections_closed_total") > Some(0.0);
        if closed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(closed, "the silent connection was closed and counted");
    drop(silent);
    metrics().await
}

// --- Running promtool --------------------------------------------------------------------------

/// `promtool ARGS`, its exit status and everything it printed.
async fn promtool(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("promtool")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("promtool must be installed (scripts/setup installs Debian's prometheus package)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A private directory for files handed to promtool.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wxauth-{name}-{}", wxauth::random_id(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// --- The alert rules ---------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Rule {
    /// The metrics the rule reads that other exporters make (its `external_metrics`).
    fn external(&self) -> BTreeSet<&str> {
        self.annotations.get("external_metrics").map(|m| m.split_whitespace().collect()).unwrap_or_default()
    }
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(RULES).expect("helm/wxauth/files/alerts.yaml");
    let file: RuleFile = serde_yaml_ng::from_str(&text).expect("the rules file is YAML of rule groups");
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// The alerts of docs/operations.md's "What to alert on" table: name, expression, `for`,
/// severity, each as written (code spans unwrapped, `\|` as `|`).
fn documented_alerts() -> Vec<[String; 4]> {
    let doc = std::fs::read_to_string(OPERATIONS).expect("docs/operations.md");
    let start = doc.find("| alert | expression | for | severity |").expect("docs/operations.md has the alert table");
    let table = doc[start..].lines().take_while(|l| l.starts_with('|'));
    let unquote = |cell: &str| {
        let cell = cell.trim().to_owned();
        cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')).map_or(cell.clone(), str::to_owned)
    };
    table
        .skip(2) // the header and its rule
        .map(|row| {
            // Cells are split at the `|` that are not escaped as `\|`.
            let row = row.trim().trim_matches('|').replace("\\|", "\u{0}");
            let cells: Vec<_> = row.split('|').map(|c| c.replace('\u{0}', "|")).collect();
            assert!(cells.len() >= 4, "an alert row has alert, expression, for, severity: {row}");
            [unquote(&cells[0]), unquote(&cells[1]), unquote(&cells[2]), unquote(&cells[3])]
        })
        .collect()
}

/// Whitespace runs as one space: the rules file may wrap an expression the doc writes on a line.
fn normalised(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_documented_alerts_are_the_rules_the_chart_ships() {
    let rules = rules();
    assert!(rules.len() >= 14, "the rules file has the documented alerts (found {})", rules.len());
    let documented = documented_alerts();
    let row = |r: &Rule| {
        let for_ = r.for_.as_deref().map_or("—".to_owned(), |f| format!("`{f}`"));
        format!(
            "| `{}` | `{}` | {for_} | {} | (why) |",
            r.alert,
            normalised(&r.expr).replace('|', "\\|"),
            r.labels.get("severity").map_or("", String::as_str)
        )
    };
    let mut problems = Vec::new();
    for rule in &rules {
        let want = [
            rule.alert.clone(),
            normalised(&rule.expr),
            rule.for_.clone().unwrap_or_else(|| "—".into()),
            rule.labels.get("severity").cloned().unwrap_or_default(),
        ];
        match documented.iter().find(|d| d[0] == rule.alert) {
            None => problems.push(format!("not in docs/operations.md; its row:\n{}", row(rule))),
            Some(doc) if [doc[0].clone(), normalised(&doc[1]), doc[2].clone(), doc[3].clone()] != want => problems
                .push(format!("docs/operations.md's row differs from the rules file; it should read:\n{}", row(rule))),
            Some(_) => {}
        }
        for (what, present) in [
            ("a severity label", rule.labels.contains_key("severity")),
            ("a summary", rule.annotations.contains_key("summary")),
            ("a description", rule.annotations.contains_key("description")),
        ] {
            if !present {
                problems.push(format!("{} has no {what}", rule.alert));
            }
        }
    }
    for doc in &documented {
        if !rules.iter().any(|r| r.alert == doc[0]) {
            problems.push(format!("docs/operations.md names {}, which helm/wxauth/files/alerts.yaml lacks", doc[0]));
        }
    }
    let names: BTreeSet<_> = rules.iter().map(|r| &r.alert).collect();
    assert_eq!(names.len(), rules.len(), "alert names are unique");
    assert_eq!(documented.len(), rules.len(), "one doc row per alert");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_pass_promtool_and_read_only_what_wxauth_exports() {
    let (ok, report) = promtool(&["check", "rules", RULES]).await;
    let rules = rules();
    assert!(ok && report.contains(&format!("SUCCESS: {} rules found", rules.len())), "promtool: {report}");

    let scrape = scrape().await;
    let mut problems = Vec::new();
    let mut wxauth_metrics = BTreeSet::new();
    for rule in &rules {
        let external = rule.external();
        let read = check_names(&scrape, &rule.alert, &rule.expr, &external, &mut problems);
        for name in &external {
            if name.starts_with("wxauth_") || scrape.series.contains_key(*name) {
                problems.push(format!("{}: {name} is wxauth's own, not external", rule.alert));
            }
            if !read.contains(*name) {
                problems.push(format!("{}: declares {name} external but does not read it", rule.alert));
            }
        }
        wxauth_metrics.extend(read.into_iter().filter(|n| !external.contains(n.as_str())));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(wxauth_metrics.len() >= 8, "the rules read wxauth's metrics: {wxauth_metrics:?}");

    // promtool evaluates every rule over the scrape's series, held for an hour: a service that
    // stopped working (no counter moves, the breaker closed) raises no alert. And every
    // selector's metric and label names select series there, as Prometheus matches them.
    let input: Vec<_> = scrape
        .lines
        .iter()
        .map(|(series, value)| serde_json::json!({"series": series, "values": format!("{value}+0x60")}))
        .collect();
    let silent: Vec<_> =
        rules.iter().map(|r| serde_json::json!({"eval_time": "60m", "alertname": r.alert, "exp_alerts": []})).collect();
    let mut present = Vec::new();
    for rule in &rules {
        let external = rule.external();
        for selector in read_promql(&rule.expr).0.iter().filter(|s| !external.contains(s.name.as_str())) {
            let labels: Vec<_> = selector
                .matchers
                .iter()
                .filter(|(l, _, _)| l != "__name__" && !TARGET_LABELS.contains(&l.as_str()))
                .map(|(l, _, _)| format!("{l}=~\".+\""))
                .collect();
            let expr = format!("absent({}{{{}}})", selector.name, labels.join(", "));
            present.push(serde_json::json!({"expr": expr, "eval_time": "60m", "exp_samples": []}));
        }
    }
    assert!(present.len() >= rules.len(), "one check per selector");
    let mut tests = vec![serde_json::json!({
        "interval": "1m",
        "input_series": input,
        "alert_rule_test": silent,
        "promql_expr_test": present,
    })];
    tests.extend(FIRING.iter().map(|firing| firing_test(&scrape, &rules, firing)));
    let dir = scratch("rules-test");
    let test = serde_json::json!({"rule_files": [RULES], "evaluation_interval": "1m", "tests": tests});
    let path = dir.join("test.json");
    std::fs::write(&path, test.to_string()).expect("write the promtool test");
    let (ok, report) = promtool(&["test", "rules", path.to_str().expect("utf-8 path")]).await;
    assert!(ok && report.contains("SUCCESS"), "promtool test rules: {report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// How one alert is made to fire from the scrape's own series: for an hour, the series of
/// `metric` whose labels include every one of `labels` change as `change` says; every other
/// series stays as scraped.
struct Firing {
    alert: &'static str,
    metric: &'static str,
    labels: &'static [(&'static str, &'static str)],
    change: Change,
}

enum Change {
    /// Grows by this much a minute (a counter).
    Grow(u32),
    /// Holds this value (a gauge).
    Set(u32),
}

/// The alerts shown to fire on the series wxauth really exports. The label values named here
/// must be in the scrape: a metric whose labels change under an alert fails here.
const FIRING: &[Firing] = &[
    Firing { alert: "WxauthStoreErrors", metric: "wxauth_store_errors_total", labels: &[], change: Change::Grow(1) },
    Firing { alert: "WxauthStoreDown", metric: "wxauth_store_breaker_state", labels: &[], change: Change::Set(2) },
    Firing {
        alert: "WxauthStoreFlapping",
        metric: "wxauth_store_breaker_transitions_total",
        labels: &[("state", "open")],
        change: Change::Grow(1),
    },
    Firing {
        alert: "WxauthWeChatUnavailable",
        metric: "wxauth_wechat_requests_total",
        labels: &[("result", "http_error")],
        change: Change::Grow(10),
    },
    Firing {
        alert: "WxauthWeChatQuotaNear",
        metric: "wxauth_wechat_requests_total",
        labels: &[("endpoint", "sns/userinfo"), ("result", "ok")],
        change: Change::Grow(45_000),
    },
    Firing {
        alert: "WxauthWeChatRateLimited",
        metric: "wxauth_wechat_requests_total",
        labels: &[("errcode", "45011")],
        change: Change::Grow(1),
    },
    Firing {
        alert: "WxauthAppMisconfigured",
        metric: "wxauth_wechat_requests_total",
        labels: &[("errcode", "40125")],
        change: Change::Grow(1),
    },
    Firing {
        alert: "WxauthAppTokenForceRefreshes",
        metric: "wxauth_app_token_invalidations_total",
        labels: &[("result", "refreshed")],
        change: Change::Grow(1),
    },
    Firing {
        alert: "WxauthRelayRefusing",
        metric: "wxauth_relay_callbacks_total",
        labels: &[("outcome", "unknown_flow")],
        change: Change::Grow(10),
    },
    Firing {
        alert: "WxauthClientRefused",
        metric: "wxauth_client_refusals_total",
        labels: &[],
        change: Change::Grow(1),
    },
    // Every GetUserInfo slower than the last bucket (10 s): its p99 is over 1 s.
    Firing {
        alert: "WxauthLatency",
        metric: "wxauth_grpc_request_duration_seconds_bucket",
        labels: &[("grpc_method", "GetUserInfo"), ("le", "+Inf")],
        change: Change::Grow(10),
    },
    Firing {
        alert: "WxauthSealedRecordsUnopenable",
        metric: "wxauth_sealed_records_unopenable_total",
        labels: &[],
        change: Change::Grow(1),
    },
];

/// A promtool test in which `firing`'s alert fires, with the labels and annotations expected
/// of it: the rule's, its grouping labels' values from the changed series, and its annotations'
/// `{{ $labels.x }}` filled in.
fn firing_test(scrape: &Scrape, rules: &[Rule], firing: &Firing) -> serde_json::Value {
    let rule = rules.iter().find(|r| r.alert == firing.alert).unwrap_or_else(|| panic!("no alert {}", firing.alert));
    let selected = |selector: &str| {
        let (name, labels) = match selector.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (selector, BTreeMap::new()),
        };
        name == firing.metric && firing.labels.iter().all(|(l, v)| labels.get(*l).map(String::as_str) == Some(*v))
    };
    let mut changed = Vec::new();
    let input: Vec<_> = scrape
        .lines
        .iter()
        .map(|(series, value)| {
            let values = match (&firing.change, selected(series)) {
                (_, false) => format!("{value}+0x60"),
                (Change::Grow(by), true) => format!("{value}+{by}x60"),
                (Change::Set(to), true) => format!("{to}+0x60"),
            };
            if selected(series) {
                changed.push(series.clone());
            }
            serde_json::json!({"series": series, "values": values})
        })
        .collect();
    assert!(!changed.is_empty(), "{}: no series {}{:?} in the scrape", firing.alert, firing.metric, firing.labels);
    let grouping: Vec<_> = read_promql(&rule.expr).1.into_iter().filter(|l| l != "le").collect();
    let mut alerts = BTreeSet::new();
    for series in &changed {
        let labels = series.split_once('{').map(|(_, l)| parse_labels(l.trim_end_matches('}'))).unwrap_or_default();
        let mut expected = rule.labels.clone();
        expected.extend(grouping.iter().filter_map(|g| labels.get(g).map(|v| (g.clone(), v.clone()))));
        alerts.insert(expected);
    }
    let exp_alerts: Vec<_> = alerts
        .into_iter()
        .map(|labels| {
            let annotations: BTreeMap<_, _> = rule
                .annotations
                .iter()
                .map(|(k, v)| {
                    let filled = labels
                        .iter()
                        .fold(v.clone(), |text, (l, value)| text.replace(&format!("{{{{ $labels.{l} }}}}"), value));
                    (k.clone(), filled)
                })
                .collect();
            serde_json::json!({"exp_labels": labels, "exp_annotations": annotations})
        })
        .collect();
    serde_json::json!({
        "name": format!("{} fires", firing.alert),
        "interval": "1m",
        "input_series": input,
        "alert_rule_test": [{"eval_time": "60m", "alertname": firing.alert, "exp_alerts": exp_alerts}],
    })
}

// --- The dashboard -----------------------------------------------------------------------------

/// Every panel of the dashboard, rows' nested panels included.
fn panels(list: &serde_json::Value) -> Vec<&serde_json::Value> {
    list.as_array().into_iter().flatten().flat_map(|p| std::iter::once(p).chain(panels(&p["panels"]))).collect()
}

/// A dashboard query as Prometheus gets it: Grafana's variables replaced.
fn as_prometheus_gets_it(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_queries_metrics_wxauth_exports() {
    let text = std::fs::read_to_string(DASHBOARD).expect("helm/wxauth/files/dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "wxauth");
    let all = panels(&dashboard["panels"]);
    let rows = all.iter().filter(|p| p["type"] == "row").count();
    let graphs: Vec<_> = all.iter().filter(|p| p["type"] != "row").collect();
    assert!(rows >= 4 && graphs.len() >= 15, "{rows} rows, {} panels", graphs.len());

    let scrape = scrape().await;
    let mut problems = Vec::new();
    let mut queries = Vec::new();
    let mut read = BTreeSet::new();
    for panel in &graphs {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no query"));
        }
        for target in targets {
            let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("panel {title:?} has a target without an expr"));
                continue;
            };
            let expr = as_prometheus_gets_it(expr);
            read.extend(check_names(&scrape, &format!("panel {title:?}"), &expr, &BTreeSet::new(), &mut problems));
            queries.push(expr);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every metric wxauth exports is on the dashboard.
    let histogram = |n: &str| ["_bucket", "_sum", "_count"].iter().any(|s| n.ends_with(s));
    let family = |n: &str| ["_bucket", "_sum", "_count"].iter().find_map(|s| n.strip_suffix(s)).unwrap_or(n).to_owned();
    let shown: BTreeSet<_> = read.iter().map(|n| family(n)).collect();
    let exported: BTreeSet<_> =
        scrape.series.keys().filter(|n| !histogram(n) || n.ends_with("_bucket")).map(|n| family(n)).collect();
    let missing: Vec<_> = exported.difference(&shown).collect();
    assert!(missing.is_empty(), "metrics no panel shows: {missing:?}");

    // promtool parses every query (as recording rules, the one way it reads PromQL offline).
    let rules: Vec<_> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": q}))
        .collect();
    let dir = scratch("dashboard-queries");
    let path = dir.join("queries.json");
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&path, file.to_string()).expect("write");
    let (ok, report) = promtool(&["check", "rules", path.to_str().expect("utf-8 path")]).await;
    assert!(ok && report.contains(&format!("SUCCESS: {} rules found", queries.len())), "promtool: {report}");
    let _ = std::fs::remove_dir_all(&dir);
}
