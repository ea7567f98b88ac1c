"""Every registered block type has what the suite relies on: a golden vector the golden tests read, a C twin with
the same block layout, a mix and a recipe that reach it. A type added to the registry without one of these fails
here instead of silently escaping the byte-exactness tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantcli.quant.backend import get_backend
from quantcli.quant.base import quant_class, registered_types
from quantcli.quant.mixes.catalog import MIXES
from quantcli.recipe import builtin_names, load_recipe, parse_recipe
from quantcli.recipe.builtin import builtin_path
from tests.quant import test_kquants, test_legacy_types

GOLDEN = Path(__file__).resolve().parents[2] / "formats" / "golden"
TYPES = registered_types()
#: Types with no built-in recipe, and why (docs/mixes.md): a recipe naming them is still accepted.
NO_BUILTIN_RECIPE = {
    GGMLQuantizationType.TQ1_0: "ternary: meant for models trained ternary, poor on others",
    GGMLQuantizationType.TQ2_0: "ternary: meant for models trained ternary, poor on others",
}
ids = [t.name for t in TYPES]


def test_the_registry_holds_every_block_type_of_the_kernels() -> None:
    assert len(TYPES) >= 14
    kernels = get_backend("c").kernels
    assert kernels is not None
    orphans = [t.name for t in GGMLQuantizationType if kernels.layout(int(t)) is not None and t not in TYPES]
    assert not orphans, f"C kernels without a reference class: {orphans}"


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_golden_vector_exists_and_the_golden_tests_read_it(qtype: GGMLQuantizationType) -> None:
    path = GOLDEN / f"{qtype.name.lower()}.npz"
    assert path.is_file(), f"no golden vector for {qtype.name}: run formats/golden/make_golden.py"
    golden = np.load(path)
    rows = golden["rows"]
    expected_shape = (rows.shape[0], quant_class(qtype).row_bytes(rows.shape[1]))
    assert golden["expected"].shape == expected_shape and golden["expected_imatrix"].shape == expected_shape
    assert golden["imatrix"].shape == (rows.shape[1],)
    assert qtype in test_legacy_types.TYPES + test_kquants.KQUANTS, f"{qtype.name} is in no golden test's type list"


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_c_twin_exists_with_the_same_block_layout(qtype: GGMLQuantizationType) -> None:
    cls = quant_class(qtype)
    assert get_backend("c").uses_c(qtype), f"{qtype.name} has no C kernel (quant/_kernels/registry.c)"
    layout = get_backend("c").kernels.layout(int(qtype))  # type: ignore[union-attr]
    assert layout == (cls.block_size, cls.type_size) == GGML_QUANT_SIZES[qtype]


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_a_mix_and_a_recipe_reach_the_type(qtype: GGMLQuantizationType) -> None:
    mixes = [name for name, mix in MIXES.items() if mix.default_type == qtype]
    assert mixes, f"no mix makes {qtype.name} its default type (quant/mixes/catalog.py)"
    recipe = parse_recipe(f"quantize:\n  type: {mixes[0]}\n", default_name="x")
    assert MIXES[recipe.outputs[0].type.upper()].default_type == qtype
    recipes = [load_recipe(builtin_path(name)) for name in builtin_names()]
    builtin = [r.name for r in recipes if r.outputs and r.outputs[0].type.upper() in mixes]   # folder-only: none
    if qtype in NO_BUILTIN_RECIPE:
        assert not builtin, f"{qtype.name} has a built-in recipe now: drop it from NO_BUILTIN_RECIPE"
    else:
        assert builtin, f"no built-in recipe (recipes/*.yaml) outputs {qtype.name}"


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_dequantize_in_slices_equals_gguf_py(qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch) -> None:
    """dequantize decodes a slice of blocks at a time (bounding the decoders' temporaries); slices that do not
    divide the tensor, or a row, give gguf-py's values all the same."""
    from gguf import quants as gguf_quants

    from quantcli.quant import base

    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = np.load(GOLDEN / f"{qtype.name.lower()}.npz")["expected"]        # real blocks, finite scales
    n_per_row = data.shape[1] // type_size * block_size
    whole = quant_class(qtype).dequantize(data, n_per_row)
    monkeypatch.setattr(base, "DECODE_SLICE_VALUES", 3 * block_size)
    sliced = quant_class(qtype).dequantize(data, n_per_row)
    assert len(data) * n_per_row > 3 * block_size
    np.testing.assert_array_equal(sliced, whole)
    np.testing.assert_array_equal(sliced, gguf_quants.dequantize(data, qtype).reshape(sliced.shape))
