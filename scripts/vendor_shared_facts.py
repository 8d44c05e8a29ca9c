#!/usr/bin/env python3
"""MAINTAINER TOOL — the tests never run this, and nothing under tests/ reads ../shared.

Re-derives the facts that tests/data/ vendors from a ../shared checkout beside the repository:

  tests/data/golden_definitions.json   each curated definition under ../shared/golden/definitions:
                                       name, op_type, tags, axes (type, value), constraints, inputs and
                                       outputs (shape, dtype) -- no descriptions, no reference code
  tests/data/model_config_facts.json   each ../shared/model-configs/<slug>.json: its top-level keys that
                                       are not private ("_...") and not objects, with their values
  tests/data/cookbook/v0.5.6/kimi-k2.yaml
                                       ../shared/cookbook/generated/v0.5.6/kimi-k2.yaml (serving configs),
                                       without its prose description line

Usage:  python3 scripts/vendor_shared_facts.py [path/to/shared]
"""
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")


def golden(shared):
    out = {}
    for path in sorted(glob.glob(os.path.join(shared, "golden", "definitions", "*", "*.json"))):
        with open(path) as fh:
            d = json.load(fh)
        out[d["name"]] = {
            "op_type": d["op_type"],
            "tags": d.get("tags", []),
            "axes": {k: {f: v[f] for f in ("type", "value") if f in v} for k, v in d["axes"].items()},
            "constraints": d.get("constraints", []),
            "inputs": {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in d["inputs"].items()},
            "outputs": {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in d["outputs"].items()},
        }
    return dict(sorted(out.items()))


def model_configs(shared):
    out = {}
    for path in sorted(glob.glob(os.path.join(shared, "model-configs", "*.json"))):
        with open(path) as fh:
            cfg = json.load(fh)
        slug = os.path.splitext(os.path.basename(path))[0]
        out[slug] = {k: v for k, v in sorted(cfg.items()) if not k.startswith("_") and not isinstance(v, dict)}
    return out


def dump(obj, path):
    """One entry per line under the top level, so diffs stay readable."""
    lines = ["{"]
    items = list(obj.items())
    for i, (k, v) in enumerate(items):
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)}" + ("," if i < len(items) - 1 else ""))
    lines.append("}")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main():
    shared = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared"))
    os.makedirs(DATA, exist_ok=True)
    g = golden(shared)
    m = model_configs(shared)
    dump(g, os.path.join(DATA, "golden_definitions.json"))
    dump(m, os.path.join(DATA, "model_config_facts.json"))
    src = os.path.join(shared, "cookbook", "generated", "v0.5.6", "kimi-k2.yaml")
    dst = os.path.join(DATA, "cookbook", "v0.5.6", "kimi-k2.yaml")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src) as fh:
        kept = [ln for ln in fh if not ln.lstrip().startswith("description:")]
    with open(dst, "w") as fh:
        fh.write("# sgl-cookbook data/models/generated/v0.5.6/kimi-k2.yaml (serving configurations only).\n")
        fh.writelines(kept)
    print(f"{len(g)} golden definitions, {len(m)} model configs, 1 cookbook YAML -> {os.path.relpath(DATA, ROOT)}")


if __name__ == "__main__":
    main()
