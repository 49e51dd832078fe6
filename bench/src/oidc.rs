//! The OpenID Provider's token endpoint (issue 22): codes minted through whole sign-ins before
//! the window, the token request (`authorization_code` + PKCE verifier, `client_secret_basic`)
//! against wxauth and against the `axum GETDEL+JSON` ceiling, and the signing cost timed alone:
//! RS256 for the bench's usual relying party (`oidc-token`), ES256 for the one registered for
//! it (`oidc-token-es256`).
//!
//! Each code takes a sign-in as a browser makes it: `/oidc/authorize` (as WeChat's browser, so
//! the official account), the flow's start URL (its cookie), the simulator's consent (Allow,
//! posted as its page does), the relay, and `/oidc/callback`, where wxauth exchanges WeChat's
//! code and reads the profile upstream before it issues its own. That is several times the work
//! of a token request, so the codes are minted before the window, as the relay's flows are
//! pre-created. A code lives 60 s (`oidc.code_ttl`, the provider's maximum) and the pool is used
//! oldest first, so minting stops [`CODE_MARGIN`] short of that less the warm-up and window (the
//! oldest code is then used before it expires) and warns when it stops short of the count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::FutureExt as _;
use futures::StreamExt as _;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use url::Url;
use wxauth::oidc::{Alg, SigningKey};
use wxauth_bench::ceiling;
use wxauth_bench::load::{Outcome, Pool};
use wxauth_bench::report::Side;

use crate::fixture::{
    CALLBACK_HOST, OIDC_CLIENT, OIDC_EC_KEY_ID, OIDC_EC_KEY_PEM, OIDC_ES256_CLIENT, OIDC_KEY_ID, OIDC_KEY_PEM,
    OIDC_REDIRECT, OIDC_SECRET, PKCE_CHALLENGE, PKCE_VERIFIER, USERS, WECHAT_UA,
};
use crate::ops::OpFn;
use crate::phases::Bench;

/// What a code's 60 s keeps free beside the minting, the warm-up and the window.
const CODE_MARGIN: Duration = Duration::from_secs(5);
/// A code's life in the generated config (`oidc.code_ttl`).
const CODE_TTL: Duration = Duration::from_secs(60);
/// ID tokens signed alone to time `SigningKey::sign`.
const SIGNINGS: u32 = 300;

/// A relying party of the generated config and the key its ID tokens are signed with.
pub(crate) struct BenchRp {
    client: &'static str,
    alg: Alg,
    kid: &'static str,
    pem: &'static str,
    /// The phase's name and work in the report.
    phase: &'static str,
    work: &'static str,
    /// The ceiling that signs as this client's ID tokens are signed: its name, path and work.
    signed_ceiling: (&'static str, &'static str, &'static str),
}

/// `bench-rp`: RS256 (`oidc-token`).
pub(crate) const RS256_RP: BenchRp = BenchRp {
    client: OIDC_CLIENT,
    alg: Alg::Rs256,
    kid: OIDC_KEY_ID,
    pem: OIDC_KEY_PEM,
    phase: "OIDC token",
    work: "auth client, GET code, check PKCE, CAS used, SET access token, RS256 sign",
    signed_ceiling: ("axum GETDEL+JSON+RS256", ceiling::TOKEN_RS256_PATH, "GETDEL + RS256-signed ID token + JSON"),
};
/// `bench-rp-es256`: registered for ES256 (`oidc-token-es256`).
pub(crate) const ES256_RP: BenchRp = BenchRp {
    client: OIDC_ES256_CLIENT,
    alg: Alg::Es256,
    kid: OIDC_EC_KEY_ID,
    pem: OIDC_EC_KEY_PEM,
    phase: "OIDC token (ES256)",
    work: "auth client, GET code, check PKCE, CAS used, SET access token, ES256 sign",
    signed_ceiling: ("axum GETDEL+JSON+ES256", ceiling::TOKEN_ES256_PATH, "GETDEL + ES256-signed ID token + JSON"),
};

impl BenchRp {
    /// Its ID tokens' key.
    fn key(&self) -> anyhow::Result<SigningKey> {
        SigningKey::from_pem_for(self.alg, self.kid, self.pem).map_err(|e| anyhow!("the bench key: {e}"))
    }
}

impl Bench {
    /// The signing cost of `rp`'s algorithm alone, then the token endpoint on codes minted for
    /// `rp`, then its ceiling.
    pub(crate) async fn oidc_token_phases(&mut self, rp: &'static BenchRp) -> anyhow::Result<()> {
        let sign_us = tokio::task::spawn_blocking(|| time_signing(rp)).await.context("signing timer")??;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let alg = rp.alg.name();
        println!(
            "{}",
            serde_json::json!({"kind": "micro", "op": format!("{alg} sign"), "us_per_op": (sign_us * 10.0).round() / 10.0, "signings": SIGNINGS})
        );
        eprintln!("{alg} ID token signing alone (SigningKey::sign, one thread): {sign_us:.0} µs each");
        // No server can answer faster than its cores sign: that rate over the window, and a
        // half more (runs where signing went faster than timed ran out at 1.1), is enough.
        let want = (self.window() * cores as f64 * 1e6 / sign_us.max(1.0) * 1.5) as usize;
        let codes = self.mint_codes(rp, want.max(self.args.concurrency)).await;
        let mut codes = codes.into_iter();
        let first = codes.next().ok_or_else(|| anyhow!("no OIDC code could be minted"))?;
        self.check_one_token(rp, &first).await?;
        let url = format!("{}{}", self.wxauth_relay, wxauth::oidc::TOKEN_PATH);
        let op = token_op(self.http.clone(), url, rp.client, Arc::new(Pool::new(codes.collect())));
        self.phase(Side::Wxauth, rp.phase, rp.work, op).await;
        if let Some((clients, base, _)) = self.ceiling.clone() {
            let rps = self.rps(Side::Ceiling, "axum GETDEL").unwrap_or(40_000.0).max(1000.0);
            let ids = self.fill(clients.clone(), Vec::new(), (rps * self.window() * 1.5) as usize, "ceiling").await;
            let url = format!("{base}{}", ceiling::TOKEN_PATH);
            let op = token_op(self.http.clone(), url, rp.client, Arc::new(Pool::new(ids)));
            self.phase(Side::Ceiling, "axum GETDEL+JSON", "GETDEL + JSON answer of ~1 kB", op).await;
            // The same, signing an ID token as wxauth does for this client: fewer codes (it
            // answers at about the signing rate, as wxauth does).
            let ids = self.fill(clients, Vec::new(), want.max(self.args.concurrency), "signing ceiling").await;
            let (name, path, work) = rp.signed_ceiling;
            let op = token_op(self.http.clone(), format!("{base}{path}"), rp.client, Arc::new(Pool::new(ids)));
            self.phase(Side::Ceiling, name, work, op).await;
        }
        Ok(())
    }

    /// Up to `want` of the provider's codes, each from a whole sign-in (untimed), for as long
    /// as the first of them outlives the warm-up and the window.
    async fn mint_codes(&self, rp: &BenchRp, want: usize) -> Vec<String> {
        let window = self.args.warmup + self.args.duration;
        let budget = CODE_TTL.saturating_sub(window + CODE_MARGIN).max(Duration::from_secs(1));
        eprintln!("wxauth: minting up to {want} OIDC codes through whole sign-ins (untimed, at most {budget:?}) …");
        let started = Instant::now();
        let deadline = started + budget;
        let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..want)
            .map(|i| async move {
                if Instant::now() > deadline {
                    bail!("out of time");
                }
                self.sign_in(rp.client, i).await
            })
            .buffer_unordered(self.args.concurrency.max(1))
            .collect()
            .await;
        let mut codes = Vec::with_capacity(results.len());
        let mut failed = 0;
        for result in results {
            match result {
                Ok(code) => codes.push(code),
                Err(e) if e.to_string() == "out of time" => {}
                Err(e) => {
                    if failed == 0 {
                        eprintln!("warning: a sign-in failed: {e:#}");
                    }
                    failed += 1;
                }
            }
        }
        eprintln!("wxauth: {} codes minted in {:.1} s", codes.len(), started.elapsed().as_secs_f64());
        if codes.len() < want {
            eprintln!(
                "warning: {} of {want} codes minted ({failed} sign-ins failed); the window may run dry",
                codes.len()
            );
        }
        codes
    }

    /// One sign-in of the bench's relying party `client`, as WeChat's browser goes; the code it got.
    async fn sign_in(&self, client: &str, i: usize) -> anyhow::Result<String> {
        let redirect: String = url::form_urlencoded::byte_serialize(OIDC_REDIRECT.as_bytes()).collect();
        let query = format!(
            "client_id={client}&redirect_uri={redirect}&response_type=code&scope=openid%20profile\
             &state=rp-{i}&nonce=n-{i}&code_challenge={PKCE_CHALLENGE}&code_challenge_method=S256"
        );
        let authorize = format!("{}{}?{query}", self.wxauth_relay, wxauth::oidc::AUTHORIZE_PATH);
        let started = self.browse(&authorize, None).await?;
        let to_wechat = self.browse(&self.local(&location(&started)?), None).await?;
        let wechat_url = Url::parse(&location(&to_wechat)?).context("WeChat's authorize URL")?;
        let cookie = to_wechat.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).context("the flow's cookie")?;
        let cookie = cookie.split(';').next().unwrap_or_default().to_owned();
        // The simulator's consent page posts Allow with the link's parameters and the user.
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for name in ["appid", "redirect_uri", "scope", "state"] {
            let value = wechat_url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
            form.append_pair(name, &value.with_context(|| format!("{name} in WeChat's link"))?);
        }
        form.append_pair("decision", "allow").append_pair("user", USERS[i % USERS.len()]);
        let confirm = format!("{}/connect/oauth2/authorize/confirm", self.sim_base);
        let allowed = self.http.post(confirm).header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        let allowed = allowed.body(form.finish()).send().await.context("the simulator's consent")?;
        let relayed = self.browse(&self.local(&location(&allowed)?), Some(&cookie)).await?;
        let answered = self.browse(&self.local(&location(&relayed)?), None).await?;
        let back = Url::parse(&location(&answered)?).context("the redirect URI")?;
        let code = back.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned());
        code.with_context(|| format!("no code in {}", back.as_str().split('?').next().unwrap_or_default()))
    }

    /// A GET as WeChat's browser, with the flow's cookie when given.
    async fn browse(&self, url: &str, cookie: Option<&str>) -> anyhow::Result<reqwest::Response> {
        let mut request = self.http.get(url).header(USER_AGENT, WECHAT_UA);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.with_context(|| format!("GET {}", url.split('?').next().unwrap_or_default()))
    }

    /// A URL on the callback domain, on wxauth's public listener.
    fn local(&self, url: &str) -> String {
        url.replace(&format!("https://{CALLBACK_HOST}"), &self.wxauth_relay)
    }

    /// One token request before the window (untimed): 200, and an ID token the bench's key
    /// signed; prints the answer's size beside the ceiling's.
    async fn check_one_token(&self, rp: &BenchRp, code: &str) -> anyhow::Result<()> {
        let url = format!("{}{}", self.wxauth_relay, wxauth::oidc::TOKEN_PATH);
        let response = token_request(&self.http, &url, rp.client, code).send().await.context("the token endpoint")?;
        let status = response.status();
        let body = response.text().await.context("the token answer")?;
        if status != reqwest::StatusCode::OK {
            bail!("the token endpoint answered {status}: {body}");
        }
        let answer: serde_json::Value = serde_json::from_str(&body).context("the token answer's JSON")?;
        let key = rp.key()?;
        let id_token = answer["id_token"].as_str().unwrap_or_default();
        if key.verify(id_token).is_none() {
            bail!("the ID token does not verify under the bench's {} key", rp.alg.name());
        }
        eprintln!("wxauth's token answer: {} bytes (ID token {} characters)", body.len(), id_token.len());
        Ok(())
    }
}

/// The `Location` of a redirect.
fn location(response: &reqwest::Response) -> anyhow::Result<String> {
    if response.status() != reqwest::StatusCode::FOUND {
        bail!("{} answered {}, not a redirect", response.url().path(), response.status());
    }
    let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok());
    Ok(location.context("a redirect without Location")?.to_owned())
}

/// `client`'s token request of `code`: `client_secret_basic`, the redirect URI, the PKCE verifier.
fn token_request(http: &reqwest::Client, url: &str, client: &str, code: &str) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", OIDC_REDIRECT)
        .append_pair("code_verifier", PKCE_VERIFIER)
        .finish();
    http.post(url)
        .basic_auth(client, Some(OIDC_SECRET))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
}

/// A token request per code from the pool (each used once); 200 with its body read is the
/// expected answer. The same request goes to wxauth and to the ceiling.
fn token_op(http: reqwest::Client, url: String, client: &'static str, pool: Arc<Pool>) -> OpFn {
    Arc::new(move |_| {
        let Some(code) = pool.take() else { return async { Outcome::Exhausted }.boxed() };
        let request = token_request(&http, &url, client, code);
        async move {
            match request.send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => match response.bytes().await {
                    Ok(body) if !body.is_empty() => Outcome::Ok,
                    _ => Outcome::Error("http:body".into()),
                },
                Ok(response) => Outcome::Error(format!("http:{}", response.status().as_u16())),
                Err(_) => Outcome::Error("http:transport".into()),
            }
        }
        .boxed()
    })
}

/// µs per `SigningKey::sign` of an ID token's claims with `rp`'s key, on this thread.
fn time_signing(rp: &BenchRp) -> anyhow::Result<f64> {
    let key = rp.key()?;
    let claims = serde_json::json!({
        "iss": format!("https://{CALLBACK_HOST}"), "aud": rp.client, "azp": rp.client,
        "sub": "5f0c3b8d2a9e4f61b7c2d0e9a8f7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9",
        "iat": 1_780_000_000, "exp": 1_780_003_600, "auth_time": 1_780_000_000, "nonce": "n-1",
        "name": "alice", "picture": "https://thirdwx.qlogo.cn/mmopen/vi_32/bench/132",
    });
    key.sign(&claims).map_err(|_| anyhow!("signing failed"))?;
    let started = Instant::now();
    for _ in 0..SIGNINGS {
        key.sign(&claims).map_err(|_| anyhow!("signing failed"))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(SIGNINGS))
}
