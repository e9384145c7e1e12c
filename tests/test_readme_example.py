"""README's Python example, run as written on tiny random models: only the model names and the
sizes are substituted. It shows progress, saves its pack under out/ and generates with the
protocol's stop strings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unlock_lens.evaluate.datasets import default_data_dir
from unlock_lens.pack import CapabilityPack

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if "Unlock(source=source" in b)


@pytest.mark.skipif(default_data_dir() is None, reason="needs ../shared/data (GSM8K train)")
def test_the_readme_example_runs_on_tiny_models(tiny_dirs, tmp_path, monkeypatch, capsys):
    code = readme_example()
    substitutions = {'"smollm2-135m-instruct"': repr(str(tiny_dirs["qwen2"])),
                     '"gemma-3-270m"': repr(str(tiny_dirs["llama"])),
                     '["key"][:128]': '["key"][:6]', '["align"][:256]': '["align"][:8]',
                     '["dev"][:4]': '["dev"][:2]', "max_new_tokens=128": "max_new_tokens=6"}
    for old, new in substitutions.items():
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - README's own code

    err = capsys.readouterr().err
    assert "%|" in err  # tqdm bars: the example is not silent while it works
    pack = CapabilityPack.load(tmp_path / "out" / "cot_smollm2_to_gemma.safetensors")
    assert len(pack.maps) == len(namespace["pack"].maps)
    pipe, outs = namespace["pipe"], namespace["outs"]
    stops = pipe.protocol.decoding_for(pipe.contrast).stop_strings
    assert "\nQuestion:" in stops and len(outs) == 2
    assert not any(stop in out.text for out in outs for stop in stops)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing else written
