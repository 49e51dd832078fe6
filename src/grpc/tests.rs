use std::time::Duration;

use tonic::metadata::MetadataMap;

use super::run::grpc_timeout;
use super::validate::{MAX_DATA_HREF, MAX_HREF, Violations, is_openid};
use crate::proto;

#[test]
fn grpc_timeout_header_is_parsed_in_every_unit() {
    let cases = [("5S", 5_000), ("250m", 250), ("2M", 120_000), ("1H", 3_600_000), ("1000u", 1)];
    for (header, ms) in cases {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", header.parse().expect("ascii"));
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_millis(ms)), "{header}");
    }
    let mut bad = MetadataMap::new();
    bad.insert("grpc-timeout", "xS".parse().expect("ascii"));
    assert_eq!(grpc_timeout(&bad), None);
}

#[test]
fn wx_login_styles_are_wechats_and_hrefs_plain_https_urls() {
    let mut v = Violations::default();
    for style in ["", "black", "white"] {
        v.wx_login_options(proto::WxLoginOptions { style: style.into(), ..Default::default() });
    }
    // A CSS data: URL, as public guides restyle the QR code (issue 20): `body{}`, and
    // `.impowerBox .qrcode {width: 200px;}` with a child combinator (`>` is CSS, `<` is not).
    let guide = "data:text/css;base64,LmltcG93ZXJCb3ggPiAucXJjb2RlIHt3aWR0aDogMjAwcHg7fQo=";
    for href in [
        "https://cdn.example.com/qr.css",
        "https://cdn.example.com/a/qr.css?v=2",
        "data:text/css;base64,Ym9keXt9",
        guide,
    ] {
        v.wx_login_options(proto::WxLoginOptions { href: href.into(), ..Default::default() });
    }
    assert!(v.0.is_empty(), "{:?}", v.0.iter().map(|f| f.field).collect::<Vec<_>>());
}

#[test]
fn a_bad_wx_login_style_or_href_is_a_field_violation() {
    let too_long = format!("https://cdn.example.com/{}.css", "a".repeat(MAX_HREF));
    // "body{}" repeated past MAX_DATA_HREF: valid CSS, too long for the QR link.
    let too_long_data = format!("data:text/css;base64,{}", "Ym9keXt9".repeat(MAX_DATA_HREF / 8));
    let bad_hrefs = [
        "http://cdn.example.com/qr.css",
        "javascript:alert(1)",
        "data:text/css,body{}",
        "data:text/html;base64,Ym9keXt9",
        "data:text/css;base64,Ym9keXt9=",
        "data:text/css;base64,Ym9keXt",
        "data:text/css;base64,",
        "data:text/css;base64,Ym9k eXt9",
        "data:text/css;base64,PHN0eWxlPg==",
        "data:text/css;base64,/w==",
        "data:text/css;base64,AA==",
        too_long_data.as_str(),
        "//cdn.example.com/qr.css",
        "https://cdn.example.com/qr.css&redirect_uri=https%3A%2F%2Fevil.example",
        "https://cdn.example.com/qr.css#x",
        "https://cdn.example.com/q r.css",
        "https://user:pw@cdn.example.com/qr.css",
        too_long.as_str(),
    ];
    for href in bad_hrefs {
        let mut v = Violations::default();
        v.wx_login_options(proto::WxLoginOptions { href: href.into(), ..Default::default() });
        assert_eq!(v.0.iter().map(|f| f.field).collect::<Vec<_>>(), ["wx_login_options.href"], "{href}");
    }
    let mut v = Violations::default();
    v.wx_login_options(proto::WxLoginOptions { style: "red".into(), ..Default::default() });
    assert_eq!(v.0.iter().map(|f| f.field).collect::<Vec<_>>(), ["wx_login_options.style"]);
}

#[test]
fn openids_are_checked_for_charset_and_length() {
    assert!(is_openid("oLVPpjqs9BhvzwPj5A-vTYAX3GLc"));
    assert!(!is_openid(""));
    assert!(!is_openid("o/../x"));
    assert!(!is_openid(&"o".repeat(65)));
}
