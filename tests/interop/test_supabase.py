"""Supabase connector: the forwarded access token, checked the way Supabase's own verifiers do.

PostgREST / GoTrue verify Supabase access tokens with the project's HS256 secret (no ``kid`` header:
PostgREST rejects a kid with a plain secret) or with the project's asymmetric signing key (ES256 /
RS256, ``kid`` header). Here PyJWT plays that verifier.
"""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import DEFAULT_UUID_NAMESPACE, b64url, unverified

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
USER = "U2aliceInterop000000000000001"
MAPPING = {"tenant": "dct", "app_metadata.roles": "roles"}


def supabase_uuid(user_id: str, ns: uuid.UUID = DEFAULT_UUID_NAMESPACE) -> str:
    return str(uuid.uuid5(ns, user_id))


def verify_hs256(token: str, secret: str = SECRET, audience: str = "authenticated") -> dict:
    return jwt.decode(token, secret, algorithms=["HS256"], audience=audience,
                      options={"require": ["exp", "iat", "sub"]})


@pytest.fixture(autouse=True)
def _need_supabase(require_connector):
    require_connector("supabase")


def test_contract_uuid_namespace_facts():
    # The documented default namespace and example (docs/connectors-contract.md), recomputed.
    assert uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/extoken/extoken#descope-user-id") \
        == DEFAULT_UUID_NAMESPACE
    assert supabase_uuid("U2abc") == "5ebbcd88-335b-56ac-9945-d9b850058277"


def test_hs256_token_verifies_and_has_supabase_claims(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "claims": MAPPING}})
    session = descope.mint(USER, email="alice@example.com", phone="+15555550100",
                           dct="T1", roles=["admin", "viewer"])
    tok = g.forward(session, backend).token
    assert tok != session, "the Descope session itself was forwarded"

    header = jwt.get_unverified_header(tok)
    assert header["alg"] == "HS256"
    assert "kid" not in header, f"HS256 header must carry no kid (PostgREST rejects it): {header}"
    assert header.get("typ", "JWT") == "JWT"

    claims = verify_hs256(tok)
    now = time.time()
    assert claims["sub"] == supabase_uuid(USER)
    assert claims["descope_user_id"] == USER
    assert claims["role"] == "authenticated"
    assert claims["aud"] == "authenticated"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - now) < 120
    assert claims["email"] == "alice@example.com"
    assert claims["phone"] == "+15555550100"
    assert claims["tenant"] == "T1"
    assert claims["app_metadata"] == {"roles": ["admin", "viewer"]}
    assert "iss" not in claims, "iss is optional and was not configured"
    # Nothing of the Descope session leaks through besides what the contract lists.
    expected = {"sub", "descope_user_id", "role", "aud", "iat", "exp", "email", "phone",
                "tenant", "app_metadata"}
    assert set(claims) == expected, f"unexpected claims: {sorted(set(claims) ^ expected)}"


def test_hs256_without_email_phone_or_mapped_claims(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "claims": MAPPING}})
    tok = g.forward(descope.mint("U2plainUser"), backend).token
    claims = verify_hs256(tok)
    assert claims["sub"] == supabase_uuid("U2plainUser")
    for absent in ("email", "phone", "tenant", "app_metadata"):
        assert absent not in claims, f"{absent} present although the session has none: {claims}"


def test_hs256_options_issuer_role_audience_expiry_namespace(gateway, backend, descope):
    ns = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")
    g = gateway({"sb": {
        "type": "supabase", "jwt_secret": SECRET,
        "issuer": "https://abcdefghijklmnop.supabase.co/auth/v1",
        "role": "service_reader", "allowed_roles": ["service_reader"],
        "audience": "my-aud", "expires_in": "15m",
        "uuid_namespace": str(ns),
    }})
    tok = g.forward(descope.mint(USER), backend).token
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"], audience="my-aud",
                        issuer="https://abcdefghijklmnop.supabase.co/auth/v1")
    assert claims["role"] == "service_reader"
    assert claims["exp"] - claims["iat"] == 900
    assert claims["sub"] == supabase_uuid(USER, ns)
    assert claims["descope_user_id"] == USER


def test_dotted_targets_merge_into_one_object(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "claims": {
        "app_metadata.roles": "roles", "app_metadata.tenant": "dct",
        "user_metadata.plan": "billing.plan"}}})
    tok = g.forward(descope.mint(USER, roles=["admin"], dct="T9", billing={"plan": "pro"}),
                    backend).token
    claims = verify_hs256(tok)
    assert claims["app_metadata"] == {"roles": ["admin"], "tenant": "T9"}
    assert claims["user_metadata"] == {"plan": "pro"}


def test_user_id_is_dsub_when_present(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET}})
    tok = g.forward(descope.mint("templated-subject", dsub=USER), backend).token
    claims = verify_hs256(tok)
    assert claims["sub"] == supabase_uuid(USER)
    assert claims["descope_user_id"] == USER


def test_sub_mode_descope(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "sub_mode": "descope"}})
    tok = g.forward(descope.mint(USER), backend).token
    claims = verify_hs256(tok)
    assert claims["sub"] == USER


def test_hs256_wrong_secret_and_tampering_are_rejected(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET}})
    tok = g.forward(descope.mint(USER), backend).token
    verify_hs256(tok)  # sanity: the right secret works
    with pytest.raises(jwt.InvalidSignatureError):
        verify_hs256(tok, secret="another-secret-another-secret-another-secret")
    h, p, s = tok.split(".")
    payload = json.loads(jwt.utils.base64url_decode(p))
    payload["role"] = "service_role"
    forged = ".".join([h, b64url(json.dumps(payload).encode()), s])
    with pytest.raises(jwt.InvalidSignatureError):
        verify_hs256(forged)
    with pytest.raises(jwt.InvalidAudienceError):
        verify_hs256(tok, audience="anon")


# --------------------------------------------------------------------------- asymmetric keys

def ec_jwk(kid: str) -> tuple[dict, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    n = key.private_numbers()
    pub = n.public_numbers
    jwk = {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": b64url(pub.x.to_bytes(32, "big")), "y": b64url(pub.y.to_bytes(32, "big")),
           "d": b64url(n.private_value.to_bytes(32, "big"))}
    return jwk, key


def test_es256_jwk_signing_key(gateway, backend, descope, tmp_path):
    # The shape of a Supabase asymmetric signing key export: a private JWK with kid.
    kid = str(uuid.uuid4())
    jwk, key = ec_jwk(kid)
    path = tmp_path / "supabase-es256.json"
    path.write_text(json.dumps(jwk))
    g = gateway({"sb": {"type": "supabase", "signing_key": str(path), "claims": MAPPING}})
    tok = g.forward(descope.mint(USER, dct="T1", roles=["admin"]), backend).token

    header = jwt.get_unverified_header(tok)
    assert header["alg"] == "ES256"
    assert header.get("kid") == kid
    claims = jwt.decode(tok, key.public_key(), algorithms=["ES256"], audience="authenticated")
    assert claims["sub"] == supabase_uuid(USER)
    assert claims["app_metadata"] == {"roles": ["admin"]}
    # The public half as Supabase publishes it (JWKS) also verifies it.
    public = {k: v for k, v in jwk.items() if k != "d"}
    jwt.decode(tok, jwt.PyJWK(public).key, algorithms=["ES256"], audience="authenticated")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tok, ec.generate_private_key(ec.SECP256R1()).public_key(),
                   algorithms=["ES256"], audience="authenticated")


def test_supabase_cli_signing_key_formats(gateway, backend, descope, tmp_path):
    """`supabase gen signing-key` writes a private JWK with key_ops/ext members besides kid/alg."""
    kid = str(uuid.uuid4())
    jwk, key = ec_jwk(kid)
    jwk.update({"key_ops": ["sign", "verify"], "ext": True})
    single = tmp_path / "signing_key.json"
    single.write_text(json.dumps(jwk))
    g = gateway({"sb": {"type": "supabase", "signing_key": str(single)}})
    tok = g.forward(descope.mint(USER), backend).token
    assert jwt.get_unverified_header(tok).get("kid") == kid
    jwt.decode(tok, key.public_key(), algorithms=["ES256"], audience="authenticated")


def rsa_jwk(kid: str) -> tuple[dict, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = key.private_numbers()

    def enc(i: int) -> str:
        return b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))

    jwk = {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
           "n": enc(n.public_numbers.n), "e": enc(n.public_numbers.e), "d": enc(n.d),
           "p": enc(n.p), "q": enc(n.q), "dp": enc(n.dmp1), "dq": enc(n.dmq1), "qi": enc(n.iqmp)}
    return jwk, key


def test_rs256_jwk_signing_key(gateway, backend, descope, tmp_path):
    jwk, key = rsa_jwk("rsa-key-1")
    path = tmp_path / "supabase-rs256.json"
    path.write_text(json.dumps(jwk))
    g = gateway({"sb": {"type": "supabase", "signing_key": str(path)}})
    tok = g.forward(descope.mint(USER), backend).token
    header = jwt.get_unverified_header(tok)
    assert header["alg"] == "RS256" and header.get("kid") == "rsa-key-1"
    jwt.decode(tok, key.public_key(), algorithms=["RS256"], audience="authenticated")


PEM_FORMATS = {
    "pkcs8": serialization.PrivateFormat.PKCS8,
    # `openssl ecparam -genkey` (SEC1 "EC PRIVATE KEY") / `openssl genrsa` ("RSA PRIVATE KEY")
    "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
}


@pytest.mark.parametrize("fmt", sorted(PEM_FORMATS))
@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_pem_signing_key_with_configured_kid(gateway, backend, descope, tmp_path, alg, fmt):
    key = (ec.generate_private_key(ec.SECP256R1()) if alg == "ES256"
           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    path = tmp_path / f"supabase-{alg}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, PEM_FORMATS[fmt],
                                       serialization.NoEncryption()))
    g = gateway({"sb": {"type": "supabase", "signing_key": str(path), "kid": "pem-key-1"}})
    tok = g.forward(descope.mint(USER), backend).token
    header = jwt.get_unverified_header(tok)
    assert header["alg"] == alg
    assert header.get("kid") == "pem-key-1"
    claims = jwt.decode(tok, key.public_key(), algorithms=[alg], audience="authenticated")
    assert claims["sub"] == supabase_uuid(USER)


def test_refreshed_session_reuses_token_changed_claims_do_not(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "claims": MAPPING}})
    t1 = g.forward(descope.mint(USER, roles=["viewer"]), backend).token
    time.sleep(1.1)  # a refreshed session: new iat/exp, same identity and claims
    t2 = g.forward(descope.mint(USER, roles=["viewer"]), backend).token
    assert t1 == t2, "an unchanged identity should reuse the cached external token"
    t3 = g.forward(descope.mint(USER, roles=["admin"]), backend).token
    assert t3 != t1
    assert verify_hs256(t3)["app_metadata"] == {"roles": ["admin"]}
    h, p = unverified(t3)
    assert h["alg"] == "HS256" and p["descope_user_id"] == USER


def test_a_mapped_role_outside_allowed_roles_is_403_and_never_minted(gateway, backend, descope):
    """`claims: {role: app_role}` must not let a session mint PostgREST's superuser roles."""
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "claims": {"role": "app_role"}}})
    for role in ["service_role", "supabase_admin"]:
        fwd = g.forward(descope.mint(USER, app_role=role), backend)
        assert fwd.status == 403, fwd.body
        assert fwd.record is None, "a forbidden request reached the backend"
        assert fwd.resp_headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    ok = verify_hs256(g.forward(descope.mint(USER, app_role="anon"), backend).token)
    assert ok["role"] == "anon"
