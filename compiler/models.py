"""Models: the bundled catalogue, local config.json files, and the Hugging Face Hub.

``resolve_model("llama-3.1-8b")`` reads ``catalogue/models/llama-3.1-8b.yaml``;
``resolve_model("./my-model")`` or ``resolve_model("./my-model/config.json")`` reads a local file;
``resolve_model(None, hf_repo_id="org/name")`` (or a model argument that looks like a repo id;
``org/name@rev`` or ``revision=`` pins a branch, tag or commit) downloads ``config.json`` through
``huggingface_hub`` — honouring its cache and ``HF_HUB_OFFLINE`` — and records the commit it
resolved to.  A local folder in the Hugging Face cache layout
(``…/models--org--name/snapshots/<commit>/``) is that repo at that commit.  Offline and not
cached, or with the Hub unreachable and nothing cached, it fails with one line at once (one
metadata request, no retries) saying what to do.
"""
from __future__ import annotations

import difflib
import glob
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

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
    revision: Optional[str] = None   # the Hub revision asked for (branch, tag or commit), if any
    commit: Optional[str] = None     # the Hub commit the config was read at, if known
    config_file: Optional[str] = None  # the file the config was read from (absolute path)


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
                     note=doc.get("note", ""), config_file=os.path.abspath(path))


def slug_for(name: str) -> str:
    s = re.sub(r"[^a-z0-9.\-]+", "-", name.lower()).strip("-.")
    return s or "model"


def hf_cache_snapshot(path: str) -> Optional[Tuple[str, str]]:
    """(repo id, commit) when a config.json or folder lies in the Hugging Face cache layout,
    ``…/models--org--name/snapshots/<commit>/config.json``; else None."""
    folder = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
    commit, snaps = os.path.basename(folder), os.path.dirname(folder)
    repo_dir = os.path.basename(os.path.dirname(snaps))
    if os.path.basename(snaps) != "snapshots" or not repo_dir.startswith("models--") or not commit:
        return None
    repo_id = repo_dir[len("models--"):].replace("--", "/", 1)
    return (repo_id, commit) if repo_id else None


def _as_hub_model(info: ModelInfo, repo_id: str) -> ModelInfo:
    """A config from the Hub (or its cache) keeps the repo's name as its slug, or the catalogue's
    slug and cookbook link when the catalogue knows the repo."""
    info.slug, info.hf_repo_id, info.cookbook_model_paths = slug_for(repo_id.split("/")[-1]), repo_id, [repo_id]
    for s in catalogue_slugs():
        entry = load_catalogue_entry(s)
        if entry.hf_repo_id == repo_id:
            info.slug, info.cookbook_model_paths = s, entry.cookbook_model_paths or [repo_id]
    return info


def load_local(path: str) -> ModelInfo:
    cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    config = _check_config(load_json(cfg_path, "config.json"), display_path(cfg_path), cfg_path)
    base = os.path.basename(os.path.dirname(os.path.abspath(cfg_path))) if os.path.basename(cfg_path) == "config.json" \
        else os.path.splitext(os.path.basename(cfg_path))[0]
    info = ModelInfo(slug=slug_for(base), config=config, origin=display_path(cfg_path),
                     config_file=os.path.abspath(cfg_path))
    snapshot = hf_cache_snapshot(cfg_path) if os.path.basename(cfg_path) == "config.json" else None
    if snapshot:                    # a folder of the Hugging Face cache: that repo at that commit
        info.commit = snapshot[1]
        info.source = f"Hugging Face cache snapshot of {snapshot[0]} at {snapshot[1]}"
        return _as_hub_model(info, snapshot[0])
    name = config.get("_name_or_path") if isinstance(config.get("_name_or_path"), str) else base
    info.slug = slug_for(name.rstrip("/").split("/")[-1] or base)
    # a local copy of a catalogue model keeps the catalogue's cookbook link
    if info.slug in catalogue_slugs():
        entry = load_catalogue_entry(info.slug)
        info.hf_repo_id, info.cookbook_model_paths = entry.hf_repo_id, entry.cookbook_model_paths
    return info


def split_revision(ref: str) -> Tuple[str, Optional[str]]:
    """``org/name@rev`` → (``org/name``, ``rev``); without ``@``, (ref, None)."""
    repo, at, rev = ref.partition("@")
    return (repo, rev) if at else (ref, None)


def with_revision(model: str, revision: str) -> str:
    """A Hub model at a revision, as ``org/name@rev`` (for ``--revision``); a catalogue slug or a
    local path cannot take one, nor can ``org/name@other``."""
    if model in catalogue_slugs() or os.path.exists(model) or model.endswith(".json") or model.startswith((".", "/")):
        entry = load_catalogue_entry(model) if model in catalogue_slugs() else None
        hint = f" (--hf-repo-id {entry.hf_repo_id} --revision {revision})" if entry and entry.hf_repo_id else ""
        raise DefcError(f"--revision applies to a Hugging Face repo id, not '{model}'{hint}", field="--revision")
    repo, at = split_revision(model)
    if at is not None and at != revision:
        raise DefcError(f"'{model}' and --revision {revision} name different revisions", field="--revision")
    return f"{repo}@{revision}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


HUB_TIMEOUT_S = 5.0     # default wait for the Hub's answer (HF_HUB_ETAG_TIMEOUT overrides it)


def hub_timeout() -> float:
    raw = os.environ.get("HF_HUB_ETAG_TIMEOUT")
    try:
        return float(raw) if raw else HUB_TIMEOUT_S
    except ValueError:
        raise DefcError(f"must be a number of seconds, got {raw!r}", field="HF_HUB_ETAG_TIMEOUT") from None


def load_from_hub(repo_id: str, revision: Optional[str] = None, option: str = "--hf-repo-id") -> ModelInfo:
    """Fetch config.json through huggingface_hub at a revision (``org/name@rev`` or ``revision``;
    default the repo's main branch), recording the commit it resolved to.  Online, one metadata
    request (``HF_HUB_ETAG_TIMEOUT`` seconds, default 5, no retries) tells whether the Hub can be
    reached; when it cannot, the cached copy is used if there is one, else one line says to set
    ``HF_HUB_OFFLINE=1`` or pass a local config.  With ``HF_HUB_OFFLINE=1``, the cache only."""
    repo_id, at = split_revision(repo_id)
    if at is not None and revision is not None and at != revision:
        raise DefcError(f"'{repo_id}@{at}' and --revision {revision} name different revisions", field="--revision")
    revision = at if at is not None else revision
    if not REPO_ID.match(repo_id):
        raise DefcError(f"'{repo_id}' is not a Hugging Face repo id (expected org/name)", field=option)
    if revision is not None and (not revision or len(revision) > 256 or any(c.isspace() for c in revision)):
        raise DefcError(f"'{revision[:60]}' is not a revision (a branch, tag or commit)", field="--revision")
    try:
        import huggingface_hub
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                            LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError as e:  # pragma: no cover - a core dependency
        raise DefcError(f"huggingface_hub is not installed: {e}") from None
    named = f"{repo_id}@{revision}" if revision else repo_id
    is_offline = getattr(huggingface_hub, "is_offline_mode", None)
    offline = is_offline() if is_offline else huggingface_hub.constants.HF_HUB_OFFLINE
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    timeout = hub_timeout()
    unreachable = None
    try:
        if not offline:
            try:       # one request, no retries: huggingface_hub's download retries for ~25 s when offline
                get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision), timeout=timeout)
            except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, GatedRepoError):
                raise
            except HfHubHTTPError as e:
                if getattr(getattr(e, "response", None), "status_code", 0) in (401, 403):
                    raise
                unreachable = _one_line(e)
            except Exception as e:  # noqa: BLE001 - the HTTP client's connection errors differ by version
                unreachable = _one_line(e)
        path = hf_hub_download(repo_id=repo_id, filename="config.json", revision=revision,
                               local_files_only=offline or unreachable is not None, etag_timeout=timeout)
    except LocalEntryNotFoundError:
        if unreachable is not None:
            endpoint = huggingface_hub.constants.ENDPOINT
            raise DefcError(f"the Hugging Face Hub cannot be reached ({endpoint}: {unreachable}) and config.json of "
                            f"'{named}' is not in its cache; set HF_HUB_OFFLINE=1 to use the cache only, or pass a "
                            f"local config (--model PATH/config.json)", field=option) from None
        raise DefcError(f"config.json of '{named}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                        f"download it once online, or pass --config PATH", field=option) from None
    except GatedRepoError:
        raise DefcError(f"'{repo_id}' is gated: log in with `hf auth login` and accept its licence",
                        field=option) from None
    except RepositoryNotFoundError:
        raise DefcError(f"no Hugging Face repo '{repo_id}' (or it is private)", field=option) from None
    except RevisionNotFoundError:
        raise DefcError(f"'{repo_id}' has no revision '{revision}'", field="--revision") from None
    except EntryNotFoundError:
        raise DefcError(f"'{named}' has no config.json", field=option) from None
    except (OSError, ValueError, HfHubHTTPError) as e:
        raise DefcError(f"cannot fetch config.json of '{named}': {_one_line(e)}", field=option) from None
    config = _check_config(load_json(path, "config.json"), path, path)
    snapshot = hf_cache_snapshot(path)
    info = ModelInfo(slug="", config=config, origin=f"hf://{named}", source=f"Hugging Face Hub {named}",
                     revision=revision, commit=snapshot[1] if snapshot else None, config_file=os.path.abspath(path))
    return _as_hub_model(info, repo_id)


def resolve_model(model: Optional[str], config_path: Optional[str] = None,
                  hf_repo_id: Optional[str] = None, revision: Optional[str] = None) -> ModelInfo:
    """Find a model's config from the catalogue, a local path, or the Hub (``org/name``,
    ``org/name@rev``, or with ``revision``)."""
    if config_path:
        if revision is not None:
            raise DefcError("--revision applies to a Hugging Face repo id, not --config", field="--revision")
        info = load_local(config_path)
        if model and SLUG.match(model):
            info.slug = model
            if model in catalogue_slugs():
                entry = load_catalogue_entry(model)
                info.hf_repo_id, info.cookbook_model_paths = entry.hf_repo_id, entry.cookbook_model_paths
        return info
    if hf_repo_id:
        info = load_from_hub(hf_repo_id, revision)
        if model and SLUG.match(model):
            info.slug = model
        return info
    if not model:
        raise DefcError("no model given: pass --model SLUG (see `defc models`), --config PATH or --hf-repo-id ORG/NAME",
                        field="--model")
    if revision is not None:
        model = with_revision(model, revision)
    slugs = catalogue_slugs()
    if model in slugs:
        return load_catalogue_entry(model)
    if os.path.exists(model) or model.endswith(".json") or model.startswith((".", "/")):
        if not os.path.exists(model):
            raise DefcError("no such file or folder", Location(model), field="--model")
        return load_local(model)
    if REPO_ID.match(split_revision(model)[0]):
        return load_from_hub(model, revision, "--model")
    close = difflib.get_close_matches(model, slugs, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `defc models` lists the catalogue"
    raise DefcError(f"unknown model '{model}'{hint}", field="--model")
