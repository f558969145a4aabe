"""The harness itself, on the `claim` connector of the core gateway (always present)."""

from __future__ import annotations

import jwt
import pytest

from conftest import unverified


def test_claim_connector_forwards_external_token(gateway, backend, descope):
    g = gateway({"descope-claim": {"type": "claim", "claim": "externalToken"}})
    session = descope.mint("U2harness")
    ext = unverified(session)[1].get("externalToken")
    assert ext is None  # minted without one
    session = descope.mint("U2harness", externalToken="legacy-U2harness")
    f = g.forward(session, backend)
    assert f.token == "legacy-U2harness"
    assert session not in str(f.record["all_headers"]), "the Descope session reached the backend"


def test_unauthenticated_request_is_not_forwarded(gateway, backend, descope):
    g = gateway({"descope-claim": {"type": "claim"}})
    f = g.forward(None, backend)
    assert f.status == 401 and f.record is None


def test_session_signed_by_another_key_is_refused(gateway, backend, descope, tmp_path):
    from conftest import Descope
    other = Descope(tmp_path / "other")  # a different dev key: not in the gateway's JWKS
    g = gateway({"descope-claim": {"type": "claim"}})
    f = g.forward(other.mint("U2x", externalToken="x"), backend)
    assert f.status == 401 and f.record is None
    assert jwt.get_unverified_header(descope.mint("U2y"))["alg"] == "RS256"
