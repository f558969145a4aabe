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

from conftest import EXTOKEN_BIN, ROOT, Gateway, _die_with_parent, unverified, serve_http

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


# --------------------------------------------------------------------------- a real browser

CHROMIUM = os.environ.get("INTEROP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("INTEROP_CHROMEDRIVER", "/usr/bin/chromedriver")


class PageBackend:
    """A server-rendered app: each page shows the token the backend received (the external token,
    never the session) and records the request's path and cookies."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler
        self.seen: list[dict] = []
        pages = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                pages.seen.append({"path": self.path, "cookie": self.headers.get("cookie", ""),
                                   "authorization": self.headers.get("authorization", "")})
                token = self.headers.get("authorization", "").removeprefix("Bearer ")
                body = (f"<html><head><title>app</title></head><body><h1 id='who'>{token}</h1>"
                        f"<a href='/page/next'>next</a></body></html>").encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("cache-control", "public, max-age=60")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server, self.url = serve_http(Handler)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), \
        "run.sh installs Debian's chromium and chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _metric(gw: Gateway, series: str) -> float:
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=10).read()
    for line in text.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_browser_with_an_expired_session_gets_the_page_and_keeps_the_new_cookie(
        endpoint, descope, tmp_path):
    url, project = endpoint
    app = PageBackend()
    cfg = {
        "descope": {"project_id": project, "base_url": url,
                    "refresh": {"enabled": True, "cookie": {"secure": False}}},
        "connectors": {"ext": {"type": "claim", "claim": "externalToken"}},
        "routes": [{"name": "app", "path_prefix": "/", "upstream": app.url, "connector": "ext"}],
    }
    gw = Gateway(tmp_path, cfg)
    driver = _browser()
    try:
        origin = f"http://127.0.0.1:{gw.port}"
        stale = descope.mint("U2browser", ttl="-10m", externalToken="stale")
        dsr = mint_refresh(descope, "U2browser")
        deadline = time.monotonic() + 20
        while gw.request("/warmup", {"Cookie": f"DS={stale}; DSR={mint_refresh(descope, 'U2w')}"})[0] == 503:
            assert time.monotonic() < deadline, "the gateway never loaded its keys"
            time.sleep(0.1)
        before = _metric(gw, 'extoken_session_refresh_total{result="refreshed"}')
        driver.get(f"{origin}/robots.txt")  # on the origin, to set its cookies
        driver.add_cookie({"name": "DS", "value": stale, "path": "/"})
        driver.add_cookie({"name": "DSR", "value": dsr, "path": "/"})

        driver.get(f"{origin}/page/1")
        who = driver.find_element("id", "who").text
        assert who.startswith("refreshed-U2browser-"), driver.page_source[:500]
        new_ds = driver.get_cookie("DS")
        assert new_ds is not None and new_ds["value"] != stale
        assert unverified(new_ds["value"])[1]["externalToken"] == who
        assert new_ds["sameSite"] == "Lax" and not new_ds["httpOnly"]

        # The next navigation carries the new session: no refresh, the same external token.
        driver.find_element("link text", "next").click()
        assert driver.find_element("id", "who").text == who
        assert driver.get_cookie("DS")["value"] == new_ds["value"]
        assert _metric(gw, 'extoken_session_refresh_total{result="refreshed"}') == before + 1
        assert _metric(gw, 'extoken_session_refresh_total{result="reused"}') == 0
        pages = [s for s in app.seen if s["path"].startswith("/page/")]
        assert [p["path"] for p in pages] == ["/page/1", "/page/next"]
        assert all("DS" not in p["cookie"] for p in pages), pages

        # A revoked refresh token: the 401, no page, the stale cookie left as it was.
        driver.delete_all_cookies()
        driver.add_cookie({"name": "DS", "value": stale, "path": "/"})
        driver.add_cookie({"name": "DSR", "value": mint_refresh(descope, "U2revokedUser"), "path": "/"})
        driver.get(f"{origin}/page/revoked")
        assert "token has expired" in driver.page_source, driver.page_source[:500]
        assert not any(s["path"] == "/page/revoked" for s in app.seen)
        assert driver.get_cookie("DS")["value"] == stale
    finally:
        driver.quit()
        gw.stop()
        app.close()
