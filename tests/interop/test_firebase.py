"""Firebase connector: custom tokens compared with firebase-admin's, ID tokens from the real emulator.

The service account is generated at test time (an RSA key and a fake ``client_email``), so nothing
here talks to Google: ``firebase_admin`` signs custom tokens locally with it, and ``mode: id_token``
runs against the Firebase Auth emulator that ``run.sh`` starts (``INTEROP_FIREBASE_AUTH_PORT``).
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request

import firebase_admin
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import auth, credentials, tenant_mgt

from conftest import FIREBASE_CUSTOM_TOKEN_AUD, unverified

PROJECT = "demo-extoken"
USER = "U2aliceFirebase00000000000001"
EMU_PORT = os.environ.get("INTEROP_FIREBASE_AUTH_PORT")
IGNORED_TIMES = ("iat", "exp")


@pytest.fixture(autouse=True)
def _need_firebase(require_connector):
    require_connector("firebase")


@pytest.fixture(scope="module")
def service_account(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = f"firebase-adminsdk-interop@{PROJECT}.iam.gserviceaccount.com"
    sa = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }
    path = tmp_path_factory.mktemp("firebase") / "firebase-sa.json"
    path.write_text(json.dumps(sa, indent=2))
    return {"dict": sa, "path": path, "public_key": key.public_key()}


@pytest.fixture(scope="module")
def reference_app(service_account):
    """firebase_admin, offline, signing with the same service account (no emulator)."""
    os.environ.pop("FIREBASE_AUTH_EMULATOR_HOST", None)
    app = firebase_admin.initialize_app(credentials.Certificate(service_account["dict"]),
                                        {"projectId": PROJECT}, name="interop-reference")
    yield app
    firebase_admin.delete_app(app)


def reference_token(app, uid, claims=None, tenant_id=None) -> str:
    assert "FIREBASE_AUTH_EMULATOR_HOST" not in os.environ  # else firebase_admin signs with alg none
    if tenant_id:
        tok = tenant_mgt.auth_for_tenant(tenant_id, app=app).create_custom_token(uid, claims)
    else:
        tok = auth.create_custom_token(uid, claims, app=app)
    return tok.decode() if isinstance(tok, bytes) else tok


def assert_same_custom_token(got: str, expected: str):
    gh, gp = unverified(got)
    eh, ep = unverified(expected)
    assert gh == eh, f"header: expected {eh}, got {gh}"
    assert set(gp) == set(ep), (
        f"claim names: missing {sorted(set(ep) - set(gp))}, extra {sorted(set(gp) - set(ep))}")
    for k in ep:
        if k not in IGNORED_TIMES:
            assert gp[k] == ep[k], f"claim {k}: expected {ep[k]!r}, got {gp[k]!r}"
    assert ep["exp"] - ep["iat"] == 3600
    assert gp["exp"] - gp["iat"] == 3600, f"exp-iat: expected 3600, got {gp['exp'] - gp['iat']}"


def verify_custom_token(token: str, sa: dict, public_key) -> dict:
    return jwt.decode(token, public_key, algorithms=["RS256"], audience=FIREBASE_CUSTOM_TOKEN_AUD,
                      issuer=sa["client_email"], options={"require": ["iat", "exp", "sub"]})


def test_custom_token_matches_firebase_admin(gateway, backend, descope, service_account,
                                              reference_app):
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"]),
                        "claims": {"roles": "roles", "tenant": "dct"}}})
    got = g.forward(descope.mint(USER, dct="T1", roles=["admin", "viewer"]), backend).token
    expected = reference_token(reference_app, USER, {"roles": ["admin", "viewer"], "tenant": "T1"})
    assert_same_custom_token(got, expected)

    claims = verify_custom_token(got, service_account["dict"], service_account["public_key"])
    assert claims["sub"] == service_account["dict"]["client_email"]
    assert claims["uid"] == USER
    assert claims["claims"] == {"roles": ["admin", "viewer"], "tenant": "T1"}


def test_custom_token_without_mapped_claims_has_no_claims_key(gateway, backend, descope,
                                                              service_account, reference_app):
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"]),
                        "claims": {"roles": "roles"}}})
    got = g.forward(descope.mint(USER), backend).token
    assert_same_custom_token(got, reference_token(reference_app, USER))


def test_custom_token_with_tenant_id(gateway, backend, descope, service_account, reference_app):
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"]),
                        "tenant_id": "tenant-a1b2c", "claims": {"roles": "roles"}}})
    got = g.forward(descope.mint(USER, roles=["admin"]), backend).token
    expected = reference_token(reference_app, USER, {"roles": ["admin"]}, tenant_id="tenant-a1b2c")
    assert_same_custom_token(got, expected)


def test_custom_token_uid_is_dsub(gateway, backend, descope, service_account, reference_app):
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"])}})
    got = g.forward(descope.mint("templated-subject", dsub=USER), backend).token
    assert_same_custom_token(got, reference_token(reference_app, USER))


def test_service_account_json_from_env(gateway, backend, descope, service_account, reference_app):
    g = gateway({"fb": {"type": "firebase", "service_account_json": "${INTEROP_FIREBASE_SA_JSON}"}},
                env={"INTEROP_FIREBASE_SA_JSON": json.dumps(service_account["dict"])})
    got = g.forward(descope.mint(USER), backend).token
    assert_same_custom_token(got, reference_token(reference_app, USER))
    verify_custom_token(got, service_account["dict"], service_account["public_key"])


def test_custom_token_wrong_key_and_tampering_fail(gateway, backend, descope, service_account):
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"])}})
    got = g.forward(descope.mint(USER), backend).token
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        verify_custom_token(got, service_account["dict"], other)
    h, p, s = got.split(".")
    forged_payload = jwt.utils.base64url_encode(json.dumps(
        {**unverified(got)[1], "uid": "someone-else"}).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify_custom_token(f"{h}.{forged_payload}.{s}", service_account["dict"],
                            service_account["public_key"])


RESERVED = ["acr", "amr", "at_hash", "aud", "auth_time", "azp", "cnf", "c_hash", "exp", "firebase",
            "iat", "iss", "jti", "nbf", "nonce", "sub"]


def test_firebase_admin_refuses_reserved_claims(reference_app):
    # What the gateway must not produce either (see the next test).
    for name in ("firebase", "sub"):
        with pytest.raises(ValueError):
            reference_token(reference_app, USER, {name: "x"})


@pytest.mark.parametrize("name", ["firebase", "sub", "aud"])
def test_gateway_never_emits_reserved_developer_claims(gateway, backend, descope, service_account,
                                                       tmp_path, name):
    """firebase_admin raises ValueError for these; Firebase refuses such a token. The gateway must
    refuse the mapping (at start / in `extoken check`) or at least not forward such a token."""
    import subprocess
    from conftest import EXTOKEN_BIN, PROJECT_ID
    cfg = {"descope": {"project_id": PROJECT_ID, "jwks_file": str(descope.jwks_file)},
           "connectors": {"fb": {"type": "firebase",
                                 "service_account_file": str(service_account["path"]),
                                 "claims": {name: "roles"}}},
           "routes": [{"upstream": backend.url, "connector": "fb"}]}
    path = tmp_path / "check.yaml"
    path.write_text(json.dumps(cfg))
    chk = subprocess.run([str(EXTOKEN_BIN), "check", "--config", str(path)], capture_output=True,
                         text=True, timeout=60)
    if chk.returncode != 0:
        assert "claims" in chk.stderr + chk.stdout, f"rejected without naming the key: {chk.stderr}"
        return
    g = gateway(cfg["connectors"])
    f = g.forward(descope.mint(USER, roles=["admin"]), backend)
    if f.status == 200 and f.record is not None:
        inner = unverified(f.token)[1].get("claims", {})
        assert name not in inner, (
            f"forwarded a custom token with reserved claim {name!r} inside 'claims' "
            f"(firebase_admin.create_custom_token raises ValueError for it; extoken check accepted "
            f"the mapping)")


def test_uid_longer_than_128_is_not_forwarded(gateway, backend, descope, service_account,
                                              reference_app):
    long_uid = "U2" + "x" * 127  # 129 characters
    with pytest.raises(ValueError):
        reference_token(reference_app, long_uid)
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"])}})
    f = g.forward(descope.mint(long_uid), backend)
    if f.record is not None:
        uid = unverified(f.token)[1].get("uid", "")
        assert len(uid) <= 128, (
            f"forwarded a custom token with a {len(uid)}-character uid (Firebase allows 1-128; "
            f"firebase_admin.create_custom_token raises ValueError); got HTTP {f.status}")


# --------------------------------------------------------------------------- mode: id_token

@pytest.fixture
def emulator_url():
    if not EMU_PORT:
        pytest.skip("INTEROP_FIREBASE_AUTH_PORT not set: run tests/interop/run.sh "
                    "(it starts the Firebase Auth emulator)")
    return f"http://127.0.0.1:{EMU_PORT}/identitytoolkit.googleapis.com"


@pytest.fixture
def emulator_app(service_account, monkeypatch, emulator_url):
    """firebase_admin in emulator mode: verify_id_token accepts the emulator's ID tokens."""
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", f"127.0.0.1:{EMU_PORT}")
    app = firebase_admin.initialize_app(credentials.Certificate(service_account["dict"]),
                                        {"projectId": PROJECT}, name=f"interop-emu-{secrets.token_hex(4)}")
    yield app
    firebase_admin.delete_app(app)


def emulator_sign_in(emulator_url: str, custom_token: str) -> dict:
    req = urllib.request.Request(
        f"{emulator_url}/v1/accounts:signInWithCustomToken?key=any",
        data=json.dumps({"token": custom_token, "returnSecureToken": True}).encode(),
        headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_id_token_mode_against_auth_emulator(gateway, backend, descope, service_account,
                                             reference_app, emulator_url, emulator_app):
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"]),
                        "mode": "id_token", "api_key": "any-key",
                        "identity_toolkit_url": emulator_url,
                        "claims": {"roles": "roles", "tenant": "dct"}}})
    id_token = g.forward(descope.mint(USER, dct="T1", roles=["admin"]), backend).token

    decoded = auth.verify_id_token(id_token, app=emulator_app)
    assert decoded["uid"] == USER
    assert decoded["sub"] == USER
    assert decoded["aud"] == PROJECT
    assert decoded["iss"] == f"https://securetoken.google.com/{PROJECT}"
    assert decoded["roles"] == ["admin"]
    assert decoded["tenant"] == "T1"
    assert decoded["firebase"]["sign_in_provider"] == "custom"

    # The same user signed in through firebase_admin's own custom token gives the same identity.
    os.environ.pop("FIREBASE_AUTH_EMULATOR_HOST")
    try:
        ref_custom = reference_token(reference_app, USER, {"roles": ["admin"], "tenant": "T1"})
    finally:
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = f"127.0.0.1:{EMU_PORT}"
    ref = auth.verify_id_token(emulator_sign_in(emulator_url, ref_custom)["idToken"], app=emulator_app)
    for k in ("uid", "sub", "aud", "iss", "roles", "tenant"):
        assert decoded[k] == ref[k], f"{k}: firebase-admin path gives {ref[k]!r}, gateway {decoded[k]!r}"
    assert decoded["firebase"]["sign_in_provider"] == ref["firebase"]["sign_in_provider"]


def test_id_token_mode_with_tenant(gateway, backend, descope, service_account, emulator_url,
                                   emulator_app):
    """Identity Platform multi-tenancy: a tenant's ID token carries firebase.tenant, and a
    tenant-aware backend (auth_for_tenant(t).verify_id_token) accepts only that. The Firebase
    client SDKs send the tenant as `tenantId` in signInWithCustomToken's body."""
    # Created through the emulator's REST API (tenant_mgt would fetch an OAuth token from Google).
    req = urllib.request.Request(
        f"{emulator_url}/v2/projects/{PROJECT}/tenants",
        data=json.dumps({"displayName": "interop"}).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer owner"},
        method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        tenant_id = json.load(r)["tenantId"]
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"]),
                        "mode": "id_token", "api_key": "any-key", "tenant_id": tenant_id,
                        "identity_toolkit_url": emulator_url, "claims": {"roles": "roles"}}})
    f = g.forward(descope.mint(USER, roles=["admin"]), backend)
    assert f.status == 200, (
        f"gateway answered {f.status} for a tenant sign-in: {f.body[:200]!r}")
    decoded = auth.verify_id_token(f.token, app=emulator_app)
    assert decoded["uid"] == USER
    assert decoded["firebase"].get("tenant") == tenant_id, (
        f"firebase.tenant: expected {tenant_id!r}, got {decoded['firebase'].get('tenant')!r} "
        "(signInWithCustomToken was not made for the tenant: body lacks tenantId)")
    tenant_client = tenant_mgt.auth_for_tenant(tenant_id, app=emulator_app)
    assert tenant_client.verify_id_token(f.token)["roles"] == ["admin"]


def test_id_token_is_cached_per_identity(gateway, backend, descope, service_account,
                                         emulator_url, emulator_app):
    g = gateway({"fb": {"type": "firebase", "service_account_file": str(service_account["path"]),
                        "mode": "id_token", "api_key": "any-key",
                        "identity_toolkit_url": emulator_url, "claims": {"roles": "roles"}}})
    first = g.forward(descope.mint(USER, roles=["viewer"]), backend).token
    again = g.forward(descope.mint(USER, roles=["viewer"]), backend).token
    assert first == again, "a refreshed session with the same identity should reuse the ID token"
    other = g.forward(descope.mint("U2bobFirebase", roles=["viewer"]), backend).token
    assert auth.verify_id_token(other, app=emulator_app)["uid"] == "U2bobFirebase"


def test_id_token_mode_exchange_failure_is_503(gateway, backend, descope, service_account,
                                               emulator_url):
    # The emulator answers 404 at a wrong base path: per the contract a non-2xx from the token
    # endpoint is a 503 with Retry-After naming the connector, and the request is not forwarded.
    g = gateway({"fb-emu": {"type": "firebase", "service_account_file": str(service_account["path"]),
                            "mode": "id_token", "api_key": "any-key",
                            "identity_toolkit_url": emulator_url.replace("identitytoolkit", "nope")}})
    f = g.forward(descope.mint(USER), backend)
    assert f.record is None, "request was forwarded although the exchange failed"
    assert f.status == 503, f"expected 503, got {f.status}: {f.body[:200]!r}"
    assert "retry-after" in f.resp_headers
    assert b"fb-emu" in f.body
