"""Models: the bundled catalogue, local config.json files, and the Hugging Face Hub.

``resolve_model("llama-3.1-8b")`` reads ``catalogue/models/llama-3.1-8b.yaml``;
``resolve_model("./my-model")`` or ``resolve_model("./my-model/config.json")`` reads a local file;
``resolve_model(None, hf_repo_id="org/name")`` (or a model argument that looks like a repo id)
downloads ``config.json`` through ``huggingface_hub`` — honouring its cache and
``HF_HUB_OFFLINE`` — and fails with one clear line when offline and not cached.
"""
from __future__ import annotations

import difflib
import glob
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import DefcError, Location
from .load import display_path, load_json, load_safe_yaml
from .paths import CATALOGUE_DIR

SLUG = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class ModelInfo:
    slug: str
    config: Dict[str, Any]
    origin: str                      # where the config came from (file path or hub)
    hf_repo_id: Optional[str] = None
    source: str = ""
    cookbook_model_paths: List[str] = field(default_factory=list)
    note: str = ""


def catalogue_dir() -> str:
    return os.path.join(CATALOGUE_DIR, "models")


def catalogue_slugs() -> List[str]:
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(catalogue_dir(), "*.yaml")))


# counts a config.json may leave out or set to null, but never to zero, a negative or a non-integer
POSITIVE_COUNTS = ("num_attention_heads", "num_key_value_heads", "hidden_size", "num_hidden_layers")
WRAPPERS = ("text_config", "llm_config", "language_config")


def _key_location(path: str, where: str, key: str) -> Location:
    """Where ``"key":`` first appears in a JSON file (for a message; line 0 if not found)."""
    try:
        from .load import read_text
        text = read_text(path, "config.json")
    except DefcError:
        return Location(where)
    m = re.search(re.escape(json.dumps(key)) + r"\s*:", text)
    if not m:
        return Location(where)
    return Location(where, text.count("\n", 0, m.start()) + 1, m.start() - text.rfind("\n", 0, m.start()))


def _check_config(config: Any, where: str, path: Optional[str] = None) -> Dict[str, Any]:
    if not isinstance(config, dict):
        raise DefcError(f"config.json must be a JSON object, got {type(config).__name__}", Location(where))
    for part in [config] + [config[w] for w in WRAPPERS if isinstance(config.get(w), dict)]:
        for key in POSITIVE_COUNTS:
            v = part.get(key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v <= 0):
                continue        # other wrong types are reported where a formula reads them
            raise DefcError(f"must be a positive integer, got {v}",
                            _key_location(path, where, key) if path else Location(where), key)
    return config


def load_catalogue_entry(slug: str) -> ModelInfo:
    path = os.path.join(catalogue_dir(), f"{slug}.yaml")
    doc = load_safe_yaml(path, "catalogue entry")
    shown = display_path(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise DefcError("catalogue entry needs a 'config' mapping", Location(shown))
    return ModelInfo(slug=doc.get("slug", slug), config=doc["config"], origin=shown,
                     hf_repo_id=doc.get("hf_repo_id"), source=doc.get("source", ""),
                     cookbook_model_paths=list(doc.get("cookbook_model_paths") or []),
                     note=doc.get("note", ""))


def slug_for(name: str) -> str:
    s = re.sub(r"[^a-z0-9.\-]+", "-", name.lower()).strip("-.")
    return s or "model"


def load_local(path: str) -> ModelInfo:
    cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    config = _check_config(load_json(cfg_path, "config.json"), display_path(cfg_path), cfg_path)
    base = os.path.basename(os.path.dirname(os.path.abspath(cfg_path))) if os.path.basename(cfg_path) == "config.json" \
        else os.path.splitext(os.path.basename(cfg_path))[0]
    name = config.get("_name_or_path") if isinstance(config.get("_name_or_path"), str) else base
    slug = slug_for(name.rstrip("/").split("/")[-1] or base)
    # a local copy of a catalogue model keeps the catalogue's cookbook link
    info = ModelInfo(slug=slug, config=config, origin=display_path(cfg_path))
    if slug in catalogue_slugs():
        entry = load_catalogue_entry(slug)
        info.hf_repo_id, info.cookbook_model_paths = entry.hf_repo_id, entry.cookbook_model_paths
    return info


def load_from_hub(repo_id: str, revision: Optional[str] = None) -> ModelInfo:
    """Fetch config.json through huggingface_hub (cache first when HF_HUB_OFFLINE=1)."""
    if not REPO_ID.match(repo_id):
        raise DefcError(f"'{repo_id}' is not a Hugging Face repo id (expected org/name)", field="--hf-repo-id")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError as e:  # pragma: no cover - a core dependency
        raise DefcError(f"huggingface_hub is not installed: {e}") from None
    try:
        path = hf_hub_download(repo_id=repo_id, filename="config.json", revision=revision)
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise DefcError(f"config.json of '{repo_id}' is not in the Hugging Face cache and {why}; "
                        f"download it once online, or pass --config PATH", field="--hf-repo-id") from None
    except GatedRepoError:
        raise DefcError(f"'{repo_id}' is gated: log in with `hf auth login` and accept its licence",
                        field="--hf-repo-id") from None
    except RepositoryNotFoundError:
        raise DefcError(f"no Hugging Face repo '{repo_id}' (or it is private)", field="--hf-repo-id") from None
    except RevisionNotFoundError:
        raise DefcError(f"'{repo_id}' has no revision '{revision}'", field="--hf-repo-id") from None
    except EntryNotFoundError:
        raise DefcError(f"'{repo_id}' has no config.json", field="--hf-repo-id") from None
    except (OSError, ValueError) as e:
        raise DefcError(f"cannot fetch config.json of '{repo_id}': {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                        field="--hf-repo-id") from None
    config = _check_config(load_json(path, "config.json"), path, path)
    slug = slug_for(repo_id.split("/")[-1])
    info = ModelInfo(slug=slug, config=config, origin=f"hf://{repo_id}", hf_repo_id=repo_id,
                     source=f"Hugging Face Hub {repo_id}", cookbook_model_paths=[repo_id])
    for s in catalogue_slugs():
        entry = load_catalogue_entry(s)
        if entry.hf_repo_id == repo_id:
            info.slug, info.cookbook_model_paths = s, entry.cookbook_model_paths or [repo_id]
    return info


def resolve_model(model: Optional[str], config_path: Optional[str] = None,
                  hf_repo_id: Optional[str] = None) -> ModelInfo:
    """Find a model's config from the catalogue, a local path, or the Hub."""
    if config_path:
        info = load_local(config_path)
        if model and SLUG.match(model):
            info.slug = model
            if model in catalogue_slugs():
                entry = load_catalogue_entry(model)
                info.hf_repo_id, info.cookbook_model_paths = entry.hf_repo_id, entry.cookbook_model_paths
        return info
    if hf_repo_id:
        info = load_from_hub(hf_repo_id)
        if model and SLUG.match(model):
            info.slug = model
        return info
    if not model:
        raise DefcError("no model given: pass --model SLUG (see `defc models`), --config PATH or --hf-repo-id ORG/NAME",
                        field="--model")
    slugs = catalogue_slugs()
    if model in slugs:
        return load_catalogue_entry(model)
    if os.path.exists(model) or model.endswith(".json") or model.startswith((".", "/")):
        if not os.path.exists(model):
            raise DefcError("no such file or folder", Location(model), field="--model")
        return load_local(model)
    if REPO_ID.match(model):
        return load_from_hub(model)
    close = difflib.get_close_matches(model, slugs, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `defc models` lists the catalogue"
    raise DefcError(f"unknown model '{model}'{hint}", field="--model")
