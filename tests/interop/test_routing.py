"""Per-tenant connector choice and the upstream-401 eviction, seen from the legacy backend."""

from __future__ import annotations

import time

import jwt
import pytest

from conftest import FIREBASE_CUSTOM_TOKEN_AUD, unverified
from test_supabase import SECRET, supabase_uuid, verify_hs256

USER = "U2routingUser0000000000000001"


@pytest.fixture(autouse=True)
def _need(require_connector):
    require_connector("supabase")
    require_connector("jwt")


def test_connector_by_tenant(gateway, backend, descope, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "inhouse.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    g = gateway({
        "sb": {"type": "supabase", "jwt_secret": SECRET},
        "inhouse": {"type": "jwt", "algorithm": "ES256", "key_file": str(pem),
                    "issuer": "https://gw.test", "audience": "legacy", "expires_in": "5m"},
    }, connector="sb", route={"connector_by_tenant": {"T2": "inhouse"}})

    t1 = g.forward(descope.mint(USER, dct="T1"), backend).token      # not listed: fallback
    assert verify_hs256(t1)["sub"] == supabase_uuid(USER)
    t0 = g.forward(descope.mint(USER), backend).token                # no tenant: fallback
    verify_hs256(t0)
    t2 = g.forward(descope.mint(USER, dct="T2"), backend).token      # T2: the jwt connector
    assert jwt.get_unverified_header(t2)["alg"] == "ES256"
    jwt.decode(t2, key.public_key(), algorithms=["ES256"], audience="legacy", issuer="https://gw.test")
    assert unverified(t2)[1]["aud"] != FIREBASE_CUSTOM_TOKEN_AUD


def test_upstream_401_evicts_the_cached_token(gateway, backend, descope):
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET}})
    session = descope.mint(USER)
    first = g.forward(session, backend).token
    time.sleep(1.1)  # a re-mint now has another iat, hence another token
    assert g.forward(session, backend).token == first, "cached token not reused"
    rejected = g.forward(session, backend, path="/status/401")
    assert rejected.status == 401 and rejected.record is not None
    after = g.forward(session, backend).token
    assert after != first, "after the upstream's 401 the gateway still sends the same token"
    assert verify_hs256(after)["iat"] > verify_hs256(first)["iat"]
