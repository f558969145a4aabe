"""Supabase tokens against PostgreSQL set up the way Supabase sets it up.

Roles ``anon`` / ``authenticated`` (NOLOGIN) and the login role ``authenticator`` that PostgREST
connects as; ``auth.uid()``, ``auth.role()`` and ``auth.jwt()`` defined exactly as Supabase
defines them; tables with RLS. The forwarded token is verified with PyJWT and its claims are then
applied the way PostgREST applies them: in one transaction ``set_config('request.jwt.claims',
<json>, true)`` and ``set local role <claims.role>`` (``anon`` when the token has no role).
"""

from __future__ import annotations

import json
import os
import uuid

import jwt
import pytest

from test_supabase import MAPPING, SECRET, supabase_uuid, verify_hs256

psycopg = pytest.importorskip("psycopg")
from psycopg import sql  # noqa: E402

DSN = os.environ.get("INTEROP_PG_DSN")
ALICE = "U2aliceInterop000000000000001"
BOB = "U2bobInterop0000000000000002"

SCHEMA = r"""
do $$ begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end $$;
grant anon, authenticated to authenticator;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated;

-- Verbatim from Supabase (supabase/postgres migrations, auth schema).
create or replace function auth.uid() returns uuid language sql stable as $f$
  select
    nullif(
      coalesce(
        current_setting('request.jwt.claim.sub', true),
        (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')
      ),
      ''
    )::uuid
$f$;
create or replace function auth.role() returns text language sql stable as $f$
  select
    coalesce(
      current_setting('request.jwt.claim.role', true),
      (current_setting('request.jwt.claims', true)::jsonb ->> 'role')
    )::text
$f$;
create or replace function auth.jwt() returns jsonb language sql stable as $f$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim', true), ''),
      nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$f$;

drop table if exists public.notes;
create table public.notes (id serial primary key, owner uuid not null, body text not null);
alter table public.notes enable row level security;
create policy "own notes" on public.notes for select to authenticated using (owner = auth.uid());
grant select on public.notes to anon, authenticated;

drop table if exists public.admin_settings;
create table public.admin_settings (k text primary key, v text not null);
alter table public.admin_settings enable row level security;
create policy "admins only" on public.admin_settings for select to authenticated
  using (coalesce((auth.jwt() -> 'app_metadata' -> 'roles') ? 'admin', false));
grant select on public.admin_settings to anon, authenticated;

drop table if exists public.tenant_docs;
create table public.tenant_docs (id serial primary key, tenant text not null, title text not null);
alter table public.tenant_docs enable row level security;
create policy "same tenant" on public.tenant_docs for select to authenticated
  using (tenant = auth.jwt() ->> 'tenant');
grant select on public.tenant_docs to anon, authenticated;
"""


@pytest.fixture(scope="module")
def db():
    if not DSN:
        pytest.skip("INTEROP_PG_DSN not set: run tests/interop/run.sh (it starts PostgreSQL)")
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(SCHEMA)
        admin.execute(
            "insert into public.notes (owner, body) values (%s, 'alice 1'), (%s, 'alice 2'), (%s, 'bob 1')",
            (supabase_uuid(ALICE), supabase_uuid(ALICE), supabase_uuid(BOB)),
        )
        admin.execute("insert into public.admin_settings values ('feature_x', 'on')")
        admin.execute("insert into public.tenant_docs (tenant, title) values "
                      "('T1', 'plan T1'), ('T2', 'plan T2')")
    # PostgREST connects as the authenticator and switches role per request.
    params = dict(p.split("=", 1) for p in DSN.split())
    params["user"] = "authenticator"
    with psycopg.connect(" ".join(f"{k}={v}" for k, v in params.items()), autocommit=True) as conn:
        yield conn


def as_postgrest(conn, claims: dict | None, query: str):
    """Runs ``query`` in one transaction with the claims applied as PostgREST applies them."""
    role = (claims or {}).get("role") or "anon"
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("select set_config('request.jwt.claims', %s, true)",
                        (json.dumps(claims or {}),))
            cur.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
            cur.execute(query)
            return cur.fetchall()


@pytest.fixture
def supabase_gateway(gateway, require_connector):
    require_connector("supabase")
    return gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "claims": MAPPING}})


def forwarded_claims(g, backend, descope, user, **session_claims) -> dict:
    tok = g.forward(descope.mint(user, **session_claims), backend).token
    return verify_hs256(tok)  # PostgREST verifies before it applies anything


def test_rls_each_user_sees_only_own_rows(db, supabase_gateway, backend, descope):
    alice = forwarded_claims(supabase_gateway, backend, descope, ALICE)
    bob = forwarded_claims(supabase_gateway, backend, descope, BOB)

    rows = as_postgrest(db, alice, "select auth.uid()::text, auth.role(), current_user")
    assert rows == [(supabase_uuid(ALICE), "authenticated", "authenticated")]
    rows = as_postgrest(db, alice, "select body from public.notes order by id")
    assert [r[0] for r in rows] == ["alice 1", "alice 2"]
    rows = as_postgrest(db, bob, "select body from public.notes order by id")
    assert [r[0] for r in rows] == ["bob 1"]
    rows = as_postgrest(db, alice, "select auth.jwt() ->> 'descope_user_id'")
    assert rows == [(ALICE,)]


def test_anon_sees_nothing(db):
    assert as_postgrest(db, None, "select body from public.notes") == []
    assert as_postgrest(db, {"iss": "x"}, "select current_user, auth.uid()") == [("anon", None)]


def test_claims_mapping_usable_in_policies(db, supabase_gateway, backend, descope):
    admin = forwarded_claims(supabase_gateway, backend, descope, ALICE, dct="T1", roles=["admin"])
    viewer = forwarded_claims(supabase_gateway, backend, descope, BOB, dct="T2", roles=["viewer"])
    assert as_postgrest(db, admin, "select k from public.admin_settings") == [("feature_x",)]
    assert as_postgrest(db, viewer, "select k from public.admin_settings") == []
    assert as_postgrest(db, admin, "select title from public.tenant_docs") == [("plan T1",)]
    assert as_postgrest(db, viewer, "select title from public.tenant_docs") == [("plan T2",)]


def test_sub_mode_descope_breaks_auth_uid(db, gateway, backend, descope, require_connector):
    """Why ``sub_mode: uuid`` is the default: Supabase's ``auth.uid()`` casts ``sub`` to uuid."""
    require_connector("supabase")
    g = gateway({"sb": {"type": "supabase", "jwt_secret": SECRET, "sub_mode": "descope"}})
    claims = forwarded_claims(g, backend, descope, ALICE)
    assert claims["sub"] == ALICE
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="uuid"):
        as_postgrest(db, claims, "select body from public.notes")


def test_forged_token_never_reaches_the_database(supabase_gateway, backend, descope):
    # A backend that verifies (as PostgREST does) refuses a token signed with another secret,
    # so nothing forged gets to set request.jwt.claims.
    tok = supabase_gateway.forward(descope.mint(ALICE), backend).token
    forged = jwt.encode({**verify_hs256(tok), "sub": supabase_uuid(BOB)}, "wrong-secret-" * 4,
                        algorithm="HS256")
    with pytest.raises(jwt.InvalidSignatureError):
        verify_hs256(forged)
    assert uuid.UUID(verify_hs256(tok)["sub"]) == uuid.UUID(supabase_uuid(ALICE))
