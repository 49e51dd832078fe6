"""An OpenID Connect relying party that nobody at wxauth wrote: Authlib (its OAuth 2.0 client,
``OAuth2Session``, and its OpenID Connect ID-token claims) with joserfc for the signature, signing
a user in through wxauth's OpenID Provider exactly as a Python application would: discovery, PKCE
(S256), state and nonce, the code grant, the ID token's signature against the JWKS and its
issuer, audience, expiry and nonce, then userinfo.

The ID-token steps are the ones Authlib's own framework clients take (``parse_id_token`` in
``authlib.integrations.base_client``): joserfc verifies the signature with a key from the JWKS
under the algorithms discovery names, and Authlib's ``CodeIDToken`` checks the claims. Authlib
leaves the audience to the caller's options, so this RP names it, as an application should.

Driven by tests/api/oidc_rp.rs like examples/oidc-node/rp.js: argv is ISSUER CLIENT_ID
CLIENT_SECRET REDIRECT_URI [ALG]; ALG is the client's registered id_token_signed_response_alg
(e.g. ES256), the only algorithm the signature may then have (without it, those discovery
names). It prints one JSON line {"authorize_url"} (where the application sends the browser),
reads one line from stdin (the URL the browser came back to), and prints one JSON line
{"claims", "userinfo", "header"} (the ID token's JOSE header) or {"error"}.
"""

import json
import sys
from urllib.parse import parse_qs, urlsplit

from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry


class Refused(Exception):
    """A check this RP makes itself, beside the libraries' own."""


def sign_in(issuer, client_id, client_secret, redirect_uri, alg=None):
    # The test's provider is plain http on loopback, which Authlib accepts as it stands (RFC 8252
    # §7.3's loopback exemption, in authlib.common.security.is_secure_transport); anything else
    # must be https, so no AUTHLIB_INSECURE_TRANSPORT here.
    session = OAuth2Session(
        client_id,
        client_secret,
        scope="openid profile",
        redirect_uri=redirect_uri,
        token_endpoint_auth_method="client_secret_basic",
        code_challenge_method="S256",
    )
    # Discovery (OpenID Connect Discovery 1.0 §4): the issuer it names must be the one asked.
    # (withhold_token: these public documents are fetched without a bearer token.)
    metadata = session.get(f"{issuer}/.well-known/openid-configuration", withhold_token=True).json()
    if metadata.get("issuer") != issuer:
        raise Refused(f"discovery names issuer {metadata.get('issuer')!r}, not {issuer!r}")
    if "S256" not in metadata.get("code_challenge_methods_supported", []):
        raise Refused("the provider does not offer PKCE S256")

    verifier = generate_token(64)
    nonce = generate_token(32)
    url, state = session.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    print(json.dumps({"authorize_url": url}), flush=True)
    back = sys.stdin.readline().strip()

    # RFC 9207: a provider that says it sends `iss` in the authorization response is checked.
    returned_iss = parse_qs(urlsplit(back).query).get("iss")
    if metadata.get("authorization_response_iss_parameter_supported") and returned_iss != [issuer]:
        raise Refused(f"authorization response iss {returned_iss!r}")
    # Authlib checks `state` (MismatchingStateException) and sends the PKCE verifier.
    token = session.fetch_token(
        metadata["token_endpoint"], authorization_response=back, state=state, code_verifier=verifier
    )

    jwks = KeySet.import_key_set(session.get(metadata["jwks_uri"], withhold_token=True).json())
    # The client's registered algorithm when it has one (OpenID Connect Core §3.1.3.7 step 7),
    # else those the provider names.
    algorithms = [alg] if alg else metadata.get("id_token_signing_alg_values_supported", ["RS256"])
    decoded = jwt.decode(token["id_token"], jwks, registry=JWSRegistry(algorithms=algorithms))
    claims = CodeIDToken(
        decoded.claims,
        decoded.header,
        {
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": client_id},
            "nonce": {"essential": True, "value": nonce},
        },
        {"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]},
    )
    claims.validate(leeway=60)  # exp, iat, nbf, iss, aud, nonce, azp, at_hash

    userinfo = session.get(metadata["userinfo_endpoint"]).json()
    # OpenID Connect Core 1.0 §5.3.2: the userinfo `sub` MUST equal the ID token's.
    if userinfo.get("sub") != claims["sub"]:
        raise Refused("userinfo is about another subject")
    return {"claims": dict(claims), "userinfo": userinfo, "header": dict(decoded.header)}


def main():
    issuer, client_id, client_secret, redirect_uri = sys.argv[1:5]
    alg = sys.argv[5] if len(sys.argv) > 5 else None
    try:
        result = sign_in(issuer, client_id, client_secret, redirect_uri, alg)
    except Exception as error:  # every refusal is the report, as rp.js does
        result = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
