//! The mini program's phone-number button (手机号快速验证, getPhoneNumber): the button gives the
//! mini program a `code` (single use, 5 minutes: "每个 code 只能使用一次，code的有效期为5min"),
//! which the server trades at `POST /wxa/business/getuserphonenumber?access_token=..` with
//! `{code}` for `{errcode: 0, errmsg: "ok", phone_info: {phoneNumber, purePhoneNumber,
//! countryCode, watermark: {timestamp, appid}}}`. Facts and sources: docs/wechat.md.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

use super::Simulator;
use super::config::SimAppKind;
use super::control::Endpoint;
use super::params::Params;
use super::state::errcode;

/// A phone code's life.
const CODE_LIFE: Duration = Duration::from_secs(300);

/// Phone codes issued and not yet used: code → (mini program, user, when it dies).
#[derive(Default)]
pub(super) struct PhoneCodes(Mutex<HashMap<String, (String, String, Duration)>>);

/// The phone number of test user `user` (the simulator's users have made-up ones: 138 0013
/// 8000 plus their place in the config).
fn number_of(sim: &Simulator, user: &str) -> Option<String> {
    let index = sim.core().users().iter().position(|u| u.key == user)?;
    Some(format!("1380013{:04}", 8000 + index))
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route("/wxa/business/getuserphonenumber", post(phone_number))
}

async fn phone_number(State(sim): State<Simulator>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let p = Params::parse(raw.unwrap_or_default().as_bytes());
    super::app_token::answer(&sim, Endpoint::PhoneNumber, || {
        let token = p.require("access_token", errcode::MISSING_ACCESS_TOKEN)?;
        let appid = sim.token_app(token).ok_or(40001)?;
        let request: Value = serde_json::from_slice(&body).map_err(|_| errcode::INVALID_CODE)?;
        let code = request.get("code").and_then(Value::as_str).ok_or(errcode::INVALID_CODE)?;
        let now = sim.core().now();
        let taken = sim.phone_codes().0.lock().unwrap_or_else(PoisonError::into_inner).remove(code);
        let (code_app, user, dies) = taken.ok_or(errcode::INVALID_CODE)?;
        if code_app != appid || dies <= now {
            return Err(errcode::INVALID_CODE);
        }
        let number = number_of(&sim, &user).ok_or(errcode::INVALID_CODE)?;
        Ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": number,
                "purePhoneNumber": number,
                "countryCode": "86",
                "watermark": { "timestamp": sim.core().unix_now(), "appid": appid },
            }
        }))
    })
    .await
}

impl Simulator {
    /// A `code` as the phone-number button gives `user` in mini program `appid` (single use,
    /// 5 minutes); `None` for an unknown user or an app that is not a mini program.
    pub fn phone_code(&self, appid: &str, user: &str) -> Option<String> {
        self.core().app(appid).filter(|a| a.kind == SimAppKind::MiniProgram)?;
        number_of(self, user)?;
        let code = crate::random_id(32);
        let dies = self.core().now() + CODE_LIFE;
        let mut codes = self.phone_codes().0.lock().unwrap_or_else(PoisonError::into_inner);
        codes.insert(code.clone(), (appid.to_owned(), user.to_owned(), dies));
        Some(code)
    }

    /// The phone number the simulator gives `user` (tests compare with it).
    pub fn phone_number_of(&self, user: &str) -> Option<String> {
        number_of(self, user)
    }
}
