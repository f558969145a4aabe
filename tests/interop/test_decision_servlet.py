"""The servlet differential's requests through every ingress with extoken deciding: no bypass
through the ingress, and the route extoken decided on is the location the request reached.

Behind each ingress of ``test_decision.py`` (nginx ``auth_request``, ingress-nginx's
``auth-url`` as rendered by its template, Envoy ``ext_authz`` gRPC and HTTP, Traefik
ForwardAuth; each running its example as written) the backend is a real servlet container: the
Tomcat of ``test_servlet_differential.py`` with its probe servlet mapped twice, ``protected`` on
``/api/*`` and ``open`` on ``/``. Tomcat strips ``;params`` from every segment and decodes the
path before it maps a request, which is where a gateway that decides on another reading of the
path lets a request through to the wrong servlet. extoken decides with the example gateway.yaml
(``/api`` needs a session and gets the external token; ``/public`` is open; nothing else routes).

The corpus is the servlet differential's (``;`` parameters in every place and encoding, dot
segments, absolute-form, and the nginx differential's origin-form targets), sent over raw
sockets without and with a session. Checked, failures listed together:

1. Without credentials, the protected servlet never answers nor logs a request.
2. With a session, every request the protected servlet gets carries the external token (extoken
   decided on ``/api``), every request the open servlet gets carries none (extoken did not decide
   on ``/api``): the route extoken decided on is the servlet the request reached. The session
   itself never reaches Tomcat. Some requests do get through to the protected servlet (the check
   is not vacuous).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from test_decision import INGRESSES, decider, running_ingress  # noqa: F401
from test_nginx_differential import Reply, send
from test_servlet_differential import (  # noqa: F401  (fixtures used by name)
    CORPUS,
    EXTERNAL_TOKEN,
    SCase,
    head,
    probe,
    session,
    tomcat,
    tomcat_started,
)


@dataclass
class TomcatBackend:
    """The ingress's backend: Tomcat's connector of the open route (the servlet mapping, not the
    port, decides which servlet answers)."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module", params=INGRESSES)
def through(request, tmp_path_factory, decider, tomcat):  # noqa: F811
    kind = request.param
    wd = tmp_path_factory.mktemp(f"servlet-{kind}")
    with running_ingress(kind, wd, decider, TomcatBackend(tomcat.ports["root"])) as ing:
        yield ing


@dataclass
class Sent:
    case_id: str
    scase: SCase
    reply: Reply
    reached: list[str]  # the probe servlet's log lines for this request

    def servlets(self) -> list[tuple[str, str]]:
        """(servlet, Authorization) of every request Tomcat's probe got for this case."""
        out = []
        for line in self.reached:
            # "servlet=<name> port=<n> method=<m> auth=<Authorization, may hold spaces> uri=<uri>"
            m = re.match(r"servlet=(\S*) port=\S* method=\S* auth=(.*) uri=", line)
            out.append((m.group(1), m.group(2)) if m else ("?", line))
        p = probe(self.reply)
        if p and not self.reached:  # answered but not logged: still counts
            out.append((p["servlet"], p["auth"]))
        return out

    def __str__(self) -> str:
        r = self.reply
        return f"{self.scase} -> {r.status} {r.body[:80]!r} reached={self.reached}"


@pytest.fixture(scope="module")
def runs(through, tomcat, session) -> dict[str, list[Sent]]:  # noqa: F811
    sent: dict[str, list[tuple[str, SCase, Reply]]] = {}
    for tag, auth in (("anon", None), ("sess", f"Bearer {session}")):
        sent[tag] = []
        for i, sc in enumerate(CORPUS):
            case_id = f"dec-{through.kind}-{tag}-{i}"
            sent[tag].append((case_id, sc, send(through.port, head(sc.case, case_id, auth))))
    received = tomcat.received()
    return {tag: [Sent(c, sc, r, received.get(c, [])) for c, sc, r in replies]
            for tag, replies in sent.items()}


def report(kind: str, title: str, failures: list[str], total: int):
    if failures:
        shown = "\n  ".join(failures[:40])
        more = f"\n  ... and {len(failures) - 40} more" if len(failures) > 40 else ""
        pytest.fail(f"{kind}: {title}: {len(failures)} of {total}:\n  {shown}{more}",
                    pytrace=False)


def test_no_unauthenticated_request_reaches_the_protected_servlet(through, runs):
    bad = [str(s) for s in runs["anon"] if any(sv == "protected" for sv, _ in s.servlets())]
    report(through.kind, "unauthenticated requests served by the protected servlet", bad,
           len(runs["anon"]))


def test_the_route_extoken_decided_on_is_the_servlet_reached(through, runs, session):  # noqa: F811
    token = f"Bearer {EXTERNAL_TOKEN}"
    bad = []
    protected = 0
    for s in runs["sess"]:
        for servlet, auth in s.servlets():
            if session in auth:
                bad.append(f"the session reached Tomcat: {s}")
            elif servlet == "protected" and auth != token:
                bad.append(f"protected servlet without the external token ({auth[:30]!r}): {s}")
            elif servlet == "open" and EXTERNAL_TOKEN in auth:
                bad.append(f"open servlet with the external token (decided on /api): {s}")
            protected += servlet == "protected"
    report(through.kind, "requests whose servlet is not the route extoken decided on", bad,
           len(runs["sess"]))
    assert protected >= 10, (
        f"{through.kind}: only {protected} requests with a session reached the protected servlet")
