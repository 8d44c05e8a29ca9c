"""What ``defc compile`` would emit for a model, with nothing read from or written to a dataset: the
definitions are planned against a folder that never exists.  ``defc diff``, ``defc trace`` and
``defc verify`` work from these predictions."""
from __future__ import annotations

import os
import tempfile
from typing import Sequence

from .pipeline import CompileOptions, compile_model


def compile_predictions(model: str, tp, ep, quantization, specs: Sequence[str] = (), config=None,
                        hf_repo_id=None, dp=None, op_types=None):
    nowhere = os.path.join(tempfile.gettempdir(), f"defc-predictions-nowhere-{os.getpid()}-does-not-exist")
    opts = CompileOptions(model=model, specs=list(specs), tp=tp, ep=ep, dp=dp, quantization=quantization,
                          op_types=op_types, out=nowhere, config=config, hf_repo_id=hf_repo_id)
    return compile_model(opts)
