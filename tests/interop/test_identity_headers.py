"""Identity headers (``routes[].identity_headers``) and their signed assertion
(``identity_headers_signed_by``), checked the way a legacy backend would: the headers it receives
come from the verified session (spoofed copies never arrive), and the JWS in
``X-Extoken-Identity`` verifies with PyJWT against the key the gateway publishes on its admin
listener, stating exactly the header values received.
"""

from __future__ import annotations

import json
import time
import urllib.request

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

USER = "U2identityUser000000000001"
ISSUER = "https://gateway.interop.test"
HEADERS = {"X-User-Id": "sub", "X-Tenant-Id": "dct", "X-User-Roles": "roles",
           "X-User-Email": "email"}
SPOOFS = {"X-User-Id": "U2forged", "x_user_id": "U2forged", "X-User_Roles": "admin",
          "X-Extoken-Identity": "forged.jws.value", "x_extoken_identity": "forged"}


@pytest.fixture(autouse=True)
def _need_jwt(require_connector):
    require_connector("jwt")


def new_key(alg: str):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def start(gateway, tmp_path, alg: str, key, **top):
    pem = tmp_path / "identity.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    connectors = {
        "ext": {"type": "claim"},
        "idsig": {"type": "jwt", "algorithm": alg, "key_file": str(pem), "issuer": ISSUER},
    }
    route = {"identity_headers": HEADERS, "identity_headers_signed_by": "idsig"}
    return gateway(connectors, connector="ext", route=route, **top)


def served_key(g, kid: str):
    url = f"http://127.0.0.1:{g.admin_port}/.well-known/jwks.json"
    with urllib.request.urlopen(url, timeout=10) as resp:
        jwks = json.loads(resp.read())
    for k in jwks["keys"]:
        if k.get("kid") == kid:
            return jwt.PyJWK(k)
    pytest.fail(f"kid {kid!r} not served: {jwks}")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_assertion_verifies_and_states_the_received_headers(gateway, backend, descope, tmp_path,
                                                            alg):
    key = new_key(alg)
    g = start(gateway, tmp_path, alg, key)
    session = descope.mint(USER, externalToken="ext-1", dct="T1", roles=["admin", "billing"],
                           email="zoë@example.com")
    fwd = g.forward(session, backend, path="/api", headers=SPOOFS)
    assert fwd.token == "ext-1"
    got = fwd.record["headers"]
    assert got["x-user-id"] == USER
    assert got["x-tenant-id"] == "T1"
    assert got["x-user-roles"] == "admin,billing"
    assert got["x-user-email"] == "zo%C3%AB@example.com"
    names = [n for n, _ in fwd.record["all_headers"]]
    for spoofed in ("x_user_id", "x-user_roles", "x_extoken_identity"):
        assert spoofed not in names, f"{spoofed} reached the backend"
    assert names.count("x-user-id") == 1 and names.count("x-extoken-identity") == 1

    jws = got["x-extoken-identity"]
    header = jwt.get_unverified_header(jws)
    assert header["alg"] == alg
    assert header["typ"] == "extoken-identity+jwt"
    claims = jwt.decode(jws, served_key(g, header["kid"]).key, algorithms=[alg], audience="api",
                        issuer=ISSUER, options={"require": ["exp", "iat", "iss", "aud"]})
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 120
    # Each asserted header is exactly what arrived, and every identity header is asserted.
    assert claims["hdr"] == {n: got[n] for n in
                             ("x-user-id", "x-tenant-id", "x-user-roles", "x-user-email")}
    # The same key pair verifies it; another key, audience or algorithm does not.
    jwt.decode(jws, key.public_key(), algorithms=[alg], audience="api")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(jws, new_key(alg).public_key(), algorithms=[alg], audience="api")
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(jws, key.public_key(), algorithms=[alg], audience="another-route")


def test_missing_claims_send_no_header_and_tampering_shows(gateway, backend, descope, tmp_path):
    key = new_key("ES256")
    g = start(gateway, tmp_path, "ES256", key)
    fwd = g.forward(descope.mint(USER, externalToken="ext-2"), backend, path="/api",
                    headers=SPOOFS)
    got = fwd.record["headers"]
    assert got["x-user-id"] == USER
    for absent in ("x-tenant-id", "x-user-roles", "x-user-email", "x_user_id"):
        assert absent not in got, absent
    claims = jwt.decode(got["x-extoken-identity"], key.public_key(), algorithms=["ES256"],
                        audience="api")
    assert claims["hdr"] == {"x-user-id": USER}
    # A changed payload with the original signature fails.
    h, p, s = got["x-extoken-identity"].split(".")
    forged = dict(claims, hdr={"x-user-id": "U2admin"})
    forged_p = jwt.utils.base64url_encode(json.dumps(forged).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{h}.{forged_p}.{s}", key.public_key(), algorithms=["ES256"], audience="api")


def test_denied_session_gets_403_and_nothing_is_forwarded(gateway, backend, descope):
    g = gateway({"ext": {"type": "claim"}}, connector="ext",
                route={"require": {"roles": {"any": ["admin"]}}})
    fwd = g.forward(descope.mint(USER, externalToken="ext-3", roles=["viewer"]), backend,
                    path="/api")
    assert fwd.status == 403
    assert fwd.record is None
    assert fwd.resp_headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    assert json.loads(fwd.body)["rule"] == "roles"
