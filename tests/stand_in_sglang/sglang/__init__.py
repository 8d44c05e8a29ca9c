"""A stand-in for the ``sglang`` package, for testing ``defc trace --backend sglang`` on a CPU.

Put ``tests/stand_in_sglang`` on PYTHONPATH.  Like the real package it imports flashinfer when
it is imported, so FLASHINFER_TRACE_DUMP must already be set; it records what it saw:

* at import: the FLASHINFER_TRACE_* variables and whether flashinfer was already imported;
* ``Engine(**kwargs)``: the keyword arguments;
* ``generate(prompt, sampling_params)``: the call; then it makes the FlashInfer calls a real
  SGLang pass makes for Llama-3.1-8B (32 q / 8 kv heads, head_dim 128, vocab 128256, heads
  split by tp_size) through FlashInfer's real decorated APIs, so the dumper writes real JSONs:
  ragged prefill, the decode plan(), decode run() with SGLang's 3-D KV buffers, and
  top_k_top_p_sampling_from_probs when top_k/top_p are given.  The kernels then fail (no GPU);
  that is caught, as the dump is written first.
* ``shutdown()``.

Records go to ``$SGLANG_STAND_IN_RECORD/record_<pid>.json`` (a list of events).
``SGLANG_STAND_IN_MODE``: ``ok`` (default); ``hang`` (generate starts a sleeping worker process,
like SGLang's scheduler, records its pid, and sleeps: for timeouts); ``crash`` (generate dumps the
ragged prefill, then the process dies with exit code 17: for crash-safety); ``crash@P`` crashes
only in the pass with page_size P.
"""
import json
import os
import subprocess
import sys
import time

MODE = os.environ.get("SGLANG_STAND_IN_MODE", "ok")
_RECORD_DIR = os.environ.get("SGLANG_STAND_IN_RECORD")
_EVENTS = []


def _record(event, **data):
    data["event"] = event
    data["time"] = time.time()
    _EVENTS.append(data)
    if _RECORD_DIR:
        os.makedirs(_RECORD_DIR, exist_ok=True)
        path = os.path.join(_RECORD_DIR, f"record_{os.getpid()}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(_EVENTS, fh, default=str)
        os.replace(path + ".tmp", path)


_record("import",
        env={k: os.environ.get(k) for k in ("FLASHINFER_TRACE_DUMP", "FLASHINFER_TRACE_DUMP_DIR")},
        flashinfer_already_imported="flashinfer" in sys.modules,
        pid=os.getpid())

if not MODE.startswith("hang"):
    import flashinfer  # noqa: E402,F401  (real sglang imports it at import time too)

# Llama-3.1-8B, written out as literal numbers
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, VOCAB = 32, 8, 128, 128256


def _try(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:  # the kernel needs a GPU; the dump is already written
        return f"{type(e).__name__}"
    return "ran"


class Engine:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        _record("engine", kwargs=kwargs)

    def generate(self, prompt, sampling_params=None):
        sampling_params = dict(sampling_params or {})
        _record("generate", prompt=prompt, sampling_params=sampling_params)
        page = int(self.kwargs.get("page_size", 1))
        crash = MODE == "crash" or MODE == f"crash@{page}"
        if MODE.startswith("hang"):
            worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            _record("worker", pid=worker.pid)
            time.sleep(600)
        import torch
        from flashinfer.decode import BatchDecodeWithPagedKVCacheWrapper
        from flashinfer.prefill import BatchPrefillWithRaggedKVCacheWrapper
        tp = int(self.kwargs.get("tp_size", 1))
        h, kv = NUM_HEADS // tp, max(1, NUM_KV_HEADS // tp)
        bf, i32 = torch.bfloat16, torch.int32
        tokens = 6
        # extend without a prefix: ragged prefill over the prompt
        q = torch.zeros(tokens, h, HEAD_DIM, dtype=bf)
        k = torch.zeros(tokens, kv, HEAD_DIM, dtype=bf)
        _try(BatchPrefillWithRaggedKVCacheWrapper.run, None, q, k, k)
        if crash:
            os._exit(17)
        # decode: plan with page_size 1 and token-level indices, run on 3-D per-layer KV buffers
        slots = 16 + page
        _try(BatchDecodeWithPagedKVCacheWrapper.plan, None, torch.tensor([0, tokens], dtype=i32),
             torch.arange(tokens, dtype=i32), torch.ones(1, dtype=i32), h, kv, HEAD_DIM, 1)
        buf = torch.zeros(slots, kv, HEAD_DIM, dtype=bf)
        _try(BatchDecodeWithPagedKVCacheWrapper.run, None, torch.zeros(1, h, HEAD_DIM, dtype=bf), (buf, buf))
        if "top_k" in sampling_params or "top_p" in sampling_params:
            import flashinfer.sampling as S
            _try(S.top_k_top_p_sampling_from_probs, torch.zeros(1, VOCAB, dtype=torch.float32),
                 torch.tensor([int(sampling_params.get("top_k", -1))], dtype=i32),
                 torch.tensor([float(sampling_params.get("top_p", 1.0))], dtype=torch.float32),
                 filter_apply_order="joint")
        _record("generated")
        return {"text": " Paris.", "meta_info": {}}

    def shutdown(self):
        _record("shutdown")
