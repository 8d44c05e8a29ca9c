"""The whole catalogue compiles to exactly the files recorded in tests/data/catalogue_output.json,
with each model's own quantization and with ``--quantization all``: any change of defc's output
shows up here, file by file, and must be a fix that is named where the record is updated."""
import hashlib
import json
import os

import pytest

from defc.cli import main

RECORD = os.path.join(os.path.dirname(__file__), "data", "catalogue_output.json")


def digests(root):
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            p = os.path.join(folder, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()[:16]
    return out


@pytest.mark.parametrize("mode,extra", [("default", []), ("all", ["--quantization", "all"])])
def test_catalogue_output_is_the_recorded_one(mode, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEFC_NO_CACHE", "1")
    out = str(tmp_path / "out")
    assert main(["compile", "--all-models", "--out", out] + extra) == 0
    capsys.readouterr()
    with open(RECORD, encoding="utf-8") as fh:
        want = json.load(fh)[mode]
    got = digests(out)
    assert sorted(set(want) - set(got)) == [], "files no longer written"
    assert sorted(set(got) - set(want)) == [], "files newly written"
    assert sorted(k for k in want if want[k] != got[k]) == [], "files whose content changed"
