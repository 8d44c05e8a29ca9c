"""``defc diff``: reconcile compiled predictions with FlashInfer dumps (or a staged dataset).

Predictions come from the compile API (nothing is written).  Dumps are normalised with the stage
rules and the mislabel repairs first.  Then, per predicted definition:

  matched     a dump with the same name and the same content
  differs     a dump with the same name whose content differs (fields listed)
  renamed     a dump under another name: a spec alias, a repair rule's ``also_as`` name, or the
              same op_type and const-axis values (ties broken by fi_api, stage tag, tensor names)
  missing     no dump — with the likely reason (runners/sglang_routing.yaml, the replay record,
              FlashInfer's template registry, the passes that ran)
and per dump: ``unexpected`` (no prediction), ``ignored`` (a skip rule), ``conflict`` (two
different dumps under one name), ``unreadable``.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from defc.compiler import formula as F
from defc.compiler.errors import DefcError
from defc.compiler.load import display_path, load_safe_yaml, load_yaml

from .common import DumpSet, data_file
from .flashinfer_api import import_flashinfer, resolve_api
from .stage import normalise

ROUTING = data_file("sglang_routing.yaml")
SETTINGS = data_file("diff.yaml")
OUTCOMES = ("routed", "not-routed", "not-exercised")


# ------------------------------------------------------------------------------------------------
# routing facts

@dataclass
class Route:
    name: str
    why: str
    outcome: str
    fi_api: List[str] = field(default_factory=list)
    op_type: List[str] = field(default_factory=list)
    name_pattern: Optional[re.Pattern] = None
    when: Optional[F.Formula] = None


def load_routes(path: str = ROUTING) -> List[Route]:
    located = load_yaml(path, "routing table")
    data = located.data
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise DefcError("a routing table needs a top-level 'rules:' list", located.where(()), "rules")
    out, seen = [], set()
    allowed = {"name", "why", "outcome", "fi_api", "op_type", "name_pattern", "when"}
    for i, r in enumerate(data["rules"]):
        base = ("rules", i)
        def err(key, msg):
            return DefcError(msg, located.where(base + ((key,) if key else ())), f"rules[{i}]" + (f".{key}" if key else ""))
        if not isinstance(r, dict):
            raise err(None, "each rule must be a mapping")
        bad = sorted(set(r) - allowed)
        if bad:
            raise err(bad[0], f"unknown field '{bad[0]}' (allowed: {', '.join(sorted(allowed))})")
        name = r.get("name")
        if not isinstance(name, str) or not re.match(r"^[a-z0-9]+(-[a-z0-9]+)*$", name) or name in seen:
            raise err("name", f"rule name must be unique lower-case words joined by '-', got {name!r}")
        seen.add(name)
        if not isinstance(r.get("why"), str):
            raise err("why", "a rule needs a 'why:' line")
        if r.get("outcome") not in OUTCOMES:
            raise err("outcome", f"outcome must be one of {', '.join(OUTCOMES)}")
        rt = Route(name, " ".join(r["why"].split()), r["outcome"])
        for key in ("fi_api", "op_type"):
            v = r.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise err(key, f"{key} must be a list of strings")
            setattr(rt, key, v)
        if "name_pattern" in r:
            try:
                rt.name_pattern = re.compile(str(r["name_pattern"]))
            except re.error as e:
                raise err("name_pattern", f"bad regular expression: {e}") from None
        if "when" in r:
            try:
                rt.when = F.parse(str(r["when"]))
            except F.FormulaError as e:
                raise err("when", f"bad formula: {e}") from None
        if not (rt.fi_api or rt.op_type or rt.name_pattern):
            raise err(None, f"rule '{name}' matches nothing: give fi_api, op_type or name_pattern")
        out.append(rt)
    return out


def route_for(routes: Sequence[Route], fi_api: Optional[str], op_type: str, name: str,
              env: Dict[str, Any]) -> Optional[Route]:
    for r in routes:
        if r.fi_api and not (fi_api and any(fnmatch.fnmatchcase(fi_api, g) for g in r.fi_api)):
            continue
        if r.op_type and op_type not in r.op_type:
            continue
        if r.name_pattern is not None and not r.name_pattern.search(name):
            continue
        if r.when is not None:
            try:
                if not F.truth(r.when, env):
                    continue
            except F.FormulaError:
                continue
        return r
    return None


# ------------------------------------------------------------------------------------------------
# comparing definitions

def settings() -> Dict[str, Any]:
    s = load_safe_yaml(SETTINGS, "diff settings") or {}
    return s if isinstance(s, dict) else {}


def fi_api_of(doc: Dict[str, Any]) -> str:
    for t in doc.get("tags") or []:
        if isinstance(t, str) and t.startswith("fi_api:"):
            return t[len("fi_api:"):]
    return ""


def api_key(api: str) -> str:
    """Public alias, defining module and `.run` forms of one API compare equal."""
    parts = [p for p in api.split(".") if p]
    while parts and parts[-1] == "run":
        parts.pop()
    return parts[-1] if parts else ""


def stage_of(doc: Dict[str, Any]) -> str:
    for t in doc.get("tags") or []:
        if isinstance(t, str) and t.startswith("stage:"):
            return t
    return ""


def const_signature(doc: Dict[str, Any]) -> str:
    axes = {k: a.get("value") for k, a in (doc.get("axes") or {}).items()
            if isinstance(a, dict) and a.get("type") == "const"}
    return json.dumps([doc.get("op_type"), axes], sort_keys=True)


def field_diffs(pred: Dict[str, Any], dump: Dict[str, Any], ignore_tags: Sequence[str]) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []

    def add(fld, p, d):
        out.append({"field": fld, "predicted": p, "dumped": d})
    if pred.get("op_type") != dump.get("op_type"):
        add("op_type", pred.get("op_type"), dump.get("op_type"))
    pa, da = pred.get("axes") or {}, dump.get("axes") or {}
    for k in list(pa) + [k for k in da if k not in pa]:
        if k not in da:
            add(f"axes.{k}", _axis(pa[k]), None)
        elif k not in pa:
            add(f"axes.{k}", None, _axis(da[k]))
        else:
            if pa[k].get("type") != da[k].get("type"):
                add(f"axes.{k}.type", pa[k].get("type"), da[k].get("type"))
            elif pa[k].get("value") != da[k].get("value"):
                add(f"axes.{k}.value", pa[k].get("value"), da[k].get("value"))
    for sect in ("inputs", "outputs"):
        pt, dt = pred.get(sect) or {}, dump.get(sect) or {}
        for k in list(pt) + [k for k in dt if k not in pt]:
            if k not in dt:
                add(f"{sect}.{k}", _tensor(pt[k]), None)
            elif k not in pt:
                add(f"{sect}.{k}", None, _tensor(dt[k]))
            else:
                if pt[k].get("dtype") != dt[k].get("dtype"):
                    add(f"{sect}.{k}.dtype", pt[k].get("dtype"), dt[k].get("dtype"))
                if pt[k].get("shape") != dt[k].get("shape"):
                    add(f"{sect}.{k}.shape", pt[k].get("shape"), dt[k].get("shape"))
    keep = lambda ts: [t for t in (ts or []) if isinstance(t, str) and not any(t.startswith(p) for p in ignore_tags)]
    ptags, dtags = keep(pred.get("tags")), keep(dump.get("tags"))
    # fi_api spellings of one API (public alias, defining module, `.run` method) are the same tag
    same = lambda t: "fi_api:" + api_key(t[len("fi_api:"):]) if t.startswith("fi_api:") else t
    pset, dset = {same(t) for t in ptags}, {same(t) for t in dtags}
    only_p = [t for t in ptags if same(t) not in dset]
    only_d = [t for t in dtags if same(t) not in pset]
    # one difference per tag namespace (tags.fi_api, tags.stage, tags.fused …), each with its own cause
    for ns in dict.fromkeys(_tag_ns(t) for t in only_p + only_d):
        add(f"tags.{ns}", [t for t in only_p if _tag_ns(t) == ns], [t for t in only_d if _tag_ns(t) == ns])
    return out


def _tag_ns(tag: str) -> str:
    return tag.split(":", 1)[0] if ":" in tag else tag


def known_differences(inst) -> List[Dict[str, Any]]:
    """The dump_differences a spec declares for this definition (its own first, then the spec's)."""
    if inst is None:
        return []
    spec = getattr(inst, "spec", None)
    data = getattr(spec, "data", None) or {}
    defs = data.get("definitions") or []
    own = defs[inst.def_index].get("dump_differences") if 0 <= inst.def_index < len(defs) else None
    return list(own or []) + list(data.get("dump_differences") or [])


def _side(d: Dict[str, Any]) -> str:
    p, q = d["predicted"], d["dumped"]
    if d["field"].startswith("tags."):      # tag lists: an empty side has none of them
        p, q = p or None, q or None
    return "predicted" if q is None else "dumped" if p is None else "both"


def _covers(pat: str, fld: str) -> bool:
    # `tags` names every tag difference (tags.fi_api, tags.stage, …)
    return fnmatch.fnmatchcase(fld, pat) or (pat == "tags" and fld.startswith("tags."))


def cause_of(d: Dict[str, Any], known: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The first known difference whose field patterns (and side) cover field difference d."""
    side = _side(d)
    for k in known:
        want = k.get("side")
        if want and want != side:
            continue
        if any(_covers(pat, d["field"]) for pat in k.get("fields") or [] if isinstance(pat, str)):
            return k
    return None


def alias_pattern(inst, index: int) -> str:
    """The spec's own text of an instance's alias ``index`` (placeholders unfilled): the legend key
    that all the names it renders to share."""
    data = getattr(getattr(inst, "spec", None), "data", None) or {}
    defs = data.get("definitions") or []
    try:
        return str(defs[inst.def_index]["aliases"][index]["name"])
    except (IndexError, KeyError, TypeError, AttributeError):
        return str(inst.aliases[index]["name"])


def attach_causes(row: Dict[str, Any], inst) -> None:
    """Name, on each field difference of a paired row, the spec's explanation of it (if any)."""
    known = known_differences(inst)
    causes: Dict[str, str] = {}
    for d in row.get("diffs") or []:
        k = cause_of(d, known)
        if k is not None:
            d["cause"] = k["name"]
            causes[k["name"]] = " ".join(str(k.get("why", "")).split())
    if causes:
        row["causes"] = causes
    row["unexplained"] = sum(1 for d in row.get("diffs") or [] if "cause" not in d)


def _axis(a: Dict[str, Any]) -> str:
    return f"const {a.get('value')}" if a.get("type") == "const" else str(a.get("type"))


def _tensor(t: Dict[str, Any]) -> str:
    shape = t.get("shape")
    return f"{t.get('dtype')}[{', '.join(shape)}]" if isinstance(shape, list) else f"{t.get('dtype')} scalar"


def describe_diff(d: Dict[str, Any]) -> str:
    p, q = d["predicted"], d["dumped"]
    if d["field"] == "tags" or d["field"].startswith("tags."):
        bits = []
        if p:
            bits.append("only predicted " + ", ".join(p))
        if q:
            bits.append("only dumped " + ", ".join(q))
        return f"{d['field']}: " + "; ".join(bits)
    if p is None:
        return f"{d['field']}: only dumped ({q})"
    if q is None:
        return f"{d['field']}: only predicted ({p})"
    return f"{d['field']}: predicted {p}, dumped {q}"


# ------------------------------------------------------------------------------------------------
# the reconciliation

@dataclass
class Observed:
    doc: Dict[str, Any]
    origin: str                        # file path
    source: str
    dumped_as: str
    rules: List[str]
    also_as: List[Tuple[str, str]]
    used: bool = False


@dataclass
class Prediction:
    name: str
    doc: Dict[str, Any]
    instances: List[Any]


@dataclass
class Report:
    model: str
    sources: List[str]
    rows: List[Dict[str, Any]] = field(default_factory=list)
    routes: Dict[str, str] = field(default_factory=dict)     # routing rule -> why, for the legend

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def clean(self) -> bool:
        return all(r["status"] in ("matched", "ignored") for r in self.rows)

    def summary(self) -> Dict[str, int]:
        keys = ("matched", "renamed", "differs", "missing", "unexpected", "conflict", "ignored", "unreadable")
        return {k: self.count(k) for k in keys}

    def field_summary(self) -> Dict[str, int]:
        """Field differences of paired rows: with a named cause, without one.  A conflict row's
        differences are between two dumps (no prediction, so no spec can name a cause); the
        conflict status itself reports them."""
        ds = [d for r in self.rows if r.get("predicted") for d in r.get("diffs") or []]
        return {"explained": sum(1 for d in ds if "cause" in d), "unexplained": sum(1 for d in ds if "cause" not in d)}

    def legend(self) -> Dict[str, Dict[str, str]]:
        """The long explanations the rows refer to by name, once each: ``causes`` (the specs'
        dump_differences, named on each field difference) and ``aliases`` (why FlashInfer's dumper
        names a definition so; the spec's alias pattern, named in the row's how) and ``routes``
        (runners/sglang_routing.yaml's rules named by missing rows)."""
        causes: Dict[str, str] = {}
        aliases: Dict[str, str] = {}
        for r in self.rows:
            causes.update(r.get("causes") or {})
            if r.get("alias"):
                aliases[r["alias"]["pattern"]] = r["alias"]["why"]
        return {"causes": dict(sorted(causes.items())), "aliases": dict(sorted(aliases.items())),
                "routes": dict(sorted(self.routes.items()))}


def predictions_from(result) -> List[Prediction]:
    out = []
    for p in result.planned:
        name = p.doc.get("name")
        out.append(Prediction(name, p.doc, result.instances.get(name, [])))
    return out


def observed_from(sets: Sequence[DumpSet], report: Report) -> List[Observed]:
    obs: Dict[str, Observed] = {}
    order: List[Observed] = []
    for ds in sets:
        for f in ds.files:
            if f.doc is None:
                report.rows.append({"status": "unreadable", "op_type": "", "predicted": "", "dumped": os.path.basename(f.path),
                                    "how": f.error, "source": display_path(f.path), "diffs": []})
                continue
            res = normalise(f.doc, ds.source)
            name = str(res.doc.get("name", ""))
            if res.skipped:
                report.rows.append({"status": "ignored", "op_type": str(f.doc.get("op_type", "")), "predicted": "",
                                    "dumped": str(f.doc.get("name", "")), "how": f"{res.skipped[1]} (rule {res.skipped[0]})",
                                    "source": display_path(f.path), "diffs": []})
                continue
            o = Observed(res.doc, f.path, ds.source, str(f.doc.get("name", "")), list(res.fired), list(res.also_as))
            if name in obs:
                prev = obs[name]
                if _content(prev.doc) == _content(o.doc):
                    continue
                report.rows.append({"status": "conflict", "op_type": o.doc.get("op_type", ""), "predicted": "",
                                    "dumped": name, "how": f"differs from the dump of the same name in "
                                                           f"{display_path(prev.origin)}",
                                    "source": display_path(f.path),
                                    "diffs": field_diffs(prev.doc, o.doc, [])})
                continue
            obs[name] = o
            order.append(o)
    return order


def _content(doc: Dict[str, Any]) -> str:
    strip = lambda ts: sorted(t for t in ts or [] if isinstance(t, str) and t.split(":", 1)[0] not in ("model", "tp", "ep", "dp"))
    return json.dumps([doc.get("op_type"), doc.get("axes"), doc.get("inputs"), doc.get("outputs"),
                       strip(doc.get("tags"))], sort_keys=True, default=str)


def _score(pred: Dict[str, Any], dump: Dict[str, Any]) -> Tuple:
    pk, dk = api_key(fi_api_of(pred)), api_key(fi_api_of(dump))
    jac = lambda a, b: len(set(a) & set(b)) / max(1, len(set(a) | set(b)))
    return (int(bool(pk) and pk == dk), int(stage_of(pred) == stage_of(dump)),
            jac(pred.get("inputs") or {}, dump.get("inputs") or {}),
            jac(pred.get("axes") or {}, dump.get("axes") or {}))


def reconcile(preds: Sequence[Prediction], observed: Sequence[Observed], report: Report,
              explain) -> Report:
    ign = settings().get("ignore_tag_prefixes") or []
    by_name = {o.doc.get("name"): o for o in observed}
    by_also: Dict[str, List[Tuple[Observed, str]]] = {}
    for o in observed:
        for n, rule in o.also_as:
            by_also.setdefault(n, []).append((o, rule))
    pending: List[Prediction] = []
    results: Dict[str, Dict[str, Any]] = {}

    def row(pred: Prediction, o: Optional[Observed], status: str, how: str) -> Dict[str, Any]:
        r = {"status": status, "op_type": pred.doc.get("op_type", ""), "predicted": pred.name,
             "dumped": o.doc.get("name") if o else "", "how": how,
             "source": display_path(o.origin) if o else "", "diffs": []}
        if o:
            r["diffs"] = field_diffs(pred.doc, o.doc, ign)
            attach_causes(r, pred.instances[0] if pred.instances else None)
            if o.dumped_as != o.doc.get("name"):
                r["dumped_as"] = o.dumped_as
            if o.rules:
                r["rules"] = o.rules
        return r

    # 1. same name
    for p in preds:
        o = by_name.get(p.name)
        if o is not None:
            o.used = True
            r = row(p, o, "matched", "same name")
            if r["diffs"]:
                n = r["unexplained"]
                r["status"] = "differs"
                r["how"] = "same name, different content"
                _note_causes(r)
            results[p.name] = r
        else:
            pending.append(p)
    # 2. spec aliases and repair rules' also_as names (one dump may stand for several definitions)
    still: List[Prediction] = []
    for p in pending:
        hit, alias = None, None
        for inst in p.instances[:1]:
            for j, al in enumerate(inst.aliases):
                o = by_name.get(al["name"])
                if o is not None:
                    # the why goes to the legend (Report.legend), keyed by the spec's alias pattern
                    hit = (o, "spec alias")          # the dumped column shows the alias it matched
                    alias = {"name": al["name"], "pattern": alias_pattern(inst, j),
                             "why": " ".join(str(al.get("why") or "").split())}
                    break
        if hit is None and p.name in by_also:
            o, rule = by_also[p.name][0]
            hit = (o, f"rule {rule}: the dump stands for it too")
        if hit is None:
            still.append(p)
            continue
        hit[0].used = True
        r = row(p, hit[0], "renamed", hit[1])
        if alias is not None and alias["why"]:
            r["alias"] = alias
        _note_causes(r)
        results[p.name] = r
    # 3. same op_type and const axes, one to one, best candidates first
    pairs = []
    sig: Dict[str, List[Observed]] = {}
    for o in observed:
        if not o.used:
            sig.setdefault(const_signature(o.doc), []).append(o)
    for p in still:
        for o in sig.get(const_signature(p.doc), []):
            pairs.append((_score(p.doc, o.doc), p.name, id(o), p, o))
    pairs.sort(key=lambda x: (x[0], x[1]), reverse=True)
    taken_p: Set[str] = set()
    taken_o: Set[int] = set()
    for score, _, oid, p, o in pairs:
        if p.name in taken_p or oid in taken_o:
            continue
        taken_p.add(p.name)
        taken_o.add(oid)
        o.used = True
        r = row(p, o, "renamed", "same op_type and const axes")
        _note_causes(r)
        results[p.name] = r
    # 4. missing, with a reason
    for p in still:
        if p.name not in taken_p:
            category, why = explain(p)
            r = row(p, None, "missing", why)
            r["reason"] = category
            results[p.name] = r
    for p in preds:
        report.rows.append(results[p.name])
    for o in observed:
        if not o.used:
            r = {"status": "unexpected", "op_type": o.doc.get("op_type", ""), "predicted": "",
                 "dumped": o.doc.get("name"), "how": "no spec predicts it", "source": display_path(o.origin),
                 "diffs": []}
            if o.dumped_as != o.doc.get("name"):
                r["dumped_as"] = o.dumped_as
            if o.rules:
                r["rules"] = o.rules
            report.rows.append(r)
    order = {"matched": 0, "renamed": 1, "differs": 2, "missing": 3, "unexpected": 4, "conflict": 5,
             "ignored": 6, "unreadable": 7}
    report.rows.sort(key=lambda r: (order.get(r["status"], 9), r["op_type"] or "", r["predicted"] or r["dumped"] or ""))
    return report


def _note_causes(r: Dict[str, Any]) -> None:
    """A paired row (differs or renamed) says whether its field differences all have causes."""
    if not r.get("diffs"):
        return
    # the causes' names are on each field difference and their whys in the legend (Report.legend)
    n, total = r["unexplained"], len(r["diffs"])
    r["how"] += (f": every field difference has a named cause ({total})" if not n else
                 f": {n} of {total} field differences have no named cause")


class Explainer:
    """Why a predicted definition has no dump."""

    def __init__(self, sets: Sequence[DumpSet], routes: Optional[List[Route]] = None):
        self.sets = sets
        self.routes = routes if routes is not None else load_routes()
        self._fi_ok: Optional[bool] = None
        passes = [ds for ds in sets if ds.kind == "pass" and ds.marker]
        self.pass_keys = {(ds.tp, ds.ep) for ds in passes}
        self.page_sizes = {ds.page_size for ds in passes if ds.page_size is not None}
        self.sources = {ds.source for ds in sets}
        self.route_whys: Dict[str, str] = {}
        self.route_of: Dict[str, Dict[str, str]] = {}     # prediction name -> the routing rule that explains it
        self.replay_records: Dict[str, List[Dict[str, Any]]] = {}
        for ds in passes:
            for rec in (ds.marker or {}).get("definitions") or []:
                if isinstance(rec, dict) and rec.get("definition"):
                    self.replay_records.setdefault(rec["definition"], []).append(rec)

    def _has_template(self, api: str) -> Optional[bool]:
        if self._fi_ok is None:
            try:
                import_flashinfer()
                self._fi_ok = True
            except DefcError:
                self._fi_ok = False
        if not self._fi_ok:
            return None
        try:
            return hasattr(resolve_api(api), "fi_trace")
        except DefcError:
            return False

    def __call__(self, p: Prediction) -> Tuple[str, str]:
        inst = p.instances[0] if p.instances else None
        if inst is not None and self.pass_keys:
            keys = {(i.serving.tp, i.serving.ep) for i in p.instances}
            if not keys & self.pass_keys:
                k = sorted(keys)[0]
                return "not-exercised", f"variant not exercised: no pass at tp{k[0]} ep{k[1]}"
        env = dict(inst.env) if inst is not None else {}
        ps = env.get("page_size")
        if ps is not None and self.page_sizes and ps not in self.page_sizes and "sglang" not in self.sources:
            return "not-exercised", f"variant not exercised: no pass at page size {ps}"
        api = inst.fi_api if inst is not None else fi_api_of(p.doc)
        if not api:
            return "no-template", "no FlashInfer API: the spec names none, so nothing can dump it"
        has = self._has_template(api)
        if has is False:
            return "no-template", f"no FlashInfer trace template for {api}"
        for rec in self.replay_records.get(p.name, []):
            st = rec.get("status")
            if st == "no-recipe":
                return "no-recipe", f"replay: {rec.get('detail', 'no trace: recipe')}"
            if st == "failed":
                if rec.get("kernel"):       # a --backend flashinfer pass: the real call failed
                    return "call-failed", f"flashinfer pass: {rec.get('api', '')} {rec.get('detail', '')}"
                return "replay-failed", f"replay: {rec.get('api', '')}.fi_trace failed: {rec.get('detail', '')}"
            if st in ("dumped", "duplicate") and rec.get("dumped_as"):
                return "unmatched", (f"replay dumped it as {rec['dumped_as']}, which matched no prediction "
                                     f"by name, alias or const axes (see unexpected)")
        if "sglang" in self.sources:
            r = route_for(self.routes, api, p.doc.get("op_type", ""), p.name, env)
            if r is not None:
                # the rule's why goes to the legend (Report.legend), keyed by its name
                self.route_whys[r.name] = r.why
                self.route_of[p.name] = {"name": r.name, "why": r.why}
                if r.outcome == "not-routed":
                    return "not-routed", f"not routed through FlashInfer by SGLang ({r.name})"
                if r.outcome == "not-exercised":
                    return "not-exercised", f"variant not exercised by the pass ({r.name})"
                return "unexplained", f"SGLang calls it ({r.name}), but the pass dumped nothing for it"
            return "unexplained", "not dumped; the routing table has no rule for this API"
        return "unexplained", "not dumped"


def diff(result, sets: Sequence[DumpSet]) -> Report:
    report = Report(result.model.slug, [ds.label() for ds in sets])
    observed = observed_from(sets, report)
    explain = Explainer(sets)
    reconcile(predictions_from(result), observed, report, explain)
    report.routes.update(explain.route_whys)
    for r in report.rows:
        if r["status"] == "missing" and r["predicted"] in explain.route_of:
            r["route"] = explain.route_of[r["predicted"]]
    return report
