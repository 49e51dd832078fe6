//! A stand-in for WeChat's JS-SDK script (`jweixin-1.6.0.js`, served by WeChat at
//! `res.wx.qq.com/open/js/`) and for the WeChat client's check of `wx.config`: the script
//! sends the page's `appId, timestamp, nonceStr, signature` and its own URL (without the `#`
//! fragment) to `/sim/jssdk/verify`, which recomputes WeChat's signature, SHA-1 of
//! `jsapi_ticket=..&noncestr=..&timestamp=..&url=..` (JS-SDK说明文档, 附录1), with the tickets this
//! simulator issued, and the script calls `wx.ready` on a match, `wx.error({errMsg})` else
//! ("config信息验证后会执行ready方法" / "config信息验证失败会执行error函数", steps 4 and 5 of the
//! same doc). Facts and sources: docs/wechat.md. Dev and tests only, like the whole simulator.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sha1::{Digest as _, Sha1};

use super::Simulator;
use super::config::SimAppKind;
use super::params::Params;

/// Where WeChat serves the JS-SDK (on `res.wx.qq.com`); the simulator serves its stand-in here.
pub const JWEIXIN_JS: &str = "/open/js/jweixin-1.6.0.js";

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route(JWEIXIN_JS, get(jweixin_js)).route("/sim/jssdk/verify", get(verify))
}

async fn jweixin_js() -> Response {
    const SCRIPT: &str = r##"// wxauth's WeChat simulator: a stand-in for https://res.wx.qq.com/open/js/jweixin-1.6.0.js
(function (window, document) {
  var me = document.currentScript;
  var origin = me ? new URL(me.src).origin : "";
  var ready = [], failed = [], outcome = null;
  function settle(res) {
    outcome = res;
    var hooks = res.errMsg === "config:ok" ? ready : failed;
    hooks.forEach(function (f) { f(res); });
  }
  window.wx = window.jWeixin = {
    config: function (c) {
      var q = new URLSearchParams({ appId: c.appId, timestamp: String(c.timestamp), nonceStr: c.nonceStr,
        signature: c.signature, url: window.location.href.split("#")[0] });
      fetch(origin + "/sim/jssdk/verify?" + q.toString())
        .then(function (r) { return r.json(); })
        .then(settle, function () { settle({ errMsg: "config:fail" }); });
    },
    ready: function (f) { if (outcome && outcome.errMsg === "config:ok") { f(); } else { ready.push(function () { f(); }); } },
    error: function (f) { if (outcome && outcome.errMsg !== "config:ok") { f(outcome); } else { failed.push(f); } }
  };
})(window, document);
"##;
    ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], SCRIPT).into_response()
}

/// `GET /sim/jssdk/verify?appId=..&timestamp=..&nonceStr=..&signature=..&url=..`: what the
/// WeChat client answers `wx.config` (`errMsg`): `config:ok`, or `config:invalid signature`
/// (also for an app that is not an official account, or one with no live ticket). Any page may
/// ask (CORS `*`): the stand-in script runs on the product's page.
async fn verify(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.unwrap_or_default().as_bytes());
    let field = |name: &str| p.get(name).unwrap_or_default().to_owned();
    let (appid, timestamp, nonce, signature, url) =
        (field("appId"), field("timestamp"), field("nonceStr"), field("signature"), field("url"));
    let official = sim.core().app(&appid).is_some_and(|a| a.kind == SimAppKind::OfficialAccount);
    let signed = |ticket: &String| {
        let plain = format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
        hex::encode(Sha1::digest(plain.as_bytes()))
    };
    let ok = official && sim.live_tickets(&appid).iter().any(|t| signed(t) == signature.to_ascii_lowercase());
    let err_msg = if ok { "config:ok" } else { "config:invalid signature" };
    ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], axum::Json(json!({ "errMsg": err_msg }))).into_response()
}
