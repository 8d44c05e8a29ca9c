"""Shared pieces of the runners: the dump layout, the pass marker, reading dump folders.

Dump layout (one folder per trace pass)::

    tmp/dumps/fi_trace_{slug}_tp{T}_ep{E}_ps{P}[_{quantization}]/
        <definition name>.json     one per unique (op, shape), written by FlashInfer's dumper
        _defc_pass.json            the pass marker: who made the folder, with what, and how it ended
        _defc_request.json         what the SGLang child was asked to do (sglang backend)
        _defc_phase.json           the child's last reported phase (sglang backend)
        _defc_trace.log            the child's stdout and stderr (sglang backend)

A folder holding ``_defc_pass.json`` belongs to defc: a new pass into it first removes the
previous pass's top-level ``*.json`` and ``_defc_*`` files (nothing else, nothing outside it).
A folder that exists, is not empty and has no marker is refused.
"""
from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from defc.compiler.errors import DefcError, Location
from defc.compiler.facts import load_facts, model_env, quant_key
from defc.compiler.load import MAX_NESTING, display_path, nesting_depth_problem, read_bytes
from defc.compiler.models import resolve_model
from defc.compiler.serving import Serving
from defc.compiler.write import atomic_write_text

RUNNERS_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DUMPS = os.path.join("tmp", "dumps")
# where trace and stage put staged dumps: not compile's tmp/flashinfer-trace, whose next compile of the
# same model would otherwise meet the dumper's different files as collisions
DEFAULT_STAGED = os.path.join("tmp", "traced-dataset")
MARKER = "_defc_pass.json"
REQUEST = "_defc_request.json"
PHASE = "_defc_phase.json"
LOG = "_defc_trace.log"
OWN_PREFIX = "_defc_"


def data_file(name: str) -> str:
    """A runners data file (YAML) shipped next to this module."""
    return os.path.join(RUNNERS_DIR, name)


def pass_folder_name(slug: str, tp: int, ep: int, page_size: int, quantization: Optional[str] = None) -> str:
    name = f"fi_trace_{slug}_tp{tp}_ep{ep}_ps{page_size}"
    if quantization:
        name += f"_{quantization}"
    return name


def write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_marker(folder: str) -> Optional[Dict[str, Any]]:
    p = os.path.join(folder, MARKER)
    if not os.path.exists(p):
        return None
    try:
        m = json.loads(read_bytes(p, "pass marker").decode("utf-8"))
        return m if isinstance(m, dict) else None
    except (DefcError, OSError, ValueError, RecursionError):
        return None


def prepare_pass_folder(folder: str) -> List[str]:
    """Make ``folder`` ready for a new pass; return the files of a previous pass that were removed.

    Only a folder that is absent, empty or marked as defc's own is used; in an own folder only
    the top-level ``*.json`` dumps and ``_defc_*`` files of the previous pass are removed.
    """
    shown = display_path(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DefcError("dump folder path exists and is not a folder", Location(shown))
    os.makedirs(folder, exist_ok=True)
    entries = os.listdir(folder)
    if not entries:
        return []
    if MARKER not in entries:
        raise DefcError("dump folder exists, is not empty and was not made by defc trace "
                        f"(no {MARKER}); empty it or choose another --dumps folder", Location(shown))
    removed = []
    for e in sorted(entries):
        p = os.path.join(folder, e)
        if os.path.isfile(p) and not os.path.islink(p) and (e.endswith(".json") or e.startswith(OWN_PREFIX)):
            os.unlink(p)
            removed.append(e)
    return removed


@dataclass
class DumpFile:
    path: str
    doc: Optional[Dict[str, Any]]
    error: str = ""


@dataclass
class DumpSet:
    """The dumps of one pass folder (or a dataset), with what is known about how they were made."""

    folder: str
    kind: str                       # pass | dataset
    source: str                     # sglang | replay | flashinfer | dataset | unknown
    marker: Optional[Dict[str, Any]]
    files: List[DumpFile] = field(default_factory=list)

    @property
    def tp(self) -> Optional[int]:
        return (self.marker or {}).get("tp")

    @property
    def ep(self) -> Optional[int]:
        return (self.marker or {}).get("ep")

    @property
    def page_size(self) -> Optional[int]:
        return (self.marker or {}).get("page_size")

    def label(self) -> str:
        m = self.marker or {}
        if self.kind == "dataset":
            return f"dataset {display_path(self.folder)}"
        bits = [f"{self.source} pass"]
        for k in ("tp", "ep", "page_size"):
            if m.get(k) is not None:
                bits.append(f"{'ps' if k == 'page_size' else k}{m[k]}")
        return " ".join(bits) + f" ({display_path(self.folder)})"


# the fields of a Definition dump and the JSON type each must have
DUMP_FIELDS = {"name": str, "op_type": str, "description": str, "reference": str,
               "axes": dict, "inputs": dict, "outputs": dict, "tags": list, "constraints": list}
_JSON_TYPE = {str: "a string", dict: "an object", list: "a list", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


def _json_type(v: Any) -> str:
    return _JSON_TYPE.get(type(v), type(v).__name__)


def dump_shape_problem(doc: Dict[str, Any]) -> str:
    """Why a dump's top-level fields have the wrong JSON types ('' when they do not)."""
    for key, want in DUMP_FIELDS.items():
        v = doc.get(key)
        if v is not None and not isinstance(v, want):
            return f"field '{key}' is {_json_type(v)}, expected {_JSON_TYPE[want]}"
    for t in doc.get("tags") or []:
        if not isinstance(t, str):
            return f"field 'tags' holds {_json_type(t)}, expected strings"
    for key in ("axes", "inputs", "outputs"):
        for name, v in (doc.get(key) or {}).items():
            if not isinstance(v, dict):
                return f"{key}.{name} is {_json_type(v)}, expected an object"
    return ""


def read_json_file(path: str) -> DumpFile:
    try:
        raw = read_bytes(path, "dump")
        doc = json.loads(raw.decode("utf-8"))
    except DefcError as e:
        return DumpFile(path, None, e.message)
    except UnicodeDecodeError:
        return DumpFile(path, None, "not UTF-8")
    except RecursionError:
        return DumpFile(path, None, f"nested more than {MAX_NESTING} levels deep")
    except ValueError as e:
        return DumpFile(path, None, f"not valid JSON ({str(e).splitlines()[0][:80]}); a pass killed mid-write?")
    except OSError as e:
        return DumpFile(path, None, f"cannot read: {e.strerror}")
    if not isinstance(doc, dict):
        return DumpFile(path, None, f"not a JSON object ({type(doc).__name__})")
    if nesting_depth_problem(doc):
        return DumpFile(path, None, f"nested more than {MAX_NESTING} levels deep")
    problem = dump_shape_problem(doc)
    if problem:
        return DumpFile(path, None, problem)
    return DumpFile(path, doc)


def check_marker(marker: Optional[Dict[str, Any]], folder: str) -> Optional[Dict[str, Any]]:
    """A pass marker whose fields have the types defc writes; else a located one-line error."""
    if marker is None:
        return None
    where = Location(display_path(os.path.join(folder, MARKER)))
    for key in ("model", "backend", "quantization", "status"):
        v = marker.get(key)
        if v is not None and not isinstance(v, str):
            raise DefcError(f"expected a string, got {json.dumps(v)[:40]}", where, key)
    for key in ("tp", "ep", "dp", "page_size"):
        v = marker.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DefcError(f"expected a positive integer, got {json.dumps(v)[:40]}", where, key)
    if marker.get("definitions") is not None and not isinstance(marker.get("definitions"), list):
        raise DefcError(f"expected a list, got {_json_type(marker['definitions'])}", where, "definitions")
    return marker


def _dump_files(folder: str) -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "*.json"))
                  if not os.path.basename(p).startswith("_") and os.path.isfile(p))


def load_pass_folder(folder: str) -> DumpSet:
    marker = check_marker(read_marker(folder), folder)
    source = (marker or {}).get("backend") or "unknown"
    ds = DumpSet(folder, "pass", source, marker)
    ds.files = [read_json_file(p) for p in _dump_files(folder)]
    return ds


def load_dataset(folder: str, model: Optional[str] = None) -> DumpSet:
    ds = DumpSet(folder, "dataset", "dataset", None)
    files = [read_json_file(p) for p in sorted(glob.glob(os.path.join(folder, "definitions", "*", "*.json")))]
    if model:
        tagged = [f for f in files if f.doc is not None and any(str(t).startswith("model:") for t in f.doc.get("tags") or [])]
        if tagged:
            files = [f for f in files if f.doc is None or f"model:{model}" in (f.doc.get("tags") or [])]
    ds.files = files
    return ds


def find_dump_sets(path: str, model: Optional[str] = None) -> List[DumpSet]:
    """A pass folder, a dataset (has definitions/), or a folder of pass folders (tmp/dumps)."""
    shown = display_path(path)
    if not os.path.exists(path):
        raise DefcError("no such folder", Location(shown))
    if not os.path.isdir(path):
        raise DefcError("expected a dump folder or a dataset folder, got a file", Location(shown))
    if os.path.isdir(os.path.join(path, "definitions")):
        return [load_dataset(path, model)]
    if os.path.exists(os.path.join(path, MARKER)) or _dump_files(path):
        return [load_pass_folder(path)]
    subs = sorted(d for d in glob.glob(os.path.join(path, "fi_trace_*")) if os.path.isdir(d))
    if model:
        subs = [d for d in subs if os.path.basename(d).startswith(f"fi_trace_{model}_tp")]
    if subs:
        return [load_pass_folder(d) for d in subs]
    raise DefcError("no dumps here: expected *.json dumps, a definitions/ folder, or fi_trace_* pass folders"
                    + (f" for model {model}" if model else ""), Location(shown))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def resolve_model_and_quant(model: Optional[str], config: Optional[str] = None, hf_repo_id: Optional[str] = None):
    """The model (catalogue slug, config path or HF repo id) and its own quantization key."""
    info = resolve_model(model, config, hf_repo_id)
    facts = load_facts()
    probe = model_env(info.config, Serving().symbols(), facts, info.slug, info.origin)
    return info, quant_key(facts, probe.get("quant_method"))


def quant_key_of(word: Optional[str]) -> Optional[str]:
    if not word:
        return None
    return quant_key(load_facts(), word)
