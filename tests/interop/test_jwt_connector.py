"""jwt connector: a legacy backend verifies the gateway-signed token with PyJWT.

The backend gets the public keys where the gateway publishes them:
``GET /.well-known/jwks.json`` on the admin listener.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import rfc7638_thumbprint, unverified

USER = "U2aliceJwt000000000000000001"
ISSUER = "https://gateway.interop.test"
AUDIENCE = "legacy-api"


@pytest.fixture(autouse=True)
def _need_jwt(require_connector):
    require_connector("jwt")


def new_key(alg: str):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def write_pem(key, path):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def fetch_jwks(g, backend) -> dict:
    """The gateway's JWKS the way a legacy backend would fetch it: from the admin listener."""
    import urllib.request
    url = f"http://127.0.0.1:{g.admin_port}/.well-known/jwks.json"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200, f"{url} -> {resp.status}"
        assert resp.headers.get("content-type", "").startswith("application/json")
        jwks = json.loads(resp.read())
    assert isinstance(jwks.get("keys"), list) and jwks["keys"], f"{url}: no keys: {jwks}"
    assert backend.find("/.well-known/jwks.json") is None
    return jwks


def key_for(jwks: dict, kid: str):
    for k in jwks["keys"]:
        if k.get("kid") == kid:
            assert "d" not in k, "the published JWKS contains a private key component"
            return jwt.PyJWK(k)
    pytest.fail(f"kid {kid!r} not in the served JWKS (kids: {[k.get('kid') for k in jwks['keys']]})")


def jwt_connector(key_path: str, alg: str, **extra) -> dict:
    return {"inhouse": {"type": "jwt", "algorithm": alg, "key_file": key_path, "issuer": ISSUER,
                        "audience": AUDIENCE, "expires_in": "15m",
                        "claims": {"tenant": "dct", "roles": "roles"}, **extra}}


def public_jwk(key) -> dict:
    """The public JWK of a private key, as PyJWT builds it (for the thumbprint)."""
    alg = {rsa.RSAPrivateKey: jwt.algorithms.RSAAlgorithm,
           ec.EllipticCurvePrivateKey: jwt.algorithms.ECAlgorithm,
           ed25519.Ed25519PrivateKey: jwt.algorithms.OKPAlgorithm}
    for cls, algo in alg.items():
        if isinstance(key, cls):
            return json.loads(algo.to_jwk(key.public_key()))
    raise TypeError(key)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_token_verifies_with_the_key_pair(gateway, backend, descope, tmp_path, alg):
    key = new_key(alg)
    g = gateway(jwt_connector(write_pem(key, tmp_path / "inhouse.pem"), alg))
    tok = g.forward(descope.mint(USER, dct="T1", roles=["admin"]), backend).token
    header = jwt.get_unverified_header(tok)
    assert header["alg"] == alg
    assert header.get("kid") == rfc7638_thumbprint(public_jwk(key)), \
        "default kid should be the RFC 7638 thumbprint of the public key"
    claims = jwt.decode(tok, key.public_key(), algorithms=[alg], audience=AUDIENCE, issuer=ISSUER,
                        options={"require": ["exp", "iat", "iss", "aud"]})
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 120
    assert claims["tenant"] == "T1"
    assert claims["roles"] == ["admin"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tok, new_key(alg).public_key(), algorithms=[alg], audience=AUDIENCE)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_backend_verifies_with_served_jwks(gateway, backend, descope, tmp_path, alg):
    key = new_key(alg)
    g = gateway(jwt_connector(write_pem(key, tmp_path / "inhouse.pem"), alg))
    tok = g.forward(descope.mint(USER, dct="T1", roles=["admin"]), backend).token
    header = jwt.get_unverified_header(tok)
    jwks = fetch_jwks(g, backend)
    pub = key_for(jwks, header["kid"])
    claims = jwt.decode(tok, pub.key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)
    assert claims["tenant"] == "T1"
    served = next(k for k in jwks["keys"] if k.get("kid") == header["kid"])
    assert header["kid"] == rfc7638_thumbprint(served)


def test_subject_identifies_the_user(gateway, backend, descope, tmp_path):
    # Not spelled out in the contract's claim list, but a legacy backend must learn who the user is.
    g = gateway(jwt_connector(write_pem(new_key("RS256"), tmp_path / "k.pem"), "RS256"))
    tok = g.forward(descope.mint(USER), backend).token
    _, claims = unverified(tok)
    assert claims.get("sub") == USER, f"sub: expected {USER!r}, got {claims.get('sub')!r}"


def test_configured_kid_and_wrong_audience(gateway, backend, descope, tmp_path):
    key = new_key("ES256")
    g = gateway(jwt_connector(write_pem(key, tmp_path / "k.pem"), "ES256", kid="inhouse-2024"))
    tok = g.forward(descope.mint(USER), backend).token
    assert jwt.get_unverified_header(tok)["kid"] == "inhouse-2024"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(tok, key.public_key(), algorithms=["ES256"], audience="some-other-api")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(tok, key.public_key(), algorithms=["RS256"], audience=AUDIENCE)
    pub = key_for(fetch_jwks(g, backend), "inhouse-2024")
    jwt.decode(tok, pub.key, algorithms=["ES256"], audience=AUDIENCE)
