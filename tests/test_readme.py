"""The README's library example runs as written, for a few steps on a self-made text."""

import re
from pathlib import Path

from lmcore import presets
from lmcore.__main__ import main as lmcore_main

README = Path(__file__).resolve().parents[1] / "README.md"


def library_example() -> str:
    section = README.read_text().split("## Using lmcore on its own", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_library_example_trains_exports_and_samples(tmp_path, monkeypatch, capsys, shakespeare_text):
    corpus = tmp_path / "data/tinyshakespeare/input.txt"
    corpus.parent.mkdir(parents=True)
    corpus.write_text(shakespeare_text * 4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(presets.PRESETS["gpt-fast-char"]["train"], "max_steps", 4)

    exec(compile(library_example(), str(README), "exec"), {})

    printed = capsys.readouterr().out
    assert "4 {'train/loss'" in printed and "4 {'val/loss'" in printed
    assert (tmp_path / "shakespeare-gpt/model.safetensors").exists()
    assert lmcore_main(["generate", "--model", "shakespeare-gpt", "--prompt", "ROMEO:", "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_the_readme_stays_a_front_door_of_8_kb_at_most():
    assert len(README.read_bytes()) <= 8192, "move detail to docs/ (issue 18: the README is the front door)"
