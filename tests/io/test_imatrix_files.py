"""The imatrix writers: both of llama.cpp's file formats, read back by our reader and by independent parsers."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from quantcli.errors import OutputError
from quantcli.io.imatrix import ImatrixStats, MatrixStats, write_imatrix, write_imatrix_dat, write_imatrix_gguf
from quantcli.quant.imatrix import load_imatrix

CHUNK = 64


def sample_stats(seed: int = 0) -> ImatrixStats:
    """A dense matrix, a second one, and a 3-expert weight whose middle expert saw no token."""
    rng = np.random.default_rng(seed)
    dense = MatrixStats(rng.uniform(0.0, 50.0, (1, 32)).astype(np.float32), np.array([3 * CHUNK]))
    other = MatrixStats(rng.uniform(0.0, 5.0, (1, 16)).astype(np.float32), np.array([3 * CHUNK]))
    sums = rng.uniform(1.0, 9.0, (3, 8)).astype(np.float32)
    sums[1] = 0.0
    experts = MatrixStats(sums, np.array([70, 0, 122]))
    return ImatrixStats({"blk.1.ffn_down.weight": other, "blk.0.attn_q.weight": dense,
                         "blk.0.ffn_up_exps.weight": experts}, datasets=("calib.txt",), chunk_count=3,
                        chunk_size=CHUNK)


def test_gguf_round_trip_through_our_reader_gives_mean_squares(tmp_path: Path) -> None:
    stats = sample_stats()
    write_imatrix_gguf(tmp_path / "m.gguf", stats)
    im = load_imatrix(tmp_path / "m.gguf")
    assert set(im.weights) == set(stats.entries)
    assert im.datasets == ("calib.txt",) and im.chunk_count == 3
    for name, entry in stats.entries.items():
        counts = entry.counts.astype(np.float64)[:, None]
        expected = np.where(counts > 0, entry.sums / np.maximum(counts, 1), 1.0).reshape(-1)
        np.testing.assert_allclose(im.weights[name], expected, rtol=1e-6)
    assert (im.weights["blk.0.ffn_up_exps.weight"][8:16] == 1.0).all()  # the idle expert weighs 1, as in llama.cpp


def test_gguf_layout_is_llama_imatrix_s(tmp_path: Path) -> None:
    write_imatrix_gguf(tmp_path / "m.gguf", sample_stats())
    reader = GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.type"].contents() == "imatrix"
    assert reader.fields["imatrix.datasets"].contents() == ["calib.txt"]
    assert reader.fields["imatrix.chunk_count"].contents() == 3
    assert reader.fields["imatrix.chunk_size"].contents() == CHUNK
    assert "general.architecture" not in reader.fields   # llama-imatrix writes none
    names = [t.name for t in reader.tensors]
    assert names == ["blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts",
                     "blk.0.ffn_up_exps.weight.in_sum2", "blk.0.ffn_up_exps.weight.counts",
                     "blk.1.ffn_down.weight.in_sum2", "blk.1.ffn_down.weight.counts"]
    tensors = {t.name: t for t in reader.tensors}
    assert all(t.tensor_type == GGMLQuantizationType.F32 for t in reader.tensors)
    assert list(tensors["blk.0.ffn_up_exps.weight.in_sum2"].shape) == [8, 3]     # ggml order: columns, experts
    assert list(tensors["blk.0.ffn_up_exps.weight.counts"].shape) == [1, 3]
    assert np.asarray(tensors["blk.0.ffn_up_exps.weight.counts"].data).reshape(-1).tolist() == [70.0, 0.0, 122.0]


def parse_dat(data: bytes) -> tuple[dict[str, tuple[int, np.ndarray]], int, str]:
    """An independent reading of the legacy layout: entries (ncall, values), chunk count, dataset."""
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        out = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return out

    (n,) = take("<i")
    entries = {}
    for _ in range(n):
        (length,) = take("<i")
        name = data[pos:pos + length].decode()
        pos += length
        ncall, nval = take("<ii")
        entries[name] = (ncall, np.frombuffer(data, "<f4", nval, pos).copy())
        pos += 4 * nval
    (chunks,) = take("<i")
    (length,) = take("<i")
    dataset = data[pos:pos + length].decode()
    assert pos + length == len(data)
    return entries, chunks, dataset


def test_dat_layout_scales_means_by_calls(tmp_path: Path) -> None:
    stats = sample_stats()
    write_imatrix_dat(tmp_path / "m.dat", stats)
    entries, chunks, dataset = parse_dat((tmp_path / "m.dat").read_bytes())
    assert list(entries) == sorted(stats.entries) and chunks == 3 and dataset == "calib.txt"
    ncall, values = entries["blk.0.ffn_up_exps.weight"]
    assert ncall == 2                                 # ceil(122 / 64): the busiest expert's tokens in chunks
    experts = stats.entries["blk.0.ffn_up_exps.weight"]
    np.testing.assert_allclose(values[:8], experts.sums[0] / 70 * 2, rtol=1e-6)
    assert (values[8:16] == 2.0).all()                # an idle expert stores 1 * ncall
    assert entries["blk.0.attn_q.weight"][0] == 3


def test_dat_round_trip_through_our_reader(tmp_path: Path) -> None:
    stats = sample_stats(1)
    write_imatrix(tmp_path / "m.dat", stats, "dat")
    im = load_imatrix(tmp_path / "m.dat")
    assert im.datasets == ("calib.txt",) and im.chunk_count == 3
    for name, entry in stats.entries.items():
        np.testing.assert_allclose(im.weights[name], entry.mean_squares.reshape(-1), rtol=1e-6)


def test_dat_skips_a_weight_no_token_reached(tmp_path: Path) -> None:
    stats = sample_stats()
    idle = MatrixStats(np.zeros((2, 4), np.float32), np.zeros(2, np.int64))
    write_imatrix_dat(tmp_path / "m.dat", ImatrixStats({**stats.entries, "blk.9.attn_q.weight": idle},
                                                       stats.datasets, 3, CHUNK))
    entries, _, _ = parse_dat((tmp_path / "m.dat").read_bytes())
    assert "blk.9.attn_q.weight" not in entries and len(entries) == 3


def test_an_unwritable_target_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    for fmt in ("gguf", "dat"):
        with pytest.raises(OutputError):
            write_imatrix(tmp_path / "file" / f"m.{fmt}", sample_stats(), fmt)


# -- llama.cpp reads the files: its own loader, then its quantizer ----------------------------------------------

@pytest.fixture(scope="module")
def llama_read(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("llama_cpp")
    from tests.imatrix_loader import llama_cpp_imatrix_reader

    return llama_cpp_imatrix_reader(tmp_path_factory.mktemp("imatrix-loader"))


def quantize_weights(loaded: dict) -> dict[str, np.ndarray]:
    """What llama-quantize (tools/quantize/quantize.cpp) hands the quantizer from a loaded file: GGUF sums / count
    per expert (1 for an idle one), legacy values / ncall."""
    out = {}
    for name, e in loaded["entries"].items():
        sums, counts = np.asarray(e["sums"], np.float32), np.asarray(e["counts"], np.float32)
        if loaded["is_legacy"]:
            out[name] = sums / counts[0] if counts[0] > 0 else sums
        else:
            per = sums.reshape(len(counts), -1)
            out[name] = np.where(counts[:, None] > 0, per / np.where(counts > 0, counts, 1)[:, None], 1).reshape(-1)
    return {n: w.astype(np.float32) for n, w in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_llama_cpp_loads_what_we_wrote(llama_read, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    stats = sample_stats(2)
    write_imatrix(tmp_path / f"m.{fmt}", stats, fmt)
    loaded = llama_read(tmp_path / f"m.{fmt}")
    assert loaded["is_legacy"] == (fmt == "dat") and loaded["has_metadata"] == (fmt == "gguf")
    assert loaded["datasets"] == ["calib.txt"] and loaded["chunk_count"] == 3
    assert set(loaded["entries"]) == set(stats.entries)
    weights = quantize_weights(loaded)
    ours = load_imatrix(tmp_path / f"m.{fmt}").weights
    for name, entry in stats.entries.items():
        if fmt == "gguf":
            assert loaded["chunk_size"] == CHUNK
            assert loaded["entries"][name]["counts"] == entry.counts.tolist()
            np.testing.assert_array_equal(np.asarray(loaded["entries"][name]["sums"], np.float32), entry.sums.reshape(-1))
        np.testing.assert_array_equal(weights[name], ours[name])     # our reader normalises as llama-quantize does


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_llama_quantize_with_our_calibrated_file_gives_our_bytes(llama_read, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    from quantcli.pipeline.calibrate import CalibrationRequest, run_calibration
    from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
    from quantcli.quant.mixes import MIXES
    from tests.fixtures.paths import model_path
    from tests.gguf_files import scalar_metadata
    from tests.llama_quantize_oracle import QuantizeRun, llama_quantize
    from tests.oracle.test_bytes_vs_llama_quantize import assert_same_tensors

    model = str(model_path("tiny-llama"))
    imatrix = tmp_path / f"imatrix.{fmt}"
    run_calibration(CalibrationRequest(model=model, output=imatrix, ctx=64, chunks=4))
    f32 = tmp_path / "f32.gguf"
    convert(ConvertRequest(model=model, recipe=recipe_from_type("F32"), output=f32, verify="none"))
    loaded = llama_read(imatrix)
    for mix in ("Q4_K_M", "IQ4_XS"):
        peer = tmp_path / f"peer-{mix}.gguf"
        assert llama_quantize(f32, peer, QuantizeRun(MIXES[mix].ftype, imatrix=quantize_weights(loaded))) == 0
        mine = tmp_path / f"ours-{mix}.gguf"
        convert(ConvertRequest(model=model, recipe=recipe_from_type(mix), output=mine, imatrix=imatrix, verify="none"))
        assert_same_tensors(mine, peer)
    # the keys llama-quantize adds from the file it loaded (quantize.cpp: path cut to 127 bytes, first dataset,
    # entry count, chunk count when positive)
    meta = scalar_metadata(mine)
    assert meta["quantize.imatrix.file"] == str(imatrix)[:127]
    assert meta["quantize.imatrix.dataset"] == loaded["datasets"][0] == "builtin:calibration"
    assert meta["quantize.imatrix.entries_count"] == len(loaded["entries"]) == 14
    assert meta["quantize.imatrix.chunks_count"] == loaded["chunk_count"] == 4
