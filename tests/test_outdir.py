"""Output folders (issue #13): twinjax writes a trial, safety run, simulation or demo only
into a new or empty folder or its own earlier output of the same kind, and never
overwrites files it did not write. Checked before anything is simulated."""

import json

import pytest
from typer.testing import CliRunner

from twinjax._outdir import MARKER, OutputFolderError, claim
from twinjax.cli import app


def test_claim_new_empty_own_and_foreign(tmp_path):
    new = claim(tmp_path / "a" / "b", "trial")
    assert json.loads((new / MARKER).read_text())["kind"] == "trial"
    assert claim(new, "trial") == new  # its own output: reused
    with pytest.raises(OutputFolderError, match="not of a safety run"):
        claim(new, "safety")
    empty = tmp_path / "empty"
    empty.mkdir()
    claim(empty, "demo")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my own report")
    with pytest.raises(OutputFolderError, match=r"not empty and was not written by twinjax"):
        claim(mine, "trial")
    assert (mine / "report.html").read_text() == "my own report"
    assert not (mine / MARKER).exists()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputFolderError, match="not a folder"):
        claim(f, "trial")


def test_cli_refuses_a_user_folder_before_simulating(tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "report.html").write_text("my own report")
    r = CliRunner().invoke(app, ["simulate", "pk1_iv", "--dose", "100:central", "--out", str(mine)])
    assert r.exit_code == 2, r.output
    assert "not empty and was not written by twinjax" in " ".join(r.output.split())
    assert "Traceback" not in r.output
    assert sorted(p.name for p in mine.iterdir()) == ["report.html"]
    assert (mine / "report.html").read_text() == "my own report"
