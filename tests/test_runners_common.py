"""Runners: the dump layout and folder safety; shared helpers that make real FlashInfer dumps.

``real_dumps()`` calls FlashInfer's installed decorated APIs with FLASHINFER_TRACE_DUMP=1 on CPU
(the dumper writes the JSON, then the kernel fails for lack of a GPU; that is caught), once per
test session — FlashInfer writes each name only once per process.  Shapes are Llama-3.1-8B TP1
(32 q heads, 8 kv, head_dim 128, hidden 4096, vocab 128256) and DeepSeek-V3 TP8 MLA (16 heads,
ckv 512, kpe 64), written out as numbers.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile

import pytest

import fi_oracle  # noqa: F401  (imports flashinfer once; unsets FLASHINFER_TRACE_DUMP_DIR)

SGLANG_LIKE = {  # what a SGLang pass of Llama-3.1-8B TP1 dumps (names as FlashInfer writes them)
    "gqa_ragged_h32_kv8_d128", "gqa_paged_decode_plan_h32_kv8_d128_ps1",
    "gqa_paged_decode_h32_kv128_d128_ps8", "gqa_paged_prefill_h32_kv128_d128_ps8",
    "top_k_top_p_sampling_v128256",
}
DIRECT = {"rmsnorm_h4096", "fused_add_rmsnorm_h4096", "mla_paged_decode_h16_ckv512_kpe64_ps1"}


def _call(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception:  # the kernel needs a GPU; the dumper has already written the JSON
        pass


@functools.lru_cache(maxsize=1)
def real_dumps() -> str:
    """A folder with sglang_like/ and direct/ subfolders of real dumper output (made once)."""
    import torch
    fi = fi_oracle.flashinfer()
    from flashinfer.decode import BatchDecodeWithPagedKVCacheWrapper as Decode
    from flashinfer.mla import BatchMLAPagedAttentionWrapper as MLA
    from flashinfer.prefill import BatchPrefillWithPagedKVCacheWrapper as Paged
    from flashinfer.prefill import BatchPrefillWithRaggedKVCacheWrapper as Ragged
    root = tempfile.mkdtemp(prefix="defc-real-dumps-")
    atexit.register(shutil.rmtree, root, True)
    bf, i32, f32 = torch.bfloat16, torch.int32, torch.float32
    saved = {k: os.environ.get(k) for k in ("FLASHINFER_TRACE_DUMP", "FLASHINFER_TRACE_DUMP_DIR")}
    os.environ["FLASHINFER_TRACE_DUMP"] = "1"
    try:
        os.environ["FLASHINFER_TRACE_DUMP_DIR"] = os.path.join(root, "sglang_like")
        q = torch.zeros(6, 32, 128, dtype=bf)
        k = torch.zeros(6, 8, 128, dtype=bf)
        _call(Ragged.run, None, q, k, k)
        _call(Decode.plan, None, torch.tensor([0, 6], dtype=i32), torch.arange(6, dtype=i32),
              torch.ones(1, dtype=i32), 32, 8, 128, 1)
        buf = torch.zeros(17, 8, 128, dtype=bf)            # SGLang's 3-D per-layer KV buffer
        _call(Decode.run, None, torch.zeros(1, 32, 128, dtype=bf), (buf, buf))
        _call(Paged.run, None, q, (buf, buf))
        _call(fi.sampling.top_k_top_p_sampling_from_probs, torch.zeros(1, 128256, dtype=f32),
              torch.tensor([20], dtype=i32), torch.tensor([0.9], dtype=f32), filter_apply_order="joint")
        os.environ["FLASHINFER_TRACE_DUMP_DIR"] = os.path.join(root, "direct")
        x = torch.zeros(7, 4096, dtype=bf)
        w = torch.zeros(4096, dtype=bf)
        _call(fi.norm.rmsnorm, x, w)
        _call(fi.norm.fused_add_rmsnorm, x, torch.zeros(7, 4096, dtype=bf), w)
        # the public MLA wrapper's run() reads self before the traced call: an uninitialised
        # instance is enough to reach the dumper
        _call(MLA.run, object.__new__(MLA), torch.zeros(3, 16, 512, dtype=bf), torch.zeros(3, 16, 64, dtype=bf),
              torch.zeros(9, 1, 512, dtype=bf), torch.zeros(9, 1, 64, dtype=bf))
    finally:
        for key, v in saved.items():
            if v is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = v
    for sub, want in (("sglang_like", SGLANG_LIKE), ("direct", DIRECT)):
        got = {f[:-5] for f in os.listdir(os.path.join(root, sub))}
        assert got == want, (sub, got)
    return root


def copy_dumps(dest: str, which: str, backend: str = None, **marker) -> str:
    """Copy real dumps into ``dest`` (a new pass folder), optionally with a pass marker."""
    shutil.copytree(os.path.join(real_dumps(), which), dest)
    if backend:
        m = {"tool": "defc trace", "backend": backend, "status": "ok"}
        m.update(marker)
        with open(os.path.join(dest, "_defc_pass.json"), "w") as fh:
            json.dump(m, fh)
    return dest


def test_real_dumps_are_what_the_research_says():
    root = real_dumps()
    with open(os.path.join(root, "sglang_like", "gqa_paged_decode_h32_kv128_d128_ps8.json")) as fh:
        d = json.load(fh)
    # the 3-D KV buffer mislabel: page_size <- kv heads, num_kv_heads <- head_dim
    assert {k: v.get("value") for k, v in d["axes"].items() if v["type"] == "const"} == \
        {"num_qo_heads": 32, "num_kv_heads": 128, "head_dim": 128, "page_size": 8}
    assert d["inputs"]["kv_indptr"]["dtype"] == "unknown"
    assert "check" in d and d["reference"].count("def _gqa_paged_decode_reference(") == 1


def test_prepare_pass_folder_only_touches_its_own_folder(tmp_path):
    from defc.compiler.errors import DefcError
    from defc.runners.common import MARKER, prepare_pass_folder
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.json").write_text("{}")
    with pytest.raises(DefcError) as e:
        prepare_pass_folder(str(foreign))
    assert "was not made by defc trace" in str(e.value) and "\n" not in str(e.value)
    assert (foreign / "keep.json").read_text() == "{}"
    own = tmp_path / "own"
    own.mkdir()
    (own / MARKER).write_text("{}")
    (own / "old_dump.json").write_text("{}")
    (own / "_defc_trace.log").write_text("log")
    (own / "notes.txt").write_text("mine")
    (own / "sub").mkdir()
    (own / "sub" / "x.json").write_text("{}")
    sibling = tmp_path / "sibling.json"
    sibling.write_text("{}")
    removed = prepare_pass_folder(str(own))
    assert sorted(removed) == [MARKER, "_defc_trace.log", "old_dump.json"]
    assert (own / "notes.txt").exists() and (own / "sub" / "x.json").exists() and sibling.exists()
    new = tmp_path / "new" / "pass"
    assert prepare_pass_folder(str(new)) == [] and new.is_dir()


def test_find_dump_sets_layouts(tmp_path):
    from defc.compiler.errors import DefcError
    from defc.runners.common import find_dump_sets
    p = copy_dumps(str(tmp_path / "dumps" / "fi_trace_llama-3.1-8b_tp1_ep1_ps1"), "sglang_like", "sglang",
                   model="llama-3.1-8b", tp=1, ep=1, page_size=1)
    copy_dumps(str(tmp_path / "dumps" / "fi_trace_qwen3-8b_tp1_ep1_ps1"), "direct", "replay")
    one = find_dump_sets(p)
    assert len(one) == 1 and one[0].source == "sglang" and one[0].tp == 1 and len(one[0].files) == 5
    parent = find_dump_sets(str(tmp_path / "dumps"), "llama-3.1-8b")
    assert [os.path.basename(d.folder) for d in parent] == ["fi_trace_llama-3.1-8b_tp1_ep1_ps1"]
    ds = tmp_path / "ds" / "definitions" / "rmsnorm"
    ds.mkdir(parents=True)
    shutil.copy(os.path.join(real_dumps(), "direct", "rmsnorm_h4096.json"), ds)
    d = find_dump_sets(str(tmp_path / "ds"))
    assert d[0].kind == "dataset" and len(d[0].files) == 1
    for bad in (tmp_path / "missing", tmp_path / "ds" / "definitions" / "rmsnorm" / "rmsnorm_h4096.json"):
        with pytest.raises(DefcError):
            find_dump_sets(str(bad))
