import subprocess
import sys

import unlock_lens


def test_every_public_name_resolves():
    for name in unlock_lens.__all__:
        assert getattr(unlock_lens, name) is not None, name


def test_core_math_imports_no_model_library():
    code = (
        "import sys, unlock_lens.align, unlock_lens.masterkey, unlock_lens.diagnostics.similarity;"
        "bad = [m for m in ('transformer_lens', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
