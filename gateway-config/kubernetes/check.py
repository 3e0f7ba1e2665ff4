#!/usr/bin/env python3
"""Checks the Kubernetes examples in this folder, offline.

kubernetes-validate holds only the schemas of Kubernetes' own kinds, not of Istio's or Envoy
Gateway's custom resources. So every document is checked twice:

- against kubernetes-validate's schema when it has one for the kind (strict: unknown fields are
  errors);
- against the partial schemas below, written from the CRDs (Istio 1.2x MeshConfig and
  AuthorizationPolicy, Envoy Gateway v1.x SecurityPolicy, Gateway API ReferenceGrant), covering
  the fields these examples use, with unknown fields refused at those levels so a misspelt key
  fails;

and then the documents are checked against each other: the AuthorizationPolicy names a
provider that the mesh config declares, the SecurityPolicy's backend is the Service the
ReferenceGrant lets it use, and every path to usher ends at the internal listener's port.

Usage: check.py [FILE...]   (default: every *.yaml beside this script). Exit 1 on a problem.
"""

import glob
import os
import sys

import jsonschema
import yaml

try:
    import kubernetes_validate
except ImportError:  # the partial schemas below still run
    kubernetes_validate = None

USHER_PORT = 9191


def obj(properties, required=(), extra=False):
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": extra,
    }


STR = {"type": "string", "minLength": 1}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
DURATION = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"}
METADATA = obj({"name": STR, "namespace": STR}, ["name", "namespace"], extra=True)


def resource(spec):
    """A namespaced custom resource with this `spec` schema."""
    return obj(
        {"apiVersion": STR, "kind": STR, "metadata": METADATA, "spec": spec},
        ["apiVersion", "kind", "metadata", "spec"],
    )

SCHEMAS = {
    ("install.istio.io/v1alpha1", "IstioOperator"): resource(
        obj(
            {
                "meshConfig": obj(
                    {
                        "extensionProviders": {
                            "type": "array",
                            "minItems": 1,
                            "items": obj(
                                {
                                    "name": STR,
                                    "envoyExtAuthzGrpc": obj(
                                        {
                                            "service": STR,
                                            "port": PORT,
                                            "timeout": DURATION,
                                            "failOpen": {"type": "boolean"},
                                            "statusOnError": {
                                                "type": "string",
                                                "pattern": "^[1-5][0-9][0-9]$",
                                            },
                                            "includeRequestBodyInCheck": {"type": "object"},
                                        },
                                        ["service", "port"],
                                    ),
                                },
                                ["name", "envoyExtAuthzGrpc"],
                            ),
                        }
                    },
                    ["extensionProviders"],
                    extra=True,
                )
            },
            ["meshConfig"],
            extra=True,
        ),
    ),
    ("security.istio.io/v1", "AuthorizationPolicy"): resource(
        obj(
            {
                "selector": obj(
                    {"matchLabels": {"type": "object", "additionalProperties": STR}},
                    ["matchLabels"],
                ),
                "targetRefs": {"type": "array"},
                "action": {"enum": ["CUSTOM"]},
                "provider": obj({"name": STR}, ["name"]),
                "rules": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            },
            ["action", "provider", "rules"],
        ),
    ),
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"): resource(
        obj(
            {
                "targetRefs": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {
                            "group": {"enum": ["gateway.networking.k8s.io"]},
                            "kind": {"enum": ["Gateway", "HTTPRoute", "GRPCRoute"]},
                            "name": STR,
                            "sectionName": STR,
                        },
                        ["group", "kind", "name"],
                    ),
                },
                "extAuth": obj(
                    {
                        "failOpen": {"type": "boolean"},
                        "headersToExtAuth": {"type": "array", "items": STR},
                        "grpc": obj(
                            {
                                "backendRefs": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": obj(
                                        {
                                            "group": {"type": "string"},
                                            "kind": {"enum": ["Service", "Backend"]},
                                            "name": STR,
                                            "namespace": STR,
                                            "port": PORT,
                                        },
                                        ["name", "port"],
                                    ),
                                }
                            },
                            ["backendRefs"],
                        ),
                    },
                    ["grpc"],
                ),
            },
            ["targetRefs", "extAuth"],
        ),
    ),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): resource(
        obj(
            {
                "from": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {"group": {"type": "string"}, "kind": STR, "namespace": STR},
                        ["group", "kind", "namespace"],
                    ),
                },
                "to": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {"group": {"type": "string"}, "kind": STR, "name": STR},
                        ["group", "kind"],
                    ),
                },
            },
            ["from", "to"],
        ),
    ),
}


def documents(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    yield os.path.basename(path), doc


def check(paths):
    problems = []
    docs = list(documents(paths))
    if not docs:
        problems.append("no documents")
    for name, doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        where = f"{name}: {key[1]} {doc.get('metadata', {}).get('name')}"
        checked = False
        if kubernetes_validate is not None:
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
                checked = True
            except kubernetes_validate.SchemaNotFoundError:
                pass
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{where}: {e.message}")
                checked = True
        schema = SCHEMAS.get(key)
        if schema is not None:
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
                path = ".".join(str(p) for p in e.absolute_path)
                problems.append(f"{where}: {path}: {e.message}")
            checked = True
        if not checked:
            problems.append(f"{where}: no schema for {key[0]} {key[1]}")

    def of_kind(kind):
        return [doc for _, doc in docs if doc.get("kind") == kind]

    def dig(doc, *keys):
        for k in keys:
            doc = doc.get(k, {}) if isinstance(doc, dict) else {}
        return doc

    providers = {
        p.get("name"): p.get("envoyExtAuthzGrpc", {})
        for op in of_kind("IstioOperator")
        for p in dig(op, "spec", "meshConfig").get("extensionProviders", [])
    }
    for provider in providers.values():
        if provider.get("port") != USHER_PORT:
            problems.append(f"Istio provider port {provider.get('port')} is not {USHER_PORT}")
        if provider.get("failOpen", False):
            problems.append("Istio provider must not fail open")
    for policy in of_kind("AuthorizationPolicy"):
        name = dig(policy, "spec", "provider").get("name")
        if name not in providers:
            problems.append(f"AuthorizationPolicy names provider {name!r}, not in the mesh config")
    grants = of_kind("ReferenceGrant")
    for policy in of_kind("SecurityPolicy"):
        ext = dig(policy, "spec", "extAuth")
        if ext.get("failOpen", False):
            problems.append("SecurityPolicy must not fail open")
        here = dig(policy, "metadata").get("namespace")
        for ref in dig(ext, "grpc").get("backendRefs", []):
            if ref.get("port") != USHER_PORT:
                problems.append(f"SecurityPolicy backend port {ref.get('port')} is not {USHER_PORT}")
            there = ref.get("namespace", here)
            if there == here:
                continue
            granted = any(
                dig(g, "metadata").get("namespace") == there
                and any(
                    f.get("kind") == "SecurityPolicy" and f.get("namespace") == here
                    for f in dig(g, "spec").get("from", [])
                )
                and any(
                    t.get("kind") == "Service" and t.get("name") in (None, ref.get("name"))
                    for t in dig(g, "spec").get("to", [])
                )
                for g in grants
            )
            if not granted:
                problems.append(
                    f"SecurityPolicy in {here} refers to {there}/{ref.get('name')} "
                    "without a ReferenceGrant"
                )
    return problems


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    paths = sys.argv[1:] or sorted(glob.glob(os.path.join(here, "*.yaml")))
    problems = check(paths)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {len(paths)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
