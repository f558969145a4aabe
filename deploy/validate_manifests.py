#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests under deploy/ (run by deploy/validate.sh).

1. Every YAML document parses (duplicate keys are errors: PyYAML would silently keep the last).
2. Every object validates, strictly (unknown fields are errors), against the Kubernetes OpenAPI
   JSON schemas shipped inside the `kubernetes-validate` wheel, for the oldest and the newest
   Kubernetes version we support. An unknown apiVersion/kind is an error too.
3. Consistency inside each rendered bundle (one kustomization): Service and PDB selectors select a
   workload, named ports and probe ports exist, HPA targets exist, ConfigMaps the pods mount exist,
   probes use the admin port and the config lets kubelet reach it, shutdown_grace fits in
   terminationGracePeriodSeconds.

4. Custom resources of the decision-mode examples (Istio AuthorizationPolicy, Gateway API
   HTTPRoute/ReferenceGrant) against the CRD schemas in deploy/schemas/, and Istio's mesh config
   (the `istio` ConfigMap) against its extension-provider schema (validate_crds.py); with
   --decision GATEWAY.yaml, their ports, path prefix and provider names against each other and
   against that extoken config.

Usage:
  validate_manifests.py [--extract-configs DIR] BUNDLE.yaml... [--raw FILE.yaml...]
                        [--decision GATEWAY.yaml]
  validate_manifests.py --required-env GATEWAY.yaml     # prints the ${VAR}s without a default

Exit status 1 on any error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import yaml

import validate_crds

try:
    import kubernetes_validate
    from kubernetes_validate.utils import (
        SchemaNotFoundError,
        ValidationError,
        VersionNotSupportedError,
    )
except ImportError:  # --required-env needs only PyYAML
    kubernetes_validate = None

# Oldest supported: the sidecar example uses the preStop `sleep` action (on by default since 1.30).
K8S_VERSIONS = ["1.30.0", "latest"]

ADMIN_PORT = 9090
# Kubernetes sends SIGKILL terminationGracePeriodSeconds after SIGTERM; extoken's drain
# (shutdown_grace) must end before that with some margin.
GRACE_MARGIN_S = 3

errors: list[str] = []


def error(where: str, msg: str) -> None:
    errors.append(f"{where}: {msg}")
    print(f"  FAIL {where}: {msg}")


class UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_docs(path: str) -> list[dict]:
    with open(path) as f:
        try:
            docs = [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d is not None]
        except yaml.YAMLError as e:
            error(path, f"YAML: {e}")
            return []
    out = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            error(f"{path}[{i}]", "document is not a mapping")
            continue
        out.append(d)
    return out


def name_of(obj: dict) -> str:
    md = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{md.get('name', '?')}"


def schema_check(path: str, obj: dict) -> None:
    where = f"{path} {name_of(obj)}"
    for key in ("apiVersion", "kind", "metadata"):
        if key not in obj:
            error(where, f"missing {key}")
            return
    if not (obj.get("metadata") or {}).get("name"):
        error(where, "metadata.name missing")
    if validate_crds.known(obj):
        for problem in validate_crds.check(obj):
            error(where, f"CRD schema: {problem}")
        if not any(e.startswith(where + ":") for e in errors):
            print(f"  ok   {where} (CRD schema in deploy/schemas, strict)")
        return
    for problem in validate_crds.mesh_config(obj) or []:
        error(where, f"mesh config: {problem}")
    for v in K8S_VERSIONS:
        version = kubernetes_validate.utils.latest_version() if v == "latest" else v
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except ValidationError as e:
            loc = ".".join(str(p) for p in e.absolute_path) or "(root)"
            error(where, f"k8s {version}: {loc}: {e.message}")
        except SchemaNotFoundError as e:
            error(where, f"k8s {version}: {e.message}")
        except VersionNotSupportedError as e:
            error(where, e.message)
    if not any(e.startswith(where + ":") for e in errors):
        print(f"  ok   {where} (schemas {', '.join(K8S_VERSIONS)}, strict)")


# ---- consistency checks inside one rendered bundle -------------------------------------------


def selects(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def pod_templates(objs):
    for o in objs:
        if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            yield o, (o.get("spec") or {}).get("template") or {}


def parse_duration_s(text) -> float | None:
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
    if not m:
        return None
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def gateway_config(objs, cm_name: str) -> dict | None:
    for o in objs:
        if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == cm_name:
            text = (o.get("data") or {}).get("gateway.yaml")
            if text is None:
                return None
            return yaml.load(text, Loader=UniqueKeyLoader)
    return None


def bundle_checks(path: str, objs: list[dict]) -> None:
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o.get("kind"), []).append(o)
    templates = list(pod_templates(objs))

    for svc in by_kind.get("Service", []):
        where = f"{path} {name_of(svc)}"
        sel = (svc.get("spec") or {}).get("selector")
        matched = [t for _, t in templates if selects(sel, (t.get("metadata") or {}).get("labels") or {})]
        if not matched:
            error(where, f"selector {sel} selects no pod template in this bundle")
            continue
        for p in (svc["spec"].get("ports") or []):
            tp = p.get("targetPort", p.get("port"))
            ports = [
                cp
                for t in matched
                for c in (t.get("spec") or {}).get("containers") or []
                for cp in c.get("ports") or []
            ]
            if isinstance(tp, str) and not any(cp.get("name") == tp for cp in ports):
                error(where, f"targetPort {tp!r} is no container port name")
            if isinstance(tp, int) and not any(cp.get("containerPort") == tp for cp in ports):
                error(where, f"targetPort {tp} is no containerPort")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if not any(selects(sel, (t.get("metadata") or {}).get("labels") or {}) for _, t in templates):
            error(f"{path} {name_of(pdb)}", f"selector {sel} selects no pod template")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        target = [o for o in objs if o.get("kind") == ref.get("kind") and o["metadata"]["name"] == ref.get("name")]
        where = f"{path} {name_of(hpa)}"
        if not target:
            error(where, f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} not in this bundle")
            continue
        if "replicas" in (target[0].get("spec") or {}):
            error(where, "target sets spec.replicas: every apply would fight the HPA")
        uses_cpu = any(
            (m.get("resource") or {}).get("name") == "cpu" for m in hpa["spec"].get("metrics") or []
        )
        for c in (target[0]["spec"]["template"]["spec"].get("containers") or []):
            if uses_cpu and not ((c.get("resources") or {}).get("requests") or {}).get("cpu"):
                error(where, f"container {c['name']} has no CPU request (CPU utilization needs it)")

    for wl, t in templates:
        where = f"{path} {name_of(wl)}"
        spec = t.get("spec") or {}
        sel = ((wl.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if not selects(sel, (t.get("metadata") or {}).get("labels") or {}):
            error(where, "spec.selector does not match the pod template's labels")
        configmaps = {o["metadata"]["name"] for o in by_kind.get("ConfigMap", [])}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec.get("containers") or []:
            cwhere = f"{where} container {c['name']}"
            port_names = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for vm in c.get("volumeMounts") or []:
                if vm["name"] not in volumes:
                    error(cwhere, f"volumeMount {vm['name']!r} has no volume")
            res = c.get("resources") or {}
            if not (res.get("requests") or {}).get("memory") or not (res.get("limits") or {}).get("memory"):
                error(cwhere, "needs memory request and limit")
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                error(cwhere, "securityContext.allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                error(cwhere, "securityContext.readOnlyRootFilesystem must be true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                error(cwhere, "securityContext.capabilities.drop must contain ALL")

            image = c.get("image", "")
            if "extoken" not in image.rsplit("/", 1)[-1]:
                continue
            # --- the extoken container ---
            for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                hg = ((c.get(probe) or {}).get("httpGet")) or {}
                if hg.get("path") != path_:
                    error(cwhere, f"{probe} must be httpGet {path_}")
                port = hg.get("port")
                num = port_names.get(port) if isinstance(port, str) else port
                if num != ADMIN_PORT:
                    error(cwhere, f"{probe} must target the admin port {ADMIN_PORT} (got {port!r})")
            if not (spec.get("securityContext") or {}).get("runAsNonRoot") and not sc.get("runAsNonRoot"):
                error(cwhere, "runAsNonRoot must be set")
            cm_vols = [v for v in volumes.values() if "configMap" in v]
            if not cm_vols:
                error(cwhere, "no ConfigMap volume with gateway.yaml")
                continue
            cm_name = cm_vols[0]["configMap"]["name"]
            if configmaps and cm_name not in configmaps:
                error(cwhere, f"ConfigMap {cm_name!r} is not in this bundle")
                continue
            cfg = gateway_config(objs, cm_name)
            if cfg is None:
                if configmaps:
                    error(cwhere, f"ConfigMap {cm_name!r} has no gateway.yaml key")
                continue
            admin = str(cfg.get("admin_listen", "127.0.0.1:9090"))
            if not admin.startswith(("0.0.0.0:", "[::]:")) or not admin.endswith(f":{ADMIN_PORT}"):
                error(cwhere, f"gateway.yaml admin_listen {admin!r}: kubelet probes need 0.0.0.0:{ADMIN_PORT}")
            listen = str(cfg.get("listen", "0.0.0.0:8080"))
            lport = int(listen.rsplit(":", 1)[-1])
            if lport not in port_names.values():
                error(cwhere, f"gateway.yaml listen port {lport} is no containerPort")
            sg = parse_duration_s(cfg.get("shutdown_grace", "25s"))
            sd = parse_duration_s(cfg.get("shutdown_delay", "5s"))
            if sg is not None and sd is not None and sd >= sg:
                error(cwhere, f"gateway.yaml shutdown_delay {sd:g}s must be shorter than shutdown_grace {sg:g}s")
            prestop = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")) or 0
            if sg is None:
                error(cwhere, f"gateway.yaml shutdown_grace {cfg.get('shutdown_grace')!r} unreadable")
            elif prestop + sg + GRACE_MARGIN_S > grace:
                error(
                    cwhere,
                    f"preStop {prestop}s + shutdown_grace {sg:g}s + {GRACE_MARGIN_S}s margin > "
                    f"terminationGracePeriodSeconds {grace}",
                )


def extract_configs(path: str, objs: list[dict], outdir: str) -> None:
    for o in objs:
        if o.get("kind") == "ConfigMap" and "gateway.yaml" in (o.get("data") or {}):
            base = os.path.splitext(os.path.basename(path))[0]
            out = os.path.join(outdir, f"{base}--{o['metadata']['name']}.gateway.yaml")
            with open(out, "w") as f:
                f.write(o["data"]["gateway.yaml"])
            print(f"  ->   {out}")


def required_env(path: str) -> list[str]:
    text = open(path).read().replace("$${", "")
    return sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="*", help="rendered kustomizations (one bundle each)")
    ap.add_argument("--raw", nargs="*", default=[], help="single manifest files (schema only)")
    ap.add_argument("--extract-configs", metavar="DIR")
    ap.add_argument("--required-env", metavar="GATEWAY_YAML")
    ap.add_argument("--decision", metavar="GATEWAY_YAML",
                    help="check the raw files as decision-mode examples of this extoken config")
    a = ap.parse_args()

    if a.required_env:
        print(" ".join(required_env(a.required_env)))
        return 0
    if kubernetes_validate is None:
        print("kubernetes-validate is not installed", file=sys.stderr)
        return 2

    count = 0
    for path in a.bundles:
        print(f"bundle {path}")
        before = len(errors)
        objs = load_docs(path)
        if not objs:
            error(path, "no Kubernetes objects")
        for o in objs:
            schema_check(path, o)
            count += 1
        if objs and len(errors) == before:
            bundle_checks(path, objs)
        if a.extract_configs:
            extract_configs(path, objs, a.extract_configs)
    raw_objs = []
    for path in a.raw:
        print(f"file {path}")
        objs = load_docs(path)
        if not objs:
            error(path, "no Kubernetes objects")
        for o in objs:
            schema_check(path, o)
            raw_objs.append((path, o))
            count += 1
    if a.decision:
        print(f"decision examples against {a.decision}")
        for problem in validate_crds.decision_consistency(raw_objs, a.decision):
            error("decision examples", problem)
    if errors:
        print(f"{len(errors)} problem(s) in the manifests")
        return 1
    print(f"{count} objects valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
