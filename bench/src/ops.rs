//! The operations a phase drives, each as an [`OpFn`]: wxauth's RPCs and relay, the same RPCs
//! against the ceiling server, and the simulator's WeChat endpoints alone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use wxauth::proto::{self, we_chat_o_auth_service_client::WeChatOAuthServiceClient};
use wxauth::sim::Simulator;
use wxauth_bench::load::{Outcome, Pool};

use crate::fixture::{APP, CALLER_STATE, JSSDK_URL, MINI_APPID, MINI_SECRET, MP_APPID, MP_SECRET, RELAY_CODE, USERS};

/// One request of an operation, given the worker's index.
pub type OpFn = Arc<dyn Fn(usize) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// `message` with the client key in its `authorization` metadata.
pub fn authed<T>(auth: &MetadataValue<Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// A failed RPC, counted by its gRPC code.
fn grpc_error(status: &tonic::Status) -> Outcome {
    Outcome::Error(format!("grpc:{:?}", status.code()))
}

/// `BuildAuthorizeUrl`, collecting the flow ids; with `limit`, stops after that many.
pub fn build_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    return_url: &str,
    sink: Arc<Mutex<Vec<String>>>,
    limit: Option<Arc<AtomicI64>>,
) -> OpFn {
    let return_url: Arc<str> = return_url.into();
    Arc::new(move |worker| {
        if limit.as_ref().is_some_and(|l| l.fetch_sub(1, Ordering::Relaxed) <= 0) {
            return async { Outcome::Exhausted }.boxed();
        }
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(
            &auth,
            proto::BuildAuthorizeUrlRequest {
                app: APP.into(),
                return_url: return_url.to_string(),
                scope: proto::Scope::SnsapiUserinfo as i32,
                state: CALLER_STATE.into(),
                ..Default::default()
            },
        );
        let sink = Arc::clone(&sink);
        async move {
            match client.build_authorize_url(request).await {
                Ok(response) => {
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push(response.into_inner().flow_id);
                    Outcome::Ok
                }
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// The callback of a fresh flow (each relayed once); a 302 is the expected answer.
pub fn relay_op(http: reqwest::Client, base: String, path: &'static str, pool: Arc<Pool>) -> OpFn {
    Arc::new(move |_| {
        let Some(flow) = pool.take() else { return async { Outcome::Exhausted }.boxed() };
        let request = http.get(format!("{base}{path}?code={RELAY_CODE}{flow}&state={flow}"));
        async move {
            match request.send().await {
                Ok(response) if response.status() == reqwest::StatusCode::FOUND => Outcome::Ok,
                Ok(response) => Outcome::Error(format!("http:{}", response.status().as_u16())),
                Err(_) => Outcome::Error("http:transport".into()),
            }
        }
        .boxed()
    })
}

/// A code for the `mp` app, minted by the simulator for one of the users.
fn mint(sim: &Simulator, worker: usize) -> Result<String, Outcome> {
    sim.authorize(MP_APPID, USERS[worker % USERS.len()], "snsapi_userinfo")
        .map_err(|e| Outcome::Error(format!("sim:{e}")))
}

/// `ExchangeCode` of a code relayed for this request (a `flow_id code` pair from the pool).
pub fn exchange_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    pool: Arc<Pool>,
) -> OpFn {
    Arc::new(move |worker| {
        let Some((flow_id, code)) = pool.take().and_then(|pair| pair.split_once(' ')) else {
            return async { Outcome::Exhausted }.boxed();
        };
        let (flow_id, code) = (flow_id.to_owned(), code.to_owned());
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(&auth, proto::ExchangeCodeRequest { flow_id, code, ..Default::default() });
        async move {
            match client.exchange_code(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// A WeChat JSON answer: HTTP 200 without a non-zero `errcode`.
async fn wechat_outcome(sent: reqwest::Result<reqwest::Response>) -> Outcome {
    let response = match sent {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return Outcome::Error(format!("http:{}", r.status().as_u16())),
        Err(_) => return Outcome::Error("http:transport".into()),
    };
    match response.json::<serde_json::Value>().await {
        Ok(body) => match body.get("errcode").and_then(serde_json::Value::as_i64) {
            None | Some(0) => Outcome::Ok,
            Some(code) => Outcome::Error(format!("errcode:{code}")),
        },
        Err(_) => Outcome::Error("bad-json".into()),
    }
}

/// The simulator's `sns/oauth2/access_token` alone, with a code minted for this request.
pub fn sim_exchange_op(http: reqwest::Client, base: String, sim: Simulator) -> OpFn {
    Arc::new(move |worker| {
        let code = match mint(&sim, worker) {
            Ok(code) => code,
            Err(outcome) => return async { outcome }.boxed(),
        };
        let request = http.get(format!(
            "{base}/sns/oauth2/access_token?appid={MP_APPID}&secret={MP_SECRET}&code={code}&grant_type=authorization_code"
        ));
        async move { wechat_outcome(request.send().await).await }.boxed()
    })
}

/// `sns/userinfo` (with `lang`) or `sns/auth` alone, with live tokens.
pub fn sim_get_op(http: reqwest::Client, url: String, tokens: Vec<(String, String)>, lang: bool) -> OpFn {
    let lang = if lang { "&lang=zh_CN" } else { "" };
    let urls: Vec<String> =
        tokens.iter().map(|(token, openid)| format!("{url}?access_token={token}&openid={openid}{lang}")).collect();
    Arc::new(move |worker| {
        let request = http.get(&urls[worker % urls.len()]);
        async move { wechat_outcome(request.send().await).await }.boxed()
    })
}

/// `GetUserInfo` of a logged-in user, through the profile cache or (`fresh`) from WeChat each
/// time (the `GET` ceiling serves it too).
pub fn userinfo_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    openids: Vec<String>,
    fresh: bool,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let openid = openids[worker % openids.len()].clone();
        let request = authed(&auth, proto::GetUserInfoRequest { app: APP.into(), openid, fresh, ..Default::default() });
        async move {
            match client.get_user_info(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `GetUserInfo` through the profile cache, as JSON through the Connect face (`url`: the RPC's
/// path on the gRPC port), for comparison with [`userinfo_op`].
pub fn userinfo_json_op(http: reqwest::Client, url: String, key: &str, openids: Vec<String>) -> OpFn {
    let bearer = format!("Bearer {key}");
    let bodies: Vec<String> =
        openids.iter().map(|openid| serde_json::json!({ "app": APP, "openid": openid }).to_string()).collect();
    Arc::new(move |worker| {
        let request = http
            .post(&url)
            .header("content-type", "application/json")
            .header("authorization", &bearer)
            .body(bodies[worker % bodies.len()].clone());
        async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => match response.bytes().await {
                    Ok(_) => Outcome::Ok,
                    Err(_) => Outcome::Error("json:body".into()),
                },
                Ok(response) => Outcome::Error(format!("json:{}", response.status().as_u16())),
                Err(_) => Outcome::Error("json:transport".into()),
            }
        }
        .boxed()
    })
}

/// `ValidateToken` of a logged-in user; `valid: false` counts as an error.
pub fn validate_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    openids: Vec<String>,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let openid = openids[worker % openids.len()].clone();
        let request = authed(&auth, proto::ValidateTokenRequest { app: APP.into(), openid, ..Default::default() });
        async move {
            match client.validate_token(request).await {
                Ok(response) if response.get_ref().valid => Outcome::Ok,
                Ok(response) => Outcome::Error(format!("invalid:errcode {}", response.get_ref().errcode)),
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `RefreshToken` of a logged-in user.
pub fn refresh_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    openids: Vec<String>,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let openid = openids[worker % openids.len()].clone();
        let request = authed(&auth, proto::RefreshTokenRequest { app: APP.into(), openid, ..Default::default() });
        async move {
            match client.refresh_token(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `SignInMiniProgram` with a `js_code` minted for this request.
pub fn mini_op(clients: Vec<WeChatOAuthServiceClient<Channel>>, auth: MetadataValue<Ascii>, sim: Simulator) -> OpFn {
    Arc::new(move |worker| {
        let js_code = match sim.js_code(MINI_APPID, USERS[worker % USERS.len()]) {
            Ok(js_code) => js_code,
            Err(e) => return async move { Outcome::Error(format!("sim:{e}")) }.boxed(),
        };
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(&auth, proto::SignInMiniProgramRequest { app: "mini".into(), js_code });
        async move {
            match client.sign_in_mini_program(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// The simulator's `sns/jscode2session` alone, with a `js_code` minted for this request.
pub fn sim_mini_op(http: reqwest::Client, base: String, sim: Simulator) -> OpFn {
    Arc::new(move |worker| {
        let js_code = match sim.js_code(MINI_APPID, USERS[worker % USERS.len()]) {
            Ok(js_code) => js_code,
            Err(e) => return async move { Outcome::Error(format!("sim:{e}")) }.boxed(),
        };
        let request = http.get(format!(
            "{base}/sns/jscode2session?appid={MINI_APPID}&secret={MINI_SECRET}&js_code={js_code}&grant_type=authorization_code"
        ));
        async move { wechat_outcome(request.send().await).await }.boxed()
    })
}

/// `FindAccounts` of a signed-in user's unionid; `want` accounts listed (0: any number, the
/// ceiling's).
pub fn accounts_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    unionids: Vec<String>,
    want: usize,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let unionid = unionids[worker % unionids.len()].clone();
        let request = authed(&auth, proto::FindAccountsRequest { unionid, ..Default::default() });
        async move {
            match client.find_accounts(request).await {
                Ok(found) if want == 0 || found.get_ref().accounts.len() == want => Outcome::Ok,
                Ok(found) => Outcome::Error(format!("accounts:{}", found.get_ref().accounts.len())),
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `GetAppAccessToken` of app `mp` (the client is granted `app_access_token`); an empty token
/// counts as an error. The ceiling server answers it with its one `GET`.
pub fn app_token_op(clients: Vec<WeChatOAuthServiceClient<Channel>>, auth: MetadataValue<Ascii>) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(&auth, proto::GetAppAccessTokenRequest { app: APP.into() });
        async move {
            match client.get_app_access_token(request).await {
                Ok(response) if !response.get_ref().access_token.is_empty() => Outcome::Ok,
                Ok(_) => Outcome::Error("empty-token".into()),
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `SignJsSdkConfig` of a page under the client's return URLs (granted `jssdk`), with the
/// `jsApiList` a share button passes; an empty signature counts as an error.
pub fn jssdk_op(clients: Vec<WeChatOAuthServiceClient<Channel>>, auth: MetadataValue<Ascii>) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(
            &auth,
            proto::SignJsSdkConfigRequest {
                app: APP.into(),
                url: JSSDK_URL.into(),
                js_api_list: vec!["updateAppMessageShareData".into(), "updateTimelineShareData".into()],
            },
        );
        async move {
            match client.sign_js_sdk_config(request).await {
                Ok(response) if !response.get_ref().signature.is_empty() => Outcome::Ok,
                Ok(_) => Outcome::Error("empty-signature".into()),
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}
