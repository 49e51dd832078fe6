use super::*;

#[test]
fn durations_take_the_usual_units() {
    assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms").ok(), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("3").ok(), Some(Duration::from_secs(3)));
    assert!(parse_duration("3h").is_err());
}

#[test]
fn flags_parse_and_ops_default_to_all_but_refresh() {
    let raw: Vec<String> = ["--concurrency", "8", "--duration", "1s"].iter().map(|s| s.to_string()).collect();
    let args = Args::parse(&raw).expect("valid flags");
    assert_eq!(args.concurrency, 8);
    assert!(!args.ops.contains(&Op::Refresh));
    assert!(Args::parse(&["--bogus".to_owned()]).is_err());
}

#[test]
fn the_app_level_and_oidc_ops_parse_and_are_not_in_the_default_run() {
    let raw: Vec<String> =
        ["--ops", "apptoken, jssdk,oidc-token,oidc-token-es256"].iter().map(|s| s.to_string()).collect();
    let args = Args::parse(&raw).expect("valid flags");
    assert_eq!(args.ops, [Op::AppToken, Op::Jssdk, Op::OidcToken, Op::OidcTokenEs256].into());
    let default = Args::parse(&[]).expect("no flags");
    assert!(![Op::AppToken, Op::Jssdk, Op::OidcToken, Op::OidcTokenEs256].iter().any(|op| default.ops.contains(op)));
    let error = Args::parse(&["--ops".to_owned(), "oidc_token".to_owned()]).expect_err("a misspelt op");
    assert!(error.to_string().contains("unknown operation \"oidc_token\""), "{error}");
    assert!(error.to_string().contains("oidc-token"), "--help names the op: {error}");
}
