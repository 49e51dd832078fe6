//! The ceilings: what the stack does for each operation when it does nothing but the one
//! store operation the operation needs. A bare tonic unary handler (wxauth's own generated
//! server trait, with no authentication, validation, sealing, metrics or tracing) doing one
//! Redis `SET PX` of a ~200-byte value (`BuildAuthorizeUrl`) or one `GET` (`GetUserInfo`,
//! `ValidateToken` before their upstream call), and bare axum handlers doing `GETDEL` + 302
//! (the relay) and, for the relay that binds each code to its flow, `GETDEL` of the flow and
//! `SET NX GET` of a code record in one pipeline + 302, and one doing `GETDEL` + a JSON answer
//! the size of an OpenID Provider's token answer (the token endpoint). Served by the bench binary in a child process (`wxauth-bench __ceiling`), so
//! it has its own runtime and its own memory, as wxauth does. Accepted sockets get
//! `TCP_NODELAY`, as a tuned server's do: without it, a response written in two pieces (tonic
//! writes headers + data, then trailers) waits for the client's delayed ACK, ~40 ms.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::serve::ListenerExt as _;
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

use wxauth::proto::{self, we_chat_o_auth_service_server::WeChatOAuthService};

/// Where ceiling flows live in Redis (`{FLOW_PREFIX}{flow_id}`).
pub const FLOW_PREFIX: &str = "ceiling:flow:";
/// Where the binding relay ceiling keeps its code records (`{CODE_PREFIX}{code}`).
pub const CODE_PREFIX: &str = "ceiling:code:";
/// The binding relay ceiling's callback path (the plain one is wxauth's own path).
pub const BOUND_CALLBACK_PATH: &str = "/bound/wechat/callback";
/// The token endpoint ceiling's path (`POST`, a form with `code`: a ceiling flow's id).
pub const TOKEN_PATH: &str = "/ceiling/oidc/token";
/// The signing token ceilings' paths: the same as [`TOKEN_PATH`] and an ID token signed with the
/// bench's own RS256 or ES256 key (the keys wxauth's generated config signs with).
pub const TOKEN_RS256_PATH: &str = "/ceiling/oidc/token-rs256";
/// See [`TOKEN_RS256_PATH`].
pub const TOKEN_ES256_PATH: &str = "/ceiling/oidc/token-es256";
/// The keys of the signing ceilings: the files the bench's config gives wxauth.
const RS256_PEM: &str = include_str!("../../tests/fixtures/oidc/current.pem");
const EC_PEM: &str = include_str!("../../tests/fixtures/oidc/ec-current.pem");
/// The length of the `id_token` in the token ceiling's answer: an RS256 ID token of the bench
/// client (header, ~350 bytes of claims with `name` and `picture`, a 2048-bit signature) in
/// base64url: wxauth's was 913 characters, its whole answer 1,053 bytes (2026-12-05).
const ID_TOKEN_LEN: usize = 900;
/// The one record the `GET` ceiling reads.
pub const TOKEN_KEY: &str = "ceiling:tok";
/// The one hash the `HGETALL` ceiling (FindAccounts) reads.
pub const UNION_KEY: &str = "ceiling:union";
/// How long a ceiling flow lives, like a wxauth flow.
const FLOW_TTL_MS: u64 = 600_000;

/// The return URL stored with each ceiling flow: ~200 bytes, about a sealed wxauth flow.
pub fn flow_value() -> String {
    let mut url = String::from("https://passport.example.com/login/callback?from=bench&pad=");
    while url.len() < 200 {
        url.push('x');
    }
    url
}

/// The tonic ceiling: one Redis command per RPC.
#[derive(Clone)]
pub struct CeilingService {
    redis: ConnectionManager,
    value: std::sync::Arc<str>,
}

impl CeilingService {
    /// The service over one (multiplexed, reconnecting) Redis connection, as wxauth's.
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis, value: flow_value().into() }
    }

    async fn get_token(&self) -> Result<Vec<u8>, Status> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(TOKEN_KEY)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        value.ok_or_else(|| Status::not_found("no token record"))
    }
}

#[tonic::async_trait]
impl WeChatOAuthService for CeilingService {
    async fn build_authorize_url(
        &self,
        _request: Request<proto::BuildAuthorizeUrlRequest>,
    ) -> Result<tonic::Response<proto::BuildAuthorizeUrlResponse>, Status> {
        let flow_id = wxauth::random_id(22);
        let () = redis::cmd("SET")
            .arg(format!("{FLOW_PREFIX}{flow_id}"))
            .arg(self.value.as_bytes())
            .arg("PX")
            .arg(FLOW_TTL_MS)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(proto::BuildAuthorizeUrlResponse { flow_id, ..Default::default() }))
    }

    async fn exchange_code(
        &self,
        _request: Request<proto::ExchangeCodeRequest>,
    ) -> Result<tonic::Response<proto::ExchangeCodeResponse>, Status> {
        Err(Status::unimplemented("the ExchangeCode ceilings are the SET handler and the simulator"))
    }

    async fn refresh_token(
        &self,
        _request: Request<proto::RefreshTokenRequest>,
    ) -> Result<tonic::Response<proto::RefreshTokenResponse>, Status> {
        Err(Status::unimplemented("no RefreshToken ceiling"))
    }

    async fn get_user_info(
        &self,
        request: Request<proto::GetUserInfoRequest>,
    ) -> Result<tonic::Response<proto::GetUserInfoResponse>, Status> {
        self.get_token().await?;
        let user_info = proto::UserInfo { openid: request.into_inner().openid, ..Default::default() };
        Ok(tonic::Response::new(proto::GetUserInfoResponse {
            user_info: Some(user_info),
            fetch_time: Some(Default::default()),
        }))
    }

    async fn validate_token(
        &self,
        _request: Request<proto::ValidateTokenRequest>,
    ) -> Result<tonic::Response<proto::ValidateTokenResponse>, Status> {
        self.get_token().await?;
        Ok(tonic::Response::new(proto::ValidateTokenResponse { valid: true, ..Default::default() }))
    }

    async fn forget_user(
        &self,
        _request: Request<proto::ForgetUserRequest>,
    ) -> Result<tonic::Response<proto::ForgetUserResponse>, Status> {
        Err(Status::unimplemented("no ForgetUser ceiling"))
    }

    async fn exchange_mobile_code(
        &self,
        _request: Request<proto::ExchangeMobileCodeRequest>,
    ) -> Result<tonic::Response<proto::ExchangeMobileCodeResponse>, Status> {
        Err(Status::unimplemented("no ExchangeMobileCode ceiling"))
    }

    /// SignInMiniProgram's store ceiling: one `SET PX` (the session record) per call; the
    /// simulator's `jscode2session` alone is its other ceiling.
    async fn sign_in_mini_program(
        &self,
        _request: Request<proto::SignInMiniProgramRequest>,
    ) -> Result<tonic::Response<proto::SignInMiniProgramResponse>, Status> {
        let () = redis::cmd("SET")
            .arg(format!("{FLOW_PREFIX}sess:{}", wxauth::random_id(22)))
            .arg(self.value.as_bytes())
            .arg("PX")
            .arg(FLOW_TTL_MS)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(proto::SignInMiniProgramResponse::default()))
    }

    /// FindAccounts' ceiling: one `HGETALL` of a unionid's index (two accounts of ~150 bytes).
    async fn find_accounts(
        &self,
        _request: Request<proto::FindAccountsRequest>,
    ) -> Result<tonic::Response<proto::FindAccountsResponse>, Status> {
        let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(UNION_KEY)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let accounts = fields.into_iter().map(|(app, _)| proto::Account { app, ..Default::default() }).collect();
        Ok(tonic::Response::new(proto::FindAccountsResponse { accounts }))
    }

    /// GetAppAccessToken's ceiling: one `GET` (the sealed credential), as GetUserInfo's.
    async fn get_app_access_token(
        &self,
        _request: Request<proto::GetAppAccessTokenRequest>,
    ) -> Result<tonic::Response<proto::GetAppAccessTokenResponse>, Status> {
        let value = self.get_token().await?;
        Ok(tonic::Response::new(proto::GetAppAccessTokenResponse {
            access_token: value.len().to_string(),
            ..Default::default()
        }))
    }

    async fn invalidate_app_access_token(
        &self,
        _request: Request<proto::InvalidateAppAccessTokenRequest>,
    ) -> Result<tonic::Response<proto::InvalidateAppAccessTokenResponse>, Status> {
        Err(Status::unimplemented("no InvalidateAppAccessToken ceiling"))
    }

    /// SignJsSdkConfig's ceiling: one `GET` (the sealed ticket); the SHA-1 is wxauth's own work.
    async fn sign_js_sdk_config(
        &self,
        _request: Request<proto::SignJsSdkConfigRequest>,
    ) -> Result<tonic::Response<proto::SignJsSdkConfigResponse>, Status> {
        let value = self.get_token().await?;
        Ok(tonic::Response::new(proto::SignJsSdkConfigResponse {
            signature: value.len().to_string(),
            ..Default::default()
        }))
    }

    async fn decrypt_mini_program_data(
        &self,
        _request: Request<proto::DecryptMiniProgramDataRequest>,
    ) -> Result<tonic::Response<proto::DecryptMiniProgramDataResponse>, Status> {
        Err(Status::unimplemented("no DecryptMiniProgramData ceiling"))
    }

    async fn get_phone_number(
        &self,
        _request: Request<proto::GetPhoneNumberRequest>,
    ) -> Result<tonic::Response<proto::GetPhoneNumberResponse>, Status> {
        Err(Status::unimplemented("no GetPhoneNumber ceiling"))
    }

    async fn read_user_events(
        &self,
        _request: Request<proto::ReadUserEventsRequest>,
    ) -> Result<tonic::Response<proto::ReadUserEventsResponse>, Status> {
        Err(Status::unimplemented("no ReadUserEvents ceiling"))
    }
}

/// The axum ceiling of the relay: `GETDEL` the flow named by `state`, 302 to its URL with the
/// code appended; 400 when it is not there.
async fn relay(State(redis): State<ConnectionManager>, RawQuery(query): RawQuery) -> Response {
    let (code, Some(state)) = callback_params(query.as_deref()) else { return StatusCode::BAD_REQUEST.into_response() };
    let found: redis::RedisResult<Option<String>> =
        redis::cmd("GETDEL").arg(format!("{FLOW_PREFIX}{state}")).query_async(&mut redis.clone()).await;
    match found {
        Ok(Some(url)) => redirect(&url, code.as_deref().unwrap_or_default()),
        Ok(None) => StatusCode::BAD_REQUEST.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The axum ceiling of a relay that binds each code to its flow (issue 9): in one pipeline,
/// `GETDEL` the flow named by `state` and `SET code NX GET PX` a 60-byte record naming it (the
/// least Redis work such a relay does: read the flow, bind the code, learn whether it was bound
/// before); 302 to the flow's URL with the code appended when the code was not bound to
/// another flow, 400 otherwise.
async fn relay_bound(State(redis): State<ConnectionManager>, RawQuery(query): RawQuery) -> Response {
    let (Some(code), Some(state)) = callback_params(query.as_deref()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut record = state.clone().into_bytes();
    record.resize(60, b' ');
    let mut pipe = redis::pipe();
    pipe.cmd("GETDEL").arg(format!("{FLOW_PREFIX}{state}"));
    pipe.cmd("SET").arg(format!("{CODE_PREFIX}{code}")).arg(&record).arg("NX").arg("GET").arg("PX").arg(660_000);
    let found: redis::RedisResult<(Option<String>, Option<Vec<u8>>)> = pipe.query_async(&mut redis.clone()).await;
    match found {
        Ok((Some(url), bound)) if bound.as_ref().is_none_or(|b| *b == record) => redirect(&url, &code),
        Ok(_) => StatusCode::BAD_REQUEST.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The token endpoint's ceiling: `GETDEL` of the code (a ceiling flow) named by the form's
/// `code`, and a JSON answer the size of wxauth's (an access token, an ID token of
/// [`ID_TOKEN_LEN`] characters); `invalid_grant` (400) when the code is not there. No client
/// authentication, PKCE, record or signature: the store's one round trip and the answer.
async fn token(State(redis): State<ConnectionManager>, body: axum::body::Bytes) -> Response {
    let code = url::form_urlencoded::parse(&body).find(|(key, _)| key == "code").map(|(_, value)| value.into_owned());
    let Some(code) = code else { return StatusCode::BAD_REQUEST.into_response() };
    let found: redis::RedisResult<Option<Vec<u8>>> =
        redis::cmd("GETDEL").arg(format!("{FLOW_PREFIX}{code}")).query_async(&mut redis.clone()).await;
    let (status, answer) = match found {
        Ok(Some(_)) => (
            StatusCode::OK,
            serde_json::json!({
                "access_token": wxauth::random_id(43),
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": "e".repeat(ID_TOKEN_LEN),
                "scope": "openid profile",
            }),
        ),
        Ok(None) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": "invalid_grant" })),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": "temporarily_unavailable" })),
    };
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], answer.to_string())
        .into_response()
}

/// The keys the signing ceilings sign with.
#[derive(Clone)]
struct Signers {
    redis: ConnectionManager,
    rs256: wxauth::oidc::SigningKey,
    es256: wxauth::oidc::SigningKey,
}

/// The token ceiling with the one piece of work no provider can skip: `GETDEL` of the code, an
/// ID token of wxauth's claims (sizes as the bench client's: a 43-character pairwise `sub`, a
/// nonce, `name`, `picture`) signed with `key`, and the JSON answer. Against it the endpoint's
/// ratio is what wxauth costs beside the signature, which at ~0.9 ms (RS256, 2048-bit) is 35
/// times the plain ceiling's whole request: no provider that signs each ID token can come near
/// 0.7x of a ceiling that does not.
async fn token_signed(mut redis: ConnectionManager, key: &wxauth::oidc::SigningKey, body: &[u8]) -> Response {
    let code = url::form_urlencoded::parse(body).find(|(key, _)| key == "code").map(|(_, value)| value.into_owned());
    let Some(code) = code else { return StatusCode::BAD_REQUEST.into_response() };
    let found: redis::RedisResult<Option<Vec<u8>>> =
        redis::cmd("GETDEL").arg(format!("{FLOW_PREFIX}{code}")).query_async(&mut redis).await;
    match found {
        Ok(Some(_)) => {}
        Ok(None) => return (StatusCode::BAD_REQUEST, "{\"error\":\"invalid_grant\"}").into_response(),
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": "http://127.0.0.1:18080",
        "sub": wxauth::random_id(43),
        "aud": "bench-rp",
        "exp": now + 300,
        "iat": now,
        "auth_time": now,
        "nonce": wxauth::random_id(22),
        "name": "bench user",
        "picture": "https://thirdwx.qlogo.cn/mmopen/vi_32/bench0000000000000000000000000000000000000000000000000000/132",
    });
    let Ok(id_token) = key.sign(&claims) else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let answer = serde_json::json!({
        "access_token": wxauth::random_id(43),
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": id_token,
        "scope": "openid profile",
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")],
        answer.to_string(),
    )
        .into_response()
}

/// The callback's `code` and `state`, as the relay ceilings read them (no checks: they are
/// ceilings, not relays).
fn callback_params(query: Option<&str>) -> (Option<String>, Option<String>) {
    let (mut code, mut state) = (None, None);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "code" => code = Some(value.into_owned()),
            "state" => state = Some(value.into_owned()),
            _ => {}
        }
    }
    (code, state)
}

/// 302 to the flow's `url` with the code appended.
fn redirect(url: &str, code: &str) -> Response {
    match HeaderValue::from_str(&format!("{url}&code={code}")) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Why the ceiling server could not start.
#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    /// Redis was not reachable.
    #[error("cannot connect to redis")]
    Redis(#[from] redis::RedisError),
    /// A listener could not bind, or serving failed.
    #[error("cannot serve")]
    Io(#[from] std::io::Error),
}

/// Serves both ceilings on loopback ports of its own, prints `ceiling <grpc addr> <http addr>`
/// as its first stdout line, and serves until stdin closes (the bench process went away).
pub async fn serve(redis_url: &str) -> Result<(), CeilingError> {
    let client = redis::Client::open(redis_url)?;
    let mut redis = ConnectionManager::new(client).await?;
    let () = redis::cmd("SET").arg(TOKEN_KEY).arg(vec![7u8; 300]).query_async(&mut redis).await?;
    let () = redis::cmd("HSET")
        .arg(UNION_KEY)
        .arg("mp:o0000000000000000000000000a")
        .arg(vec![7u8; 150])
        .arg("mini:o0000000000000000000000000b")
        .arg(vec![7u8; 150])
        .query_async(&mut redis)
        .await?;

    let grpc = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let http = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let (grpc_addr, http_addr): (SocketAddr, SocketAddr) = (grpc.local_addr()?, http.local_addr()?);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ceiling {grpc_addr} {http_addr}")?;
    stdout.flush()?;

    let stdin_closed = tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while stdin.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    let tonic_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(proto::we_chat_o_auth_service_server::WeChatOAuthServiceServer::new(CeilingService::new(
            redis.clone(),
        )))
        .serve_with_incoming(TcpIncoming::from(grpc).with_nodelay(Some(true)));
    let router = axum::Router::new()
        .route(wxauth::relay::CALLBACK_PATH, axum::routing::get(relay))
        .route(BOUND_CALLBACK_PATH, axum::routing::get(relay_bound))
        .route(TOKEN_PATH, axum::routing::post(token))
        .with_state(redis.clone());
    let signers = Signers {
        redis,
        rs256: wxauth::oidc::SigningKey::from_pem("bench", RS256_PEM).map_err(std::io::Error::other)?,
        es256: wxauth::oidc::SigningKey::from_pem_for(wxauth::oidc::Alg::Es256, "bench-ec", EC_PEM)
            .map_err(std::io::Error::other)?,
    };
    let router = router.merge(
        axum::Router::new()
            .route(
                TOKEN_RS256_PATH,
                axum::routing::post(|State(s): State<Signers>, body: axum::body::Bytes| async move {
                    token_signed(s.redis.clone(), &s.rs256, &body).await
                }),
            )
            .route(
                TOKEN_ES256_PATH,
                axum::routing::post(|State(s): State<Signers>, body: axum::body::Bytes| async move {
                    token_signed(s.redis.clone(), &s.es256, &body).await
                }),
            )
            .with_state(signers),
    );
    let http = http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let axum_server = axum::serve(http, router);
    tokio::select! {
        served = tonic_server => served.map_err(std::io::Error::other)?,
        served = axum_server => served?,
        _ = stdin_closed => {}
    }
    Ok(())
}
