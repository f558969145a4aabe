"""Offline checks of the custom resources and mesh config the decision-mode examples use
(deploy/examples/decision/{istio,gateway-api,...}), for deploy/validate_manifests.py.

The schemas are in deploy/schemas/: the openAPIV3Schema of each CRD version, copied from the
project's own CRD file at a named release (its "$comment" says which; descriptions left out),
and, for Istio's mesh config, which is no CRD, a schema written from the proto it is parsed with.
Validation is strict, as the API server's strict field validation is: an object with
`properties` gets `additionalProperties: false` unless the CRD preserves unknown fields. What a
CRD checks with CEL (`x-kubernetes-validations`) is not evaluated; the rules the examples rely on
(a filter's `type` names the one field it sets; ExternalAuth's `protocol` names `grpc` or
`http`) are checked by hand below.
"""

from __future__ import annotations

import copy
import glob
import json
import os
from urllib.parse import urlsplit

import yaml

try:
    import jsonschema
except ImportError:  # only --required-env runs without the venv
    jsonschema = None

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
MESH_SCHEMA = "istio_meshconfig_extensionproviders.json"
OBJECT_META_KEYS = {"name", "namespace", "labels", "annotations"}


def _strict(s):
    """The CRD schema as the API server applies it: unknown fields are errors."""
    if isinstance(s, list):
        return [_strict(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: _strict(v) for k, v in s.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable"):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def load() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict schema, for every CRD schema in deploy/schemas/."""
    out = {}
    for path in sorted(glob.glob(os.path.join(SCHEMAS, "*.json"))):
        s = json.load(open(path))
        gvk = s.pop("x-extoken-group-version-kind", None)
        if not gvk:
            continue
        group, version, kind = gvk
        s = _strict(s)
        # Every object has these, whether the CRD's schema lists them (Gateway API's) or not
        # (Istio's); metadata is checked as ObjectMeta by the API server, here in check().
        s["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                "metadata": {"type": "object"}})
        out[(f"{group}/{version}", kind)] = s
    return out


CRDS = load() if jsonschema else {}


def known(obj: dict) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in CRDS


def check(obj: dict) -> list[str]:
    """Problems of one custom resource: schema, ObjectMeta keys, and the CEL rules above."""
    schema = CRDS[(obj["apiVersion"], obj["kind"])]
    v = jsonschema.Draft7Validator(schema)
    problems = []
    for e in sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        loc = ".".join(str(p) for p in e.absolute_path) or "(root)"
        problems.append(f"{loc}: {e.message}")
    extra = set((obj.get("metadata") or {}).keys()) - OBJECT_META_KEYS
    if extra:
        problems.append(f"metadata: unexpected {sorted(extra)}")
    if obj["kind"] == "HTTPRoute":
        problems += _route_filters(obj)
    return problems


# Filter type -> the one field it sets (HTTPRoute's CEL rules on filters).
FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}


def _route_filters(obj: dict) -> list[str]:
    problems = []
    for i, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
        for j, f in enumerate(rule.get("filters") or []):
            where = f"spec.rules.{i}.filters.{j}"
            want = FILTER_FIELDS.get(f.get("type"))
            for field in FILTER_FIELDS.values():
                if field in f and field != want:
                    problems.append(f"{where}: {field} must be nil unless type is its own")
            if want and want not in f:
                problems.append(f"{where}: {want} must be specified for type {f.get('type')}")
            ea = f.get("externalAuth")
            if isinstance(ea, dict):
                proto = {"GRPC": "grpc", "HTTP": "http"}.get(ea.get("protocol"))
                for key in ("grpc", "http"):
                    if (key in ea) != (key == proto):
                        problems.append(f"{where}.externalAuth: protocol {ea.get('protocol')} "
                                        f"and {key} do not go together")
    return problems


def mesh_config(obj: dict) -> list[str] | None:
    """Problems of Istio's mesh config in the `istio` ConfigMap (None for any other object)."""
    md = obj.get("metadata") or {}
    if obj.get("kind") != "ConfigMap" or md.get("name") != "istio" or "mesh" not in (obj.get("data") or {}):
        return None
    try:
        mesh = yaml.safe_load(obj["data"]["mesh"]) or {}
    except yaml.YAMLError as e:
        return [f"data.mesh: YAML: {e}"]
    schema = json.load(open(os.path.join(SCHEMAS, MESH_SCHEMA)))
    v = jsonschema.Draft202012Validator(schema)
    return [f"data.mesh.{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in v.iter_errors(mesh)]


def decision_consistency(objs: list[tuple[str, dict]], gateway_yaml: str | None) -> list[str]:
    """Across the decision examples: every CUSTOM policy names a provider the mesh config has,
    and every way of reaching extoken (providers, auth-url, backendRefs) uses a port of the
    extoken-decision Service, which is the port of decision.listen / grpc_listen in the example
    gateway.yaml (HTTP ones on decision.listen, with its envoy_path_prefix)."""
    problems = []
    providers = {}
    for _, o in objs:
        if mesh_config(o) is not None:
            for p in (yaml.safe_load(o["data"]["mesh"]) or {}).get("extensionProviders") or []:
                providers[p.get("name")] = p
    listen = {}
    prefix = "/envoy"
    if gateway_yaml:
        d = (yaml.safe_load(open(gateway_yaml)) or {}).get("decision") or {}
        for key, proto in (("listen", "http"), ("grpc_listen", "grpc")):
            if d.get(key):
                listen[proto] = int(str(d[key]).rsplit(":", 1)[-1])
        prefix = d.get("envoy_path_prefix", prefix)

    def port_ok(where: str, proto: str, port) -> None:
        if proto in listen and int(port) != listen[proto]:
            problems.append(f"{where}: port {port} is not extoken's {proto} decision port {listen[proto]}")

    for path, o in objs:
        where = f"{path} {o.get('kind')}/{(o.get('metadata') or {}).get('name')}"
        spec = o.get("spec") or {}
        if o.get("kind") == "AuthorizationPolicy" and spec.get("action") == "CUSTOM":
            name = (spec.get("provider") or {}).get("name")
            if name not in providers:
                problems.append(f"{where}: provider {name!r} is not in the mesh config's extensionProviders")
        if o.get("kind") == "Ingress":
            url = ((o.get("metadata") or {}).get("annotations") or {}).get("nginx.ingress.kubernetes.io/auth-url")
            if url:
                port_ok(where, "http", urlsplit(url).port or 80)
        for rule in spec.get("rules") or [] if o.get("kind") == "HTTPRoute" else []:
            for f in rule.get("filters") or []:
                ea = f.get("externalAuth") or {}
                if not ea:
                    continue
                proto = "grpc" if ea.get("protocol") == "GRPC" else "http"
                port_ok(where, proto, (ea.get("backendRef") or {}).get("port", 0))
                if proto == "http" and (ea.get("http") or {}).get("path") != prefix:
                    problems.append(f"{where}: externalAuth.http.path must be {prefix} (decision.envoy_path_prefix)")
    for name, p in providers.items():
        for key, proto in (("envoyExtAuthzGrpc", "grpc"), ("envoyExtAuthzHttp", "http")):
            if key in p:
                port_ok(f"mesh provider {name}", proto, p[key].get("port", 0))
                if proto == "http" and p[key].get("pathPrefix") != prefix:
                    problems.append(f"mesh provider {name}: pathPrefix must be {prefix} (decision.envoy_path_prefix)")
    return problems
