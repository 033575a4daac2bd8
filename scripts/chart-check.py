#!/usr/bin/env python3
"""Renders the Helm chart for real and checks every manifest, for tests/helm.rs.

Helm v4's own SDK renders and lints (PyPI's helm-python-sdk, no helm binary), and
kubernetes-validate checks each manifest against Kubernetes 1.30's schemas offline, strictly
(an unknown field is an error). Reads on stdin {"chart": DIR, "docs": FILE, "cases":
[{"name": ..., "values": {...}}]}; the `helm install` examples of FILE are cases too, their
--set flags parsed as Helm parses them. Prints one JSON object:
  {"lint": [messages of `helm lint --strict`],
   "cases": {name: {"values": ..., "objects": [every manifest, parsed], "notes": NOTES.txt,
                    "problems": [what is wrong]}}}
A problem is a template that fails to render, a manifest with a key twice (Kubernetes' YAML
decoding refuses those), or one kubernetes-validate refuses. Custom resources (the Prometheus
Operator's) have no schema there: they are parsed and left to the caller's assertions.
Run by scripts/test's venv: target/tools/chart/bin/python scripts/chart-check.py
"""

import json
import re
import shlex
import sys

import helm_python as helm
import kubernetes_validate
import yaml

KUBERNETES = "1.30.0"
CUSTOM = ("monitoring.coreos.com/",)


class UniqueKeys(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key twice."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def doc_examples(path):
    """Each `helm install` command of a document, as (name, values from its --set flags)."""
    text = open(path, encoding="utf-8").read().replace("\\\n", " ")
    examples = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("helm install "):
            continue
        words = shlex.split(line)
        values = {}
        for flag, value in zip(words, words[1:]):
            if flag == "--set":
                values = merge(values, helm.parse_set_string(value))
        examples.append((f"{path.rsplit('/', 1)[-1]}: {line[:80]}", values))
    return examples


def merge(into, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def check(chart, values):
    result = {"values": values, "objects": [], "notes": "", "problems": []}
    try:
        manifests = chart.render(values, name="rl", namespace="ratelimitd", is_install=True)
    except Exception as e:  # the SDK's errors say which template and why
        result["problems"].append(f"render: {type(e).__name__}: {e}")
        return result
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            result["notes"] = text
            continue
        try:
            docs = [d for d in yaml.load_all(text, Loader=UniqueKeys) if d]
        except yaml.YAMLError as e:
            result["problems"].append(f"{path}: {e}")
            continue
        for doc in docs:
            result["objects"].append(doc)
            if doc.get("apiVersion", "").startswith(CUSTOM):
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except Exception as e:
                name = f'{doc.get("kind")}/{doc.get("metadata", {}).get("name")}'
                result["problems"].append(f"{path} {name}: {type(e).__name__}: {str(e).split(chr(10) * 2)[0]}")
    return result


def main():
    request = json.load(sys.stdin)
    chart = helm.Chart.load(request["chart"])
    cases = [(c["name"], c["values"]) for c in request.get("cases", [])]
    if request.get("docs"):
        cases += doc_examples(request["docs"])
    lint = helm.lint(request["chart"], strict=True, kube_version=f"v{KUBERNETES}")
    report = {
        "lint": [m.get("error", str(m)) for m in lint.get("messages") or []] + list(lint.get("errors") or []),
        "cases": {name: check(chart, values) for name, values in cases},
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
