"""docs/authoring.md, performed: its files and `$ defc …` commands, in order, in a scratch folder.

Every file block (```lang title="PATH"```) is written to PATH and every command of a ```console block
is run; the lines the page shows as output must appear in what defc prints.  The only additions are
the options that point defc at the scratch folder's specs/ and templates/ instead of the project's.
"""
import json
import os
import re
import shlex
import shutil

from conftest import ROOT
from defc.cli import main

DOC = os.path.join(ROOT, "docs", "authoring.md")
SCRATCH = {
    "new-op": ["--specs-dir", "specs", "--templates-dir", "templates"],
    "lint": ["--specs-dir", "specs", "--templates", "templates"],
    "compile": ["--specs-dir", "specs", "--templates", "templates"],
    "coverage": ["--specs-dir", "specs", "--templates", "templates"],
    "gap-report": ["--specs-dir", "specs", "--templates", "templates"],
}


def steps(text):
    """('file', path, content) and ('run', argv, expected output lines), in document order."""
    out = []
    for m in re.finditer(r"^```(\w+)([^\n]*)\n(.*?)^```", text, re.S | re.M):
        lang, info, body = m.group(1), m.group(2), m.group(3)
        title = re.search(r'title="([^"]+)"', info)
        if title:
            out.append(("file", title.group(1), body))
        elif lang == "console":
            cmd = None
            for line in body.splitlines():
                if line.startswith("$ "):
                    if cmd:
                        out.append(cmd)
                    cmd = ("run", shlex.split(line[2:]), [])
                elif cmd and line.strip():
                    cmd[2].append(line.strip())
            if cmd:
                out.append(cmd)
    return out


def test_walkthrough(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEFC_NO_FLASHINFER", "1")
    os.makedirs("specs")
    shutil.copy(os.path.join(ROOT, "specs", "_model_facts.yaml"), "specs/_model_facts.yaml")
    with open(DOC) as fh:
        todo = steps(fh.read())
    kinds = [s[0] for s in todo]
    assert kinds.count("file") == 2 and kinds.count("run") >= 5
    ran = []
    for step in todo:
        if step[0] == "file":
            os.makedirs(os.path.dirname(step[1]) or ".", exist_ok=True)
            with open(step[1], "w") as fh:
                fh.write(step[2])
            continue
        argv = step[1]
        assert argv[0] == "defc", argv
        cmd = argv[1]
        rc = main([cmd] + SCRATCH.get(cmd, []) + argv[2:])
        out, err = capsys.readouterr()
        assert rc == 0, (argv, out, err)
        printed = [l.strip() for l in (out + err).splitlines()]
        for want in step[2]:
            assert want in printed, (argv, want, out + err)
        ran.append(cmd)
    assert ran[:2] == ["new-op", "lint"] and {"compile", "validate"} <= set(ran)
    # what the page says the compile writes
    base = os.path.join("tmp", "flashinfer-trace", "definitions", "rmsnorm")
    with open(os.path.join(base, "gemma_rmsnorm_h5376.json")) as fh:
        d = json.load(fh)
    assert {"status:verified", "fi_api:flashinfer.norm.gemma_rmsnorm", "model:gemma-3-27b"} <= set(d["tags"])
    assert os.path.exists(os.path.join(base, "gemma_rmsnorm_h128.json"))
    assert os.listdir(os.path.join("tmp", "flashinfer-trace", "reports"))
    # the reference really is Gemma's (1 + weight) RMSNorm
    import torch
    ns = {}
    exec(compile(d["reference"], "ref", "exec"), ns)
    x = torch.randn(3, 5376, dtype=torch.bfloat16)
    w = torch.randn(5376, dtype=torch.bfloat16)
    want = torch.nn.functional.rms_norm(x.float(), (5376,), eps=1e-6) * (1 + w.float())
    torch.testing.assert_close(ns["run"](x, w).float(), want, atol=3e-2, rtol=3e-2)
