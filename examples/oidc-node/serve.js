// The relying party of rp.js as a web application a browser signs in to: openid-client (an
// OpenID Certified RP library) does every check, this file only serves pages and keeps a
// session. Driven by tests/api/browser_oidc.rs through headless Chromium; run it by hand beside
// `cargo run` (docs/oidc.md "Configuration", its dev mode):
//
//   node serve.js http://127.0.0.1:8080 demo-oidc dev-only-oidc-secret http://127.0.0.1:8083/callback
//
// argv is ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI. It listens on the redirect URI's host and
// port (port 0: a free one, written into the redirect URI) and prints one JSON line
// {"listening", "redirect_uri"} once it accepts connections.
//
//   GET /         "Sign in with WeChat", or who is signed in
//   GET /login    discovery, PKCE (S256), state and nonce kept in the server-side session,
//                 then the browser is sent to the provider's authorization endpoint
//   GET <the redirect URI's path>
//                 the code grant: the library checks the state, the RFC 9207 `iss`, the ID
//                 token's signature (from the JWKS), issuer, audience, expiry and nonce; then
//                 userinfo; the claims are shown (HTML-escaped), or the library's error
//   GET /userinfo userinfo again with the session's access token (the provider may have
//                 revoked it)
//
// Secrets stay on the server: the client secret, the PKCE verifier and the tokens live in the
// session (a Map in memory); the browser holds only a random session id, in an HttpOnly,
// SameSite=Lax cookie.
import * as client from 'openid-client';
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';

const [issuer, clientId, clientSecret, redirectArg] = process.argv.slice(2);
if (!redirectArg) {
  console.error('usage: node serve.js ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI');
  process.exit(2);
}
const redirectUri = new URL(redirectArg);
const COOKIE = 'rp_session';
// A session lives an hour; a sign-in left at the provider's page is forgotten with it.
const SESSION_MS = 60 * 60 * 1000;
const sessions = new Map();

// Discovery once, on the first sign-in (the provider may start after this server).
let config;
async function discovered() {
  // The test's provider is plain http on loopback; everything else is as in production.
  const options = issuer.startsWith('http:') ? { execute: [client.allowInsecureRequests] } : undefined;
  config ??= await client.discovery(new URL(issuer), clientId, undefined, client.ClientSecretBasic(clientSecret), options);
  return config;
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, status, title, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head>` +
      `<body><h1 id="title">${escape(title)}</h1>${body}<p><a id="home" href="/">Home</a></p></body></html>`,
  );
}

// The library's error as the page shows it: its class and message, and the OAuth error code
// (from the authorization response, the token endpoint's body, or a WWW-Authenticate challenge).
function failed(res, error) {
  const code = error.error ?? error.cause?.[0]?.parameters?.error ?? error.code ?? '';
  const description = error.error_description ?? '';
  page(
    res,
    502,
    'Sign-in failed',
    `<p id="error">${escape(`${error.name}: ${error.message}`)}</p>` +
      `<p>error: <code id="error-code">${escape(code)}</code></p>` +
      `<p id="error-description">${escape(description)}</p>`,
  );
}

function session(req) {
  const pairs = (req.headers.cookie ?? '').split(';').map((p) => p.trim().split('='));
  const id = pairs.find(([k]) => k === COOKIE)?.[1];
  const found = id && sessions.get(id);
  return found && Date.now() - found.created < SESSION_MS ? found : undefined;
}

function newSession(res) {
  const now = Date.now();
  for (const [id, s] of sessions) {
    if (now - s.created >= SESSION_MS) sessions.delete(id);
  }
  const id = randomBytes(32).toString('base64url');
  const created = { created: now };
  sessions.set(id, created);
  const secure = redirectUri.protocol === 'https:' ? '; Secure' : '';
  res.setHeader('set-cookie', `${COOKIE}=${id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600${secure}`);
  return created;
}

function claimsList(claims) {
  const row = (name) =>
    claims[name] === undefined ? '' : `<dt>${name}</dt><dd id="${name}">${escape(claims[name])}</dd>`;
  return `<dl>${['sub', 'name', 'iss', 'aud'].map(row).join('')}</dl>`;
}

async function home(req, res) {
  const signedIn = session(req)?.claims;
  if (!signedIn) {
    page(res, 200, 'Example relying party', '<p><a id="sign-in" href="/login">Sign in with WeChat</a></p>');
    return;
  }
  page(res, 200, 'Signed in', claimsList(signedIn));
}

async function login(req, res) {
  const config = await discovered();
  const s = newSession(res);
  s.verifier = client.randomPKCECodeVerifier();
  s.state = client.randomState();
  s.nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri.href,
    scope: 'openid profile',
    code_challenge: await client.calculatePKCECodeChallenge(s.verifier),
    code_challenge_method: 'S256',
    state: s.state,
    nonce: s.nonce,
  });
  res.writeHead(302, { location: url.href });
  res.end();
}

async function callback(req, res) {
  const s = session(req);
  if (!s?.state) {
    page(res, 400, 'Sign-in failed', '<p id="error">No sign-in was started in this browser.</p>');
    return;
  }
  const config = await discovered();
  // As many relying parties do, the request's values stay in the session until the next
  // sign-in replaces them: a reload of this page sends the code again, and what refuses it is
  // the provider's single use (which also revokes the access token the first use got).
  const current = new URL(req.url, redirectUri);
  const tokens = await client.authorizationCodeGrant(config, current, {
    pkceCodeVerifier: s.verifier,
    expectedState: s.state,
    expectedNonce: s.nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  s.accessToken = tokens.access_token;
  s.claims = claims;
  page(
    res,
    200,
    'Signed in',
    `${claimsList(claims)}<h2>ID token claims (checked by openid-client)</h2>` +
      `<pre id="claims">${escape(JSON.stringify(claims, null, 2))}</pre>` +
      `<h2>userinfo</h2><pre id="userinfo">${escape(JSON.stringify(userinfo, null, 2))}</pre>`,
  );
}

async function userinfoAgain(req, res) {
  const s = session(req);
  if (!s?.accessToken) {
    page(res, 401, 'Not signed in', '<p id="error">Sign in first.</p>');
    return;
  }
  const userinfo = await client.fetchUserInfo(await discovered(), s.accessToken, s.claims.sub);
  page(res, 200, 'userinfo', `<pre id="userinfo">${escape(JSON.stringify(userinfo, null, 2))}</pre>`);
}

const routes = { '/': home, '/login': login, [redirectUri.pathname]: callback, '/userinfo': userinfoAgain };

const server = createServer(async (req, res) => {
  const route = req.method === 'GET' && routes[new URL(req.url, redirectUri).pathname];
  if (!route) {
    page(res, 404, 'Not found', '');
    return;
  }
  try {
    await route(req, res);
  } catch (error) {
    failed(res, error);
  }
});

server.on('error', (error) => {
  console.error(`cannot listen on ${redirectUri.host}: ${error.message}`);
  process.exit(1);
});
// This server speaks plain HTTP; an https redirect URI means a TLS proxy in front of it.
server.listen(Number(redirectUri.port || (redirectUri.protocol === 'https:' ? 443 : 80)), redirectUri.hostname, () => {
  redirectUri.port = String(server.address().port);
  console.log(JSON.stringify({ listening: `${redirectUri.protocol}//${redirectUri.host}/`, redirect_uri: redirectUri.href }));
});
