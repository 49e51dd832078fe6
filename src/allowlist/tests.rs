use std::borrow::Cow;

use super::*;

/// Exact-host patterns: a path prefix, a path with a segment boundary, the dev-mode hosts.
const EXACT: &[&str] = &[
    "https://passport.example.com/login/",
    "https://passport.example.com/notify/done",
    "http://127.0.0.1:8082/",
    "http://localhost:8082/",
];

/// A wildcard pattern for every subdomain of `example.com`.
const WILDCARD: &[&str] = &["https://*.example.com/"];

fn allowlist(patterns: &[&str]) -> Allowlist {
    Allowlist::parse(patterns).expect("test patterns are valid")
}

fn accepted(patterns: &[&str], candidate: &str) -> String {
    match allowlist(patterns).check(candidate) {
        Ok(url) => url.as_str().to_owned(),
        Err(rejection) => panic!("{candidate:?} was rejected: {rejection:?}"),
    }
}

/// One hostile candidate, the allowlist it is tried against, and the expected refusal.
struct Hostile {
    label: &'static str,
    patterns: &'static [&'static str],
    candidate: String,
    expected: Rejection,
}

fn hostile(label: &'static str, patterns: &'static [&'static str], candidate: &str, expected: Rejection) -> Hostile {
    Hostile { label, patterns, candidate: candidate.to_owned(), expected }
}

/// A hostile candidate as the tables write it: label, patterns, candidate, expected refusal.
type HostileRow = (&'static str, &'static [&'static str], &'static str, Rejection);

/// Hostile candidates about the authority: userinfo, backslashes, schemes, hosts, IP literals.
#[rustfmt::skip]
fn hostile_authorities() -> Vec<HostileRow> {
    use Rejection::*;
    vec![
        // Userinfo: the browser goes to the host after the `@`.
        ("allowed host as username",            EXACT,    "https://passport.example.com@evil.com/", Userinfo),
        ("allowed host and port as userinfo",   EXACT,    "https://passport.example.com:443@evil.com/", Userinfo),
        ("empty userinfo",                      EXACT,    "https://@passport.example.com/login/", Userinfo),
        ("user and password",                   EXACT,    "https://user:pass@passport.example.com/login/", Userinfo),
        ("full-width at sign",                  EXACT,    "https://passport.example.com\u{FF20}evil.com/", Userinfo),
        // Fragments and backslashes that move the real host.
        ("at sign hidden in fragment",          EXACT,    "https://evil.com#@passport.example.com/", NotAllowed),
        ("backslash before at sign",            EXACT,    "https://evil.com\\@passport.example.com/", Backslash),
        ("slash backslash after scheme",        EXACT,    "https:/\\evil.com", Backslash),
        ("double backslash after scheme",       EXACT,    "https:\\\\evil.com/", Backslash),
        ("slash backslash relative",            EXACT,    "/\\evil.com", Backslash),
        ("full-width backslash",                EXACT,    "https://passport.example.com/login/\u{FF3C}x", Backslash),
        // Not absolute.
        ("protocol-relative",                   EXACT,    "//evil.com", NotAbsolute),
        ("relative path",                       EXACT,    "/login/", NotAbsolute),
        ("host without scheme",                 EXACT,    "passport.example.com/login/", NotAbsolute),
        ("empty string",                        EXACT,    "", NotAbsolute),
        ("http without slashes",                EXACT,    "http:evil.com", NotAbsolute),
        ("https with one slash",                EXACT,    "https:/evil.com", NotAbsolute),
        // Schemes.
        ("javascript with allowed url after",   EXACT,    "javascript:alert(1)//https://passport.example.com/login/", SchemeNotAllowed),
        ("mixed-case javascript",               EXACT,    "JaVaScRiPt:alert(1)", SchemeNotAllowed),
        ("data url",                            EXACT,    "data:text/html,<script>alert(1)</script>", SchemeNotAllowed),
        ("file url",                            EXACT,    "file:///etc/passwd", SchemeNotAllowed),
        ("ftp on allowed host",                 EXACT,    "ftp://passport.example.com/login/", SchemeNotAllowed),
        ("http for an https pattern",           EXACT,    "http://passport.example.com/login/", SchemeNotAllowed),
        ("https for an http localhost pattern", EXACT,    "https://localhost:8082/", SchemeNotAllowed),
        ("http for an https wildcard",          WILDCARD, "http://a.example.com/", SchemeNotAllowed),
        // Hosts that merely contain or end with the allowed text.
        ("allowed host as subdomain of evil",   EXACT,    "https://passport.example.com.evil.com/login/", NotAllowed),
        ("uppercase evil host",                 EXACT,    "HTTPS://EVIL.COM", NotAllowed),
        ("full-width evil host",                EXACT,    "https://\u{FF45}\u{FF56}\u{FF49}\u{FF4C}.com/", NotAllowed),
        ("host ending with the wildcard parent", WILDCARD, "https://evilexample.com/", NotAllowed),
        ("wildcard apex",                       WILDCARD, "https://example.com/", NotAllowed),
        ("wildcard parent under evil",          WILDCARD, "https://example.com.evil.com/", NotAllowed),
        ("wildcard subdomain under evil",       WILDCARD, "https://a.example.com.evil.com/", NotAllowed),
        // Percent-encoding in the host.
        ("encoded dot joins evil host",         EXACT,    "https://passport.example.com%2eevil.com/", EncodedHost),
        ("encoded dot inside allowed host",     EXACT,    "https://passport%2Eexample.com/login/", EncodedHost),
        ("encoded slash in host",               EXACT,    "https://evil.com%2fpassport.example.com/login/", EncodedHost),
        ("full-width percent in host",          EXACT,    "https://passport.example.com\u{FF05}2eevil.com/", EncodedHost),
        // Malformed hosts.
        ("trailing dot",                        EXACT,    "https://passport.example.com./login/", BadHost),
        ("leading dot",                         EXACT,    "https://.passport.example.com/login/", BadHost),
        ("ideographic trailing dot",            EXACT,    "https://passport.example.com\u{3002}/login/", BadHost),
        ("empty host the parser would skip",    EXACT,    "https:///evil.com", BadHost),
        ("empty label",                         WILDCARD, "https://a..example.com/", BadHost),
        ("wildcard trailing dot",               WILDCARD, "https://a.example.com./", BadHost),
        ("sub-delimiter in host",               WILDCARD, "https://evil$.example.com/", BadHost),
        ("asterisk host",                       WILDCARD, "https://*.example.com/", BadHost),
        ("localhost trailing dot",              EXACT,    "http://localhost.:8082/", BadHost),
        ("ip trailing dot",                     EXACT,    "http://127.0.0.1.:8082/", BadHost),
        // IP literals.
        ("hex ipv4",                            EXACT,    "https://0x7f.0.0.1/", IpLiteral),
        ("integer ipv4",                        EXACT,    "https://2130706433/", IpLiteral),
        ("ipv6 loopback",                       EXACT,    "https://[::1]/", IpLiteral),
        ("listed ip in integer notation",       EXACT,    "http://2130706433:8082/", IpLiteral),
        ("other loopback address",              EXACT,    "http://127.0.0.2:8082/", IpLiteral),
        ("ipv4-mapped ipv6",                    EXACT,    "http://[::ffff:127.0.0.1]:8082/", IpLiteral),
        ("ip against wildcard",                 WILDCARD, "https://93.184.216.34/", IpLiteral),
    ]
}

/// Hostile candidates about the rest: ports, paths, characters a browser drops or trims.
#[rustfmt::skip]
fn hostile_ports_paths_and_characters() -> Vec<HostileRow> {
    use Rejection::*;
    vec![
        // Ports.
        ("other port on allowed host",          EXACT,    "https://passport.example.com:8443/login/", NotAllowed),
        ("http default port on https host",     EXACT,    "https://passport.example.com:80/login/", NotAllowed),
        ("other port on listed localhost",      EXACT,    "http://localhost:8083/", NotAllowed),
        ("other port on wildcard",              WILDCARD, "https://a.example.com:8443/", NotAllowed),
        ("full-width colon port",               EXACT,    "https://passport.example.com\u{FF1A}8443/login/", Unparseable),
        ("port out of range",                   EXACT,    "https://passport.example.com:99999/login/", Unparseable),
        // Paths.
        ("dot segments leave the prefix",       EXACT,    "https://passport.example.com/login/../admin", NotAllowed),
        ("encoded dot segments leave prefix",   EXACT,    "https://passport.example.com/login/%2e%2E/admin", NotAllowed),
        ("prefix without segment boundary",     EXACT,    "https://passport.example.com/notify/doneevil", NotAllowed),
        ("pattern directory without slash",     EXACT,    "https://passport.example.com/login", NotAllowed),
        ("path outside every pattern",          EXACT,    "https://passport.example.com/logout", NotAllowed),
        ("tomcat dot-dot with parameter",       EXACT,    "https://passport.example.com/login/..;/admin", PathTraversal),
        ("encoded slash in path",               EXACT,    "https://passport.example.com/login/..%2Fadmin", PathTraversal),
        ("encoded backslash in path",           EXACT,    "https://passport.example.com/login/..%5cadmin", PathTraversal),
        // Paths that a product echoing them into a relative redirect sends to another host.
        ("path starting with two slashes",      WILDCARD, "https://a.example.com//evil.example", NetworkPath),
        ("dot-dot to two slashes",              WILDCARD, "https://a.example.com/..//evil.example", NetworkPath),
        ("dot-dot out of a prefix to two slashes", WILDCARD, "https://a.example.com/login/..//evil.example/x", NetworkPath),
        ("dot to two slashes",                  EXACT,    "http://localhost:8082/.//evil.example/", NetworkPath),
        ("encoded dots to two slashes",         EXACT,    "http://localhost:8082/%2e%2e//evil.example", NetworkPath),
        ("three slashes",                       EXACT,    "http://127.0.0.1:8082///evil.example", NetworkPath),
        // Characters a browser drops or trims.
        ("tab inside host",                     EXACT,    "https://passport.exa\tmple.com/login/", ControlOrWhitespace),
        ("newline inside path",                 EXACT,    "https://passport.example.com/login/\nx", ControlOrWhitespace),
        ("carriage return after host",          EXACT,    "https://evil.com\r/", ControlOrWhitespace),
        ("leading space",                       EXACT,    " https://passport.example.com/login/", ControlOrWhitespace),
        ("trailing space",                      EXACT,    "https://passport.example.com/login/ ", ControlOrWhitespace),
        ("nul byte",                            EXACT,    "https://passport.example.com/login/\u{0}", ControlOrWhitespace),
        ("ideographic space",                   EXACT,    "https://passport.example.com\u{3000}/login/", ControlOrWhitespace),
        ("zero-width space in host",            EXACT,    "https://pass\u{200B}port.example.com/login/", ControlOrWhitespace),
        ("soft hyphen in host",                 EXACT,    "https://pass\u{AD}port.example.com/login/", ControlOrWhitespace),
        ("right-to-left override",              EXACT,    "https://passport.example.com/login/\u{202E}x", ControlOrWhitespace),
    ]
}

fn hostile_cases() -> Vec<Hostile> {
    use Rejection::*;
    let table = [hostile_authorities(), hostile_ports_paths_and_characters()].concat();
    let too_long = format!("https://passport.example.com/login/{}", "a".repeat(MAX_URL_LEN));
    let too_long_encoded = format!("https://passport.example.com/login/{}", "\u{FC}".repeat(700));
    let mut cases: Vec<Hostile> = table
        .iter()
        .map(|&(label, patterns, candidate, expected)| hostile(label, patterns, candidate, expected))
        .collect();
    cases.push(hostile("longer than the limit", EXACT, &too_long, TooLong));
    cases.push(hostile("too long once percent-encoded", EXACT, &too_long_encoded, TooLong));
    cases
}

#[test]
fn form_pairs_decode_every_query_as_the_form_urlencoded_parse_does() {
    for query in [
        "code=0a1B2c&state=Flow123",
        "&&code=0a1B2c&&state=Flow123&",
        "code&state=Flow123&=x&a==b",
        "code=a%2Bb&state=F+1&st%61te=x",
        "from=x&co+de=1&%63ode=2&q=%E4%B8%AD&bad=%FF%zz&plus=+",
        "",
        "&",
    ] {
        let ours: Vec<_> = form_pairs(query).collect();
        let theirs: Vec<_> = url::form_urlencoded::parse(query.as_bytes()).collect();
        assert_eq!(ours, theirs, "{query}");
    }
    let plain: Vec<_> = form_pairs("code=c&state=s").collect();
    assert!(plain.iter().all(|(n, v)| matches!((n, v), (Cow::Borrowed(_), Cow::Borrowed(_)))), "split as written");
}

#[test]
fn every_hostile_url_is_rejected_for_its_reason() {
    let cases = hostile_cases();
    assert!(cases.len() >= 40, "only {} hostile cases", cases.len());

    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let outcome = allowlist(case.patterns).check(&case.candidate);
            (outcome != Err(case.expected))
                .then(|| format!("{}: expected {:?}, got {outcome:?}", case.label, case.expected))
        })
        .collect();

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_accepted_splice_of_hostile_pieces_lands_on_an_allowed_origin() {
    // Arrange: splice hosts with the separators attackers use to move the real host.
    let list = allowlist(&["https://passport.example.com/login/", "https://*.example.com/"]);
    let prefixes = ["https://", "HTTPS://", "https:/", "https:", "//", "http://", "https:///"];
    let hosts = ["passport.example.com", "evil.com", "a.example.com", "example.com", ""];
    let joins = [
        "", "@", ":443@", "#@", "?@", "/", "/../", "\\", ".", "%2e", "%40", "\u{3002}", ":8443", "\u{FF0E}",
        "\u{FF20}", ";", ",", "&",
    ];
    let tails = ["", "/", "/login/", "/login/../x", "#/login/"];
    let mut accepted_count = 0;

    for prefix in prefixes {
        for first in hosts {
            for join in joins {
                for second in hosts {
                    for tail in tails {
                        let candidate = format!("{prefix}{first}{join}{second}{tail}");
                        // Act
                        let Ok(url) = list.check(&candidate) else {
                            continue;
                        };
                        accepted_count += 1;
                        // Assert: the browser lands on https, port 443, under example.com.
                        let reparsed = Url::parse(url.as_str()).expect("normalized URL parses");
                        let host = reparsed.host_str().unwrap_or_default();
                        assert_eq!(reparsed.scheme(), "https", "{candidate:?}");
                        assert_eq!(reparsed.port_or_known_default(), Some(443), "{candidate:?}");
                        assert!(host.ends_with(".example.com"), "{candidate:?} -> {host}");
                        assert_eq!(reparsed.fragment(), None, "{candidate:?}");
                        assert!(url.as_str().bytes().all(|b| b.is_ascii_graphic()));
                        assert_eq!(list.check(url.as_str()).as_ref(), Ok(&url), "{candidate:?}");
                    }
                }
            }
        }
    }

    assert!(accepted_count > 0, "the splice produced no legitimate URL at all");
}

#[test]
fn hostile_case_labels_are_unique() {
    let cases = hostile_cases();
    let mut labels: Vec<_> = cases.iter().map(|c| c.label).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), cases.len());
}

#[test]
fn rejection_messages_never_echo_the_candidate() {
    for case in hostile_cases() {
        let Err(rejection) = allowlist(case.patterns).check(&case.candidate) else {
            panic!("{} was accepted", case.label);
        };
        let message = rejection.to_string();
        assert!(!message.contains("evil"), "{}: {message}", case.label);
        assert!(!message.contains("passport"), "{}: {message}", case.label);
    }
}

#[test]
fn accepted_url_is_normalized_without_its_fragment() {
    let url = accepted(EXACT, "https://PASSPORT.example.com/login/x?a=1#frag");
    assert_eq!(url, "https://passport.example.com/login/x?a=1");
}

#[test]
fn uppercase_scheme_and_explicit_default_port_normalize_away() {
    let url = accepted(EXACT, "HTTPS://passport.example.com:443/login/");
    assert_eq!(url, "https://passport.example.com/login/");
}

#[test]
fn pattern_path_without_slash_allows_itself_its_query_and_its_children() {
    for (candidate, expected) in [
        ("https://passport.example.com/notify/done", "https://passport.example.com/notify/done"),
        ("https://passport.example.com/notify/done?a=1", "https://passport.example.com/notify/done?a=1"),
        ("https://passport.example.com/notify/done/x", "https://passport.example.com/notify/done/x"),
    ] {
        assert_eq!(accepted(EXACT, candidate), expected);
    }
}

#[test]
fn dot_segments_that_stay_inside_the_prefix_are_resolved_and_allowed() {
    let url = accepted(EXACT, "https://passport.example.com/login/a/../b");
    assert_eq!(url, "https://passport.example.com/login/b");
}

#[test]
fn wildcard_allows_subdomains_of_any_depth() {
    assert_eq!(accepted(WILDCARD, "https://a.example.com/"), "https://a.example.com/");
    assert_eq!(accepted(WILDCARD, "https://a.b.example.com/x?y=1"), "https://a.b.example.com/x?y=1");
}

#[test]
fn idn_subdomain_is_compared_as_punycode() {
    let url = accepted(WILDCARD, "https://b\u{FC}cher.example.com/");
    assert_eq!(url, "https://xn--bcher-kva.example.com/");
}

#[test]
fn full_width_letters_and_ideographic_dots_fold_to_the_host_the_browser_visits() {
    let url = accepted(WILDCARD, "https://\u{FF41}\u{3002}example.com/");
    assert_eq!(url, "https://a.example.com/");
}

#[test]
fn listed_localhost_and_loopback_ip_are_allowed_on_their_port() {
    assert_eq!(accepted(EXACT, "http://localhost:8082/"), "http://localhost:8082/");
    assert_eq!(accepted(EXACT, "http://LOCALHOST:8082/cb"), "http://localhost:8082/cb");
    assert_eq!(accepted(EXACT, "http://127.0.0.1:8082/cb?x=1#f"), "http://127.0.0.1:8082/cb?x=1");
}

#[test]
fn listed_ipv6_literal_is_allowed() {
    let url = accepted(&["https://[::1]:9443/"], "https://[::1]:9443/cb");
    assert_eq!(url, "https://[::1]:9443/cb");
}

#[test]
fn listed_non_default_port_is_required() {
    let list = allowlist(&["https://api.example.org:8443/cb"]);

    assert_eq!(
        list.check("https://api.example.org:8443/cb?x=1").map(|u| u.as_str().to_owned()),
        Ok("https://api.example.org:8443/cb?x=1".to_owned())
    );
    assert_eq!(list.check("https://api.example.org/cb"), Err(Rejection::NotAllowed));
}

#[test]
fn apex_is_allowed_only_when_listed_beside_the_wildcard() {
    let list = allowlist(&["https://*.example.com/", "https://example.com/"]);
    assert!(list.check("https://example.com/").is_ok());
    assert!(list.check("https://a.example.com/").is_ok());
}

#[test]
fn empty_allowlist_allows_nothing() {
    let list = allowlist(&[]);
    assert!(list.is_empty());
    assert_eq!(list.check("https://passport.example.com/"), Err(Rejection::NotAllowed));
}

fn return_url(candidate: &str) -> ReturnUrl {
    allowlist(EXACT).check(candidate).expect("candidate is allowed")
}

#[test]
fn a_stored_return_url_redirects_exactly_as_a_parsed_one() {
    let stored = [
        "https://passport.example.com/login/",
        "https://passport.example.com/login/x?a=1",
        "https://passport.example.com/login/?code=planted&a=1&st%61te=x&b",
        "https://passport.example.com/login/?code=only&state=these",
        "https://passport.example.com/login/?%63ode=x&co+de=1&state&State=2",
        "https://passport.example.com/login/?",
        "https://passport.example.com/login/?&&a=%E4%B8%AD&&",
        "https://passport.example.com:8443/login/p%20q?x=y+z",
        "http://passport.example.com/login/",
    ];
    let params: [&[(&str, &str)]; 4] = [
        &[("code", "CODE"), ("state", "s1")],
        &[("state", "a&b=c d#e\r\n\u{FC}\u{1F600}+%")],
        &[("code", "c"), ("state", "s"), ("k&=", "v")],
        &[],
    ];
    for url in stored {
        for params in params {
            let parsed = ReturnUrl::from_stored(url).expect("stored").with_params(params);
            assert_eq!(redirect_from_stored(url, params).as_deref(), Ok(parsed.as_str()), "{url} {params:?}");
        }
    }
}

#[test]
fn a_damaged_stored_return_url_makes_no_redirect() {
    let damaged = [
        ("javascript:alert(1)//", Rejection::NotAbsolute),
        ("//evil.example/", Rejection::NotAbsolute),
        ("data:text/html,x", Rejection::NotAbsolute),
        ("https://user@evil.example/", Rejection::Userinfo),
        ("https://passport.example.com@evil.example/", Rejection::Userinfo),
        ("https://evil.example\\@passport.example.com/", Rejection::Userinfo),
        ("https:///path", Rejection::BadHost),
        ("https://passport.example.com/\r\nSet-Cookie: x", Rejection::ControlOrWhitespace),
        ("https://passport.example.com/\u{4E2D}", Rejection::ControlOrWhitespace),
        ("https://passport.example.com/#frag", Rejection::Unparseable),
        ("https://passport.example.com//evil.example/", Rejection::NetworkPath),
        ("http://passport.example.com//evil.example?a=1", Rejection::NetworkPath),
        ("https://passport.example.com/\\evil.example/", Rejection::NetworkPath),
    ];
    for (url, why) in damaged {
        assert_eq!(redirect_from_stored(url, &[("state", "s")]), Err(why), "{url}");
    }
    let too_long = format!("https://passport.example.com/{}", "a".repeat(MAX_URL_LEN));
    assert_eq!(redirect_from_stored(&too_long, &[]), Err(Rejection::TooLong));
}

#[test]
fn with_params_keeps_the_query_drops_the_fragment_and_appends_in_order() {
    let url = return_url("https://passport.example.com/login/x?a=1#frag");

    let location = url.with_params(&[("code", "CODE"), ("state", "s1")]);

    assert_eq!(location.as_str(), "https://passport.example.com/login/x?a=1&code=CODE&state=s1");
}

#[test]
fn with_params_percent_encodes_everything_that_could_break_out() {
    let url = return_url("https://passport.example.com/login/");

    let location = url.with_params(&[
        ("state", "a&b=c d#e"),
        ("x", "\r\nLocation: https://evil.com/"),
        ("u", "\u{FC}\u{4E2D}+%"),
        ("k&=", "v"),
    ]);

    assert_eq!(
        location.as_str(),
        "https://passport.example.com/login/?state=a%26b%3Dc+d%23e\
         &x=%0D%0ALocation%3A+https%3A%2F%2Fevil.com%2F\
         &u=%C3%BC%E4%B8%AD%2B%25&k%26%3D=v"
    );
    assert!(location.as_str().bytes().all(|b| b.is_ascii_graphic()));
}

#[test]
fn with_params_round_trips_values_through_a_query_parser() {
    let url = return_url("https://passport.example.com/login/?a=1");
    let state = "s t&a=te\r\n\u{1F600}";

    let location = url.with_params(&[("code", "c"), ("state", state)]);

    let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        [("a".to_owned(), "1".to_owned()), ("code".to_owned(), "c".to_owned()), ("state".to_owned(), state.to_owned()),]
    );
}

#[test]
fn with_params_replaces_stored_pairs_of_the_same_name() {
    let url = return_url("https://passport.example.com/login/?code=planted&a=1&st%61te=x&b");

    let location = url.with_params(&[("code", "real"), ("state", "s")]);

    assert_eq!(location.as_str(), "https://passport.example.com/login/?a=1&b&code=real&state=s");
}

#[test]
fn with_params_on_a_query_of_only_replaced_pairs_leaves_no_stray_separator() {
    let url = return_url("https://passport.example.com/login/?code=planted");

    let location = url.with_params(&[("code", "real")]);

    assert_eq!(location.as_str(), "https://passport.example.com/login/?code=real");
}

#[test]
fn with_no_params_the_url_is_unchanged() {
    let url = return_url("https://passport.example.com/login/x");
    assert_eq!(url.with_params(&[]).as_str(), "https://passport.example.com/login/x");
}

#[test]
fn stored_url_round_trips() {
    let url = return_url("https://passport.example.com/login/x?a=1");
    assert_eq!(ReturnUrl::from_stored(url.as_str()), Ok(url));
}

#[test]
fn stored_url_loses_its_fragment() {
    let url = ReturnUrl::from_stored("https://a.example.com/x#frag").expect("valid");
    assert_eq!(url.as_str(), "https://a.example.com/x");
}

#[test]
fn stored_value_that_is_not_absolute_http_is_refused() {
    for (stored, expected) in [
        ("javascript:alert(1)", Rejection::SchemeNotAllowed),
        ("/login/", Rejection::NotAbsolute),
        ("//evil.com/", Rejection::NotAbsolute),
        ("https://user@evil.com/", Rejection::Userinfo),
        ("https://evil.com\\@a.example.com/", Rejection::Backslash),
        ("not a url", Rejection::ControlOrWhitespace),
        ("https://a.example.com//evil.example", Rejection::NetworkPath),
        ("https://a.example.com/..//evil.example", Rejection::NetworkPath),
    ] {
        assert_eq!(ReturnUrl::from_stored(stored), Err(expected), "{stored:?}");
    }
}

#[test]
fn rejection_codes_are_distinct_screaming_snake() {
    use Rejection::*;
    let all = [
        Unparseable,
        NotAbsolute,
        SchemeNotAllowed,
        Userinfo,
        Backslash,
        ControlOrWhitespace,
        EncodedHost,
        IpLiteral,
        BadHost,
        TooLong,
        PathTraversal,
        NetworkPath,
        NotAllowed,
    ];
    let mut codes: Vec<_> = all.iter().map(Rejection::code).collect();
    assert!(codes.iter().all(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')));
    assert_eq!(Userinfo.code(), "USERINFO_NOT_ALLOWED");
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len());
}

fn pattern_error(pattern: &str) -> PatternError {
    match Allowlist::parse(&[pattern]) {
        Ok(_) => panic!("{pattern:?} was accepted"),
        Err(error) => error,
    }
}

#[test]
fn wildcard_over_a_single_label_is_too_broad() {
    for pattern in ["https://*.com/", "http://*.localhost:8082/", "https://*.127.0.0.1/"] {
        assert!(matches!(pattern_error(pattern), PatternError::WildcardTooBroad { .. }), "{pattern}");
    }
}

#[test]
fn wildcard_anywhere_but_the_whole_first_label_is_refused() {
    for pattern in [
        "https://a.*.example.com/",
        "https://*example.com/",
        "https://*.*.example.com/",
        "https://a*.example.com/",
        "https://*/",
    ] {
        assert!(matches!(pattern_error(pattern), PatternError::MisplacedWildcard { .. }), "{pattern}");
    }
}

#[test]
fn pattern_with_query_or_fragment_is_refused() {
    for pattern in ["https://passport.example.com/login/?a=1", "https://passport.example.com/#x"] {
        assert!(matches!(pattern_error(pattern), PatternError::QueryOrFragment { .. }), "{pattern}");
    }
}

#[test]
fn pattern_breaking_a_url_rule_is_malformed_with_that_rule() {
    for (pattern, expected) in [
        ("https://user@passport.example.com/", Rejection::Userinfo),
        ("ftp://passport.example.com/", Rejection::SchemeNotAllowed),
        ("passport.example.com/login/", Rejection::NotAbsolute),
        ("https://passport.example.com./", Rejection::BadHost),
        ("https://pass%2eport.example.com/", Rejection::EncodedHost),
        ("https://passport.example.com/a b/", Rejection::ControlOrWhitespace),
        ("https://passport.example.com/a%2fb/", Rejection::PathTraversal),
    ] {
        match pattern_error(pattern) {
            PatternError::Malformed { reason, .. } => assert_eq!(reason, expected, "{pattern}"),
            other => panic!("{pattern}: {other:?}"),
        }
    }
}

#[test]
fn unparseable_pattern_keeps_the_parser_reason() {
    let error = pattern_error("https://passport.example.com:99999/");
    assert!(matches!(error, PatternError::Unparseable { .. }));
    assert!(error.to_string().contains("invalid port number"), "{error}");
}

#[test]
fn non_canonical_pattern_is_refused_with_its_canonical_form() {
    for (pattern, canonical) in [
        ("https://b\u{FC}cher.example.com/", "https://xn--bcher-kva.example.com/"),
        ("https://*.b\u{FC}cher.example/", "https://*.xn--bcher-kva.example/"),
        ("https://passport.example.com/a/../b/", "https://passport.example.com/b/"),
        ("https://passport.example.com:443/", "https://passport.example.com/"),
        ("http://2130706433:8082/", "http://127.0.0.1:8082/"),
        ("https://[0:0::1]/", "https://[::1]/"),
    ] {
        match pattern_error(pattern) {
            PatternError::NotCanonical { canonical: got, .. } => assert_eq!(got, canonical),
            other => panic!("{pattern}: {other:?}"),
        }
    }
}

#[test]
fn pattern_error_names_the_pattern_and_the_reason() {
    let message = pattern_error("https://*.com/").to_string();
    assert!(message.contains("\"https://*.com/\""), "{message}");
    assert!(message.contains("too broad"), "{message}");

    let message = pattern_error("https://a.example.com/\n").to_string();
    assert!(message.contains("\\n"), "control characters are escaped: {message}");
    assert!(message.contains("whitespace"), "{message}");
}

#[test]
fn pattern_host_case_and_missing_path_are_accepted() {
    let list = allowlist(&["HTTPS://Passport.Example.com", "https://*.Example.ORG/cb"]);
    assert!(list.check("https://passport.example.com/anything").is_ok());
    assert!(list.check("https://a.example.org/cb/x").is_ok());
    assert_eq!(list.check("https://a.example.org/CB"), Err(Rejection::NotAllowed));
}

#[test]
fn one_bad_pattern_fails_the_whole_list() {
    let result = Allowlist::parse(&["https://passport.example.com/", "https://*.com/"]);
    assert!(matches!(result, Err(PatternError::WildcardTooBroad { pattern }) if pattern == "https://*.com/"));
}
