// An OpenID Connect relying party that nobody at wxauth wrote: openid-client (an OpenID
// Certified RP library), signing a user in through wxauth's OpenID Provider exactly as an
// application would: discovery, PKCE (S256), state and nonce, the code grant with the ID token's
// signature, issuer, audience, expiry and nonce checked by the library, then userinfo.
//
// Driven by tests/api/oidc_rp.rs: argv is ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI [ALG]. ALG
// is the client's registered id_token_signed_response_alg (e.g. ES256): openid-client then
// accepts ID tokens of that algorithm only (without it, any the discovery document lists). It
// prints one JSON line {"authorize_url"} (where the application sends the browser), reads one
// line from stdin (the URL the browser came back to), and prints one JSON line {"claims",
// "userinfo", "header"} (the ID token's JOSE header) or {"error"}.
import * as client from 'openid-client';
import { createInterface } from 'node:readline';

const [issuer, clientId, clientSecret, redirectUri, alg] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

try {
  // openid-client checks the ID token's signature only when asked: OpenID Connect Core
  // §3.1.3.7 lets a client that got the token straight from the token endpoint over TLS rely on
  // TLS instead, and the library does so by default. This RP asks for the library's own check
  // (against the JWKS discovery names): tests/api/oidc_rp_forged.rs shows a token with an
  // altered signature accepted without it.
  // The test's provider is plain http on loopback; everything else is as in production.
  const execute = [client.enableNonRepudiationChecks];
  if (issuer.startsWith('http:')) execute.push(client.allowInsecureRequests);
  const options = { execute };
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    alg ? { id_token_signed_response_alg: alg } : undefined,
    client.ClientSecretBasic(clientSecret),
    options,
  );
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid profile',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  });
  console.log(JSON.stringify({ authorize_url: url.href }));
  const back = (await lines.next()).value;
  const tokens = await client.authorizationCodeGrant(config, new URL(back), {
    pkceCodeVerifier: verifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  const header = JSON.parse(Buffer.from(tokens.id_token.split('.')[0], 'base64url').toString());
  console.log(JSON.stringify({ claims, userinfo, header }));
} catch (error) {
  // The cause, when the library gives one, says which check refused (a signature, an alg).
  const cause = error.cause instanceof Error ? ` (${error.cause.name}: ${error.cause.message})` : '';
  console.log(JSON.stringify({ error: `${error.name}: ${error.message} ${error.code ?? ''}${cause}` }));
}
process.exit(0);
