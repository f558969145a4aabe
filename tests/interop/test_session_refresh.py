"""Session refresh against the Descope Python SDK's contract.

The refresh endpoint the Rust tests use (``tests/common/refresh.rs``) runs as a process of its
own (the ignored test ``interop_refresh_endpoint`` of the ``session_refresh`` test binary). First the
Descope Python SDK 2.16.1 is its client (``DescopeClient.refresh_session``: it fetches the keys
from ``/v2/keys/<project>``, checks the refresh token locally, then calls ``/v1/auth/refresh``), so
the endpoint provably speaks the SDK's contract: path, credential format, response fields. Then
extoken is pointed at the same endpoint: an expired ``DS`` with a valid ``DSR`` goes through, and the
``DS`` cookie the browser gets is a session the SDK itself validates.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import EXTOKEN_BIN, ROOT, Gateway, _die_with_parent, unverified

descope_sdk = pytest.importorskip("descope", reason="pip install descope==2.16.1 (requirements.txt)")


def _test_binary() -> str:
    """The session_refresh test binary (built by run.sh, or here)."""
    out = subprocess.run(
        ["cargo", "test", "--test", "session_refresh", "--no-run", "--message-format=json"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "session_refresh":
            return msg["executable"]
    raise AssertionError("cargo did not name the session_refresh test binary")


@pytest.fixture(scope="module")
def endpoint(descope, tmp_path_factory):
    """(url, project_id) of the refresh endpoint, signing with the interop dev key."""
    tmp = tmp_path_factory.mktemp("refresh")
    url_file = tmp / "url"
    env = {**os.environ, "INTEROP_REFRESH_KEY": str(descope.key),
           "INTEROP_REFRESH_PROJECT": descope.project_id, "INTEROP_REFRESH_URL_FILE": str(url_file)}
    proc = subprocess.Popen(
        [_test_binary(), "--ignored", "--exact", "interop_refresh_endpoint", "--nocapture"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 30
        while not url_file.exists() or not url_file.read_text():
            assert proc.poll() is None, "the refresh endpoint exited"
            assert time.monotonic() < deadline, "the refresh endpoint did not start"
            time.sleep(0.05)
        yield url_file.read_text().strip(), descope.project_id
    finally:
        proc.kill()
        proc.wait(timeout=10)


def mint_refresh(descope, sub: str, ttl: str = "1h") -> str:
    out = subprocess.run(
        [str(EXTOKEN_BIN), "mint", "--key", str(descope.key), "--project-id", descope.project_id,
         "--sub", sub, "--ttl", ttl, "--refresh"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_sdk_refreshes_a_session_with_the_endpoint(endpoint, descope):
    url, project = endpoint
    client = descope_sdk.DescopeClient(project_id=project, base_url=url)
    dsr = mint_refresh(descope, "U2sdk")
    got = client.refresh_session(dsr)
    session = got["sessionToken"]
    assert session["sub"] == "U2sdk" and session["drn"] == "DS"
    assert session["externalToken"].startswith("refreshed-U2sdk-")
    # Not rotated: the SDK keeps the refresh token it sent.
    assert got["refreshSessionToken"]["jwt"] == dsr
    assert got["cookieData"]["maxAge"] > 0 and got["cookieData"]["path"] == "/"
    assert got["user"]["userId"] == "U2sdk"
    # The new session is a session the SDK validates.
    assert client.validate_session(session["jwt"])["sub"] == "U2sdk"


def test_the_endpoint_refuses_what_descope_refuses(endpoint, descope):
    """Past the SDK's local check (an expired token never gets there), the endpoint answers a
    token of another key with Descope's 401 and error body; the SDK raises."""
    url, project = endpoint
    client = descope_sdk.DescopeClient(project_id=project, base_url=url)
    expired = mint_refresh(descope, "U2old", ttl="-10m")
    with pytest.raises(descope_sdk.AuthException):
        client.refresh_session(expired)
    # The raw contract: a session (drn DS) is not a refresh token.
    import httpx
    session = descope.mint("U2s")
    r = httpx.post(f"{url}/v1/auth/refresh", json={},
                   headers={"Authorization": f"Bearer {project}:{session}",
                            "x-descope-project-id": project})
    assert r.status_code == 401 and "errorCode" in r.json()


def test_extoken_refreshes_with_the_endpoint(endpoint, descope, backend, tmp_path):
    url, project = endpoint
    cfg = {
        "descope": {"project_id": project, "base_url": url,
                    "refresh": {"enabled": True, "cookie": {"secure": False}}},
        "connectors": {"ext": {"type": "claim", "claim": "externalToken"}},
        "routes": [{"name": "app", "path_prefix": "/", "upstream": backend.url, "connector": "ext"}],
    }
    gw = Gateway(tmp_path, cfg)
    try:
        stale = descope.mint("U2browser", ttl="-10m", externalToken="stale")
        dsr = mint_refresh(descope, "U2browser")
        deadline = time.monotonic() + 20
        while True:  # the keys load in the background
            status, headers, body = gw.request("/refresh-interop/1",
                                               {"Cookie": f"DS={stale}; DSR={dsr}"})
            if status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200, f"{status} {body[:300]!r}\n{gw.logs()}"
        rec = backend.find("/refresh-interop/1")
        assert rec["headers"]["authorization"].startswith("Bearer refreshed-U2browser-")
        assert "DSR" not in rec["headers"].get("cookie", "")
        set_cookie = headers["set-cookie"]
        assert set_cookie.startswith("DS=") and "Max-Age=" in set_cookie
        assert headers["cache-control"] == "private"
        new_ds = set_cookie.split(";")[0][len("DS="):]
        client = descope_sdk.DescopeClient(project_id=project, base_url=url)
        assert client.validate_session(new_ds)["sub"] == "U2browser"
        assert unverified(new_ds)[1]["externalToken"] == rec["headers"]["authorization"][7:]
    finally:
        gw.stop()
