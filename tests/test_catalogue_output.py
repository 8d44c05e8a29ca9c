"""The whole catalogue compiles to exactly the files recorded in tests/data/catalogue_output.json,
with each model's own quantization and with ``--quantization all``: any change of defc's output
shows up here, file by file, and must be a fix that is named where the record is updated (and in
the commit that updates it)."""
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
            if os.path.relpath(p, root) == "manifest.json":
                continue                # checked on its own (it holds digests of the specs and defc)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()[:16]
    return out


@pytest.mark.parametrize("mode,extra", [("default", []), ("all", ["--quantization", "all"])])
def test_catalogue_output_is_the_recorded_one(mode, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEFC_NO_CACHE", "1")
    out = str(tmp_path / "out")
    code = main(["compile", "--all-models", "--out", out] + extra)
    err = capsys.readouterr().err
    with open(RECORD, encoding="utf-8") as fh:
        record = json.load(fh)
    want = record[mode]
    # the serving configs whose MoE kernels the definitions cannot describe are reported as gaps
    gaps = [line for line in err.splitlines() if line.startswith("defc: gap: ")]
    assert gaps == record["gaps"][mode]
    assert code == (1 if gaps else 0)
    got = digests(out)
    assert sorted(set(want) - set(got)) == [], "files no longer written"
    assert sorted(set(got) - set(want)) == [], "files newly written"
    assert sorted(k for k in want if want[k] != got[k]) == [], "files whose content changed"
    check_manifest(out, got)


def check_manifest(out, files):
    """manifest.json names every catalogue model, with its catalogue file's digest, and the files
    each produced: together exactly the files written."""
    from defc.compiler.manifest import file_sha256
    from defc.compiler.models import catalogue_slugs
    from defc.compiler.paths import PROJECT_ROOT
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as fh:
        man = json.load(fh)
    assert sorted(man["models"]) == catalogue_slugs()
    assert len(man["inputs"]) == 1
    produced = set()
    for slug, entry in man["models"].items():
        src = entry["source"]
        assert src["kind"] == "catalogue" and src["slug"] == slug
        assert src["sha256"] == file_sha256(os.path.join(PROJECT_ROOT, src["file"]))
        assert entry["inputs"] in man["inputs"] and entry["servings"] and entry["definitions"]
        produced |= set(entry["definitions"])
    assert produced == set(files)
