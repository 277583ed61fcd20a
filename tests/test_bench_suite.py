"""examples/bench_suite.py: section splicing and the data preparation before the first section."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import bench_suite  # noqa: E402


def test_splice_replaces_a_section_and_appends_a_missing_one():
    text = "# B\n\n<!-- bench:a -->\nold\n<!-- /bench:a -->\n\nnotes\n"
    out = bench_suite.splice(text, "a", "new table")
    assert "new table" in out and "old" not in out and out.endswith("notes\n")
    out = bench_suite.splice(out, "b", "b table")
    assert out.rstrip().endswith("<!-- bench:b -->\nb table\n<!-- /bench:b -->")


def test_prepare_data_runs_only_the_scripts_whose_output_is_missing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    scripts = tmp_path / "examples"
    scripts.mkdir()
    # a fake fetch_data.py (bench_suite imports cache_dir from it) and two prepare scripts that
    # record each run in the cache
    (scripts / "fetch_data.py").write_text(
        "import os, sys\nfrom pathlib import Path\n"
        "def cache_dir():\n    return Path(os.environ['INVDIFF_CACHE'])\n"
        "if __name__ == '__main__':\n"
        "    cache_dir().mkdir(parents=True, exist_ok=True)\n"
        "    open(cache_dir() / 'log', 'a').write('fetch\\n')\n")
    for name in ("make_a", "make_b"):
        (scripts / f"{name}.py").write_text(
            "import os, sys\nfrom pathlib import Path\nc = Path(os.environ['INVDIFF_CACHE'])\n"
            f"(c / '{name}.npy').write_text('x')\nopen(c / 'log', 'a').write('{name} ' + ' '.join(sys.argv[1:]) + '\\n')\n")
    monkeypatch.setenv("INVDIFF_CACHE", str(cache))
    monkeypatch.setattr(bench_suite, "HERE", scripts)
    monkeypatch.setattr(bench_suite, "PREPARE", ((["fetch_data.py"], None), (["make_a.py", "--size", "8"], "make_a.npy"),
                                                 (["make_b.py"], "make_b.npy")))
    cache.mkdir()
    (cache / "make_b.npy").write_text("already there")
    bench_suite.prepare_data()
    assert (cache / "log").read_text().split("\n")[:2] == ["fetch", "make_a --size 8"]
    assert (cache / "make_b.npy").read_text() == "already there"
    bench_suite.prepare_data()  # everything there now: only the checksum pass of fetch_data runs again
    assert (cache / "log").read_text().count("make_a") == 1


def test_prepare_data_stops_with_one_sentence_when_a_script_fails(tmp_path, monkeypatch):
    scripts = tmp_path / "examples"
    scripts.mkdir()
    (scripts / "fetch_data.py").write_text("import os\nfrom pathlib import Path\n"
                                           "def cache_dir():\n    return Path(os.environ['INVDIFF_CACHE'])\n")
    (scripts / "broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setenv("INVDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench_suite, "HERE", scripts)
    monkeypatch.setattr(bench_suite, "PREPARE", ((["broken.py"], "never.npy"),))
    with pytest.raises(SystemExit, match="broken.py failed"):
        bench_suite.prepare_data()


def test_text_edited_while_a_section_runs_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "B.md"
    out.write_text("# B\n\n<!-- bench:demo -->\nold\n<!-- /bench:demo -->\n\nnotes\n")
    # the section's command edits the notes by hand, as a user may during an hours-long run
    edit = (f"from pathlib import Path; p = Path({str(out)!r}); "
            "p.write_text(p.read_text().replace('notes', 'notes edited meanwhile')); print('| new | table |')")
    monkeypatch.setattr(bench_suite, "sections", lambda quick, device: {"demo": [sys.executable, "-c", edit]})
    monkeypatch.setattr(bench_suite, "prepare_data", lambda: None)
    monkeypatch.setattr(sys, "argv", ["bench_suite.py", "--only", "demo", "--out", str(out)])
    bench_suite.main()
    text = out.read_text()
    assert "| new | table |" in text and "old" not in text
    assert text.endswith("notes edited meanwhile\n")


def test_every_section_of_the_suite_has_its_place_in_benchmarks_md():
    """A section without markers would be appended at the end of BENCHMARKS.md, away from its
    prose; a marker pair no section writes is a table nothing can reproduce."""
    text = bench_suite.BENCHMARKS.read_text()
    written = set(bench_suite.sections(quick=False, device="cpu")) | set(bench_suite.sections(quick=True, device="cpu"))
    for name in written:
        assert f"<!-- bench:{name} -->" in text and f"<!-- /bench:{name} -->" in text, name
    assert set(re.findall(r"<!-- bench:([\w-]+) -->", text)) <= written


def test_every_image_set_the_suite_reads_is_one_bench_reconstruct_knows():
    import bench_reconstruct

    for name, cmd in bench_suite.sections(quick=False, device="cpu").items():
        if "--set" in cmd:
            assert cmd[cmd.index("--set") + 1] in bench_reconstruct.SETS, name


@pytest.mark.parametrize("emulated", [True, False])
def test_quick_mode_leaves_out_the_bf16_sections_where_bf16_is_emulated(emulated, monkeypatch, capsys):
    monkeypatch.setattr(bench_suite, "slow_bf16", lambda: emulated)
    monkeypatch.setattr(sys, "argv", ["bench_suite.py", "--quick", "--dry-run"])
    bench_suite.main()
    out = capsys.readouterr().out
    for name in bench_suite.BF16_SECTIONS:
        assert (f"[{name}] left out in quick mode: this CPU has no bfloat16 instructions" in out) == emulated
        assert (f"[{name}] python examples/" in out) == (not emulated)
    assert "[recon-256] python examples/bench_reconstruct.py" in out  # the other sections stay
    monkeypatch.setattr(sys, "argv", ["bench_suite.py", "--dry-run"])  # the full suite always times bf16
    bench_suite.main()
    out = capsys.readouterr().out
    assert all(f"[{name}] python examples/" in out for name in bench_suite.BF16_SECTIONS)
