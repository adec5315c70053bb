"""Parley's custom ops (service/engine/kernels) against numpy references and ONNX Runtime's own kernels,
and the decode graph they make against the stock graph on the real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from models.prepare import PrepareRequest, prepare
from service.engine.kernels import fast_quant_linear
from service.engine.kernels.build import build, compile_library
from service.engine.kernels.fusion import DOMAIN, fuse
from service.engine.runner import ModelRunner, RunnerOptions
from service.sampling.columns import HeadInputs, TokenEdits
from tests.sampling.reference import reference_top_tokens, zipf_logits

H, G, D, CAPACITY, POSITIONS = 9, 3, 64, 48, 64  # the default model's head layout, a small cache


@pytest.fixture(scope="module")
def native_library() -> Path:
    return build()  # a no-op when make setup has built it


@pytest.fixture(scope="module", params=["native", "portable"])
def library(
    request: pytest.FixtureRequest, native_library: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Each op test runs on this CPU's build and on a build without vector extensions (the plain-C paths
    that other CPUs run)."""
    if request.param == "native":
        return native_library
    return compile_library(tmp_path_factory.mktemp("portable") / "libparley_ops.so", march="x86-64")


def _session(
    library: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> ort.InferenceSession:
    model = helper.make_model(
        helper.make_graph(nodes, "kernel_test", inputs, outputs, initializers or []),
        opset_imports=[
            helper.make_opsetid("", 21),
            helper.make_opsetid(DOMAIN, 1),
            helper.make_opsetid("com.microsoft", 1),
        ],
        ir_version=10,
    )
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _info(name: str, shape: list[int | str] | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _attention_session(library: Path, op: str, d: int = D) -> ort.InferenceSession:
    """A one-node session: DecodeAttention keeps its cache in fp16, GroupQueryAttention in fp32."""
    cache = TensorProto.FLOAT16 if op == "DecodeAttention" else TensorProto.FLOAT
    inputs = [
        _info("qkv", ["B", "S", (H + 2 * G) * d]),
        _info("past_k", ["B", G, CAPACITY, d], cache),
        _info("past_v", ["B", G, CAPACITY, d], cache),
        _info("seqlens_k", ["B"], TensorProto.INT32),
        _info("total", [], TensorProto.INT32),
        _info("cos", [POSITIONS, d // 2]),
        _info("sin", [POSITIONS, d // 2]),
    ]
    if op == "GroupQueryAttention":
        node = helper.make_node(
            op,
            ["qkv", "", "", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"],
            ["out", "present_k", "present_v"],
            domain="com.microsoft",
            num_heads=H,
            kv_num_heads=G,
            do_rotary=1,
            rotary_interleaved=1,
        )
    else:
        node = helper.make_node(
            op,
            ["qkv", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"],
            ["out", "present_k", "present_v"],
            domain=DOMAIN,
            num_heads=H,
            kv_num_heads=G,
            rotary_interleaved=1,
        )
    outputs = [_info("out", None), _info("present_k", None, cache), _info("present_v", None, cache)]
    return _session(library, [node], inputs, outputs)


def _rotary(d: int = D) -> tuple[np.ndarray, np.ndarray]:
    angles = np.outer(np.arange(POSITIONS), 10000.0 ** (-np.arange(0, d, 2) / d))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _reference_attention(
    qkv: np.ndarray, keys: np.ndarray, values: np.ndarray, seqlens: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Straight numpy: rotate (adjacent pairs), append at each row's own position, causal softmax. The
    new keys and values are stored at the cache's precision (fp16 or fp32) before any query reads them."""
    store, d = keys.dtype, keys.shape[-1]
    cos, sin = _rotary(d)
    keys, values = keys.astype(np.float64), values.astype(np.float64)
    batch, seq, _ = qkv.shape
    out = np.zeros((batch, seq, H * d))

    def rotate(x: np.ndarray, pos: int) -> np.ndarray:
        y = np.empty_like(x, dtype=np.float64)
        y[0::2] = x[0::2] * cos[pos] - x[1::2] * sin[pos]
        y[1::2] = x[0::2] * sin[pos] + x[1::2] * cos[pos]
        return y

    for b in range(batch):
        past = int(seqlens[b]) + 1 - seq
        for s in range(seq):
            row = qkv[b, s]
            for g in range(G):
                key = rotate(row[(H + g) * d : (H + g + 1) * d], past + s)
                keys[b, g, past + s] = key.astype(np.float32).astype(store)
                values[b, g, past + s] = row[(H + G + g) * d : (H + G + g + 1) * d].astype(store)
        for s in range(seq):
            pos = past + s
            for h in range(H):
                g = h // (H // G)
                q = rotate(qkv[b, s, h * d : (h + 1) * d], pos)
                scores = keys[b, g, : pos + 1] @ q / np.sqrt(d)
                p = np.exp(scores - scores.max())
                out[b, s, h * d : (h + 1) * d] = (p / p.sum()) @ values[b, g, : pos + 1]
    return out, keys, values


def _attention_inputs(
    seed: int, seqlens: list[int], seq: int, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random packed QKV for `seq` new tokens per row, fp16 caches, and the rows' seqlens_k."""
    rng = np.random.default_rng(seed)
    batch = len(seqlens)
    qkv = rng.standard_normal((batch, seq, (H + 2 * G) * d)).astype(np.float32)
    keys = rng.standard_normal((batch, G, CAPACITY, d)).astype(np.float16)
    values = rng.standard_normal((batch, G, CAPACITY, d)).astype(np.float16)
    return qkv, keys, values, np.array(seqlens, dtype=np.int32)


def _run_attention(
    session: ort.InferenceSession,
    qkv: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    seqlens: np.ndarray,
    in_place: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run with the caches bound as the engine binds them (in place) or as fresh outputs."""
    cos, sin = _rotary(keys.shape[-1])
    binding = session.io_binding()
    for name, value in (("qkv", qkv), ("seqlens_k", seqlens), ("cos", cos), ("sin", sin)):
        binding.bind_cpu_input(name, value)
    binding.bind_cpu_input("total", np.array(int(seqlens.max()) + 1, dtype=np.int32))
    for past, present, cache in (("past_k", "present_k", keys), ("past_v", "present_v", values)):
        binding.bind_input(past, "cpu", 0, cache.dtype.type, list(cache.shape), cache.ctypes.data)
        if in_place:
            binding.bind_output(present, "cpu", 0, cache.dtype.type, list(cache.shape), cache.ctypes.data)
        else:
            binding.bind_output(present)
    binding.bind_output("out")
    session.run_with_iobinding(binding)
    present_k, present_v, out = binding.copy_outputs_to_cpu()  # in binding order
    return (out, keys, values) if in_place else (out, present_k, present_v)


@pytest.mark.parametrize(
    ("seqlens", "seq", "in_place"),
    [
        ([0], 1, True),  # the very first token
        ([7, 0, 30], 1, True),  # decode: rows of different lengths
        ([11], 5, True),  # several new tokens after a cached prefix
        ([4], 5, False),  # a whole prompt, present not bound to past: past rows are copied
        ([CAPACITY - 1, 3], 1, False),  # the last row of the cache
        ([40], 21, True),  # a prefill chunk after a prefix: several query tiles and key blocks
        ([CAPACITY - 1], CAPACITY, False),  # a prompt filling the cache, copied
    ],
)
def test_decode_attention_matches_numpy_and_group_query_attention(
    library: Path, seqlens: list[int], seq: int, in_place: bool
) -> None:
    """Against numpy on the same fp16 cache (closely), and against GroupQueryAttention on an fp32 copy of
    it, which differs only by the new rows' fp16 rounding."""
    qkv, keys, values, lengths = _attention_inputs(len(seqlens) * 10 + seq, seqlens, seq, D)
    want_out, want_k, want_v = _reference_attention(qkv, keys, values, lengths)

    ours = _run_attention(
        _attention_session(library, "DecodeAttention"), qkv, keys.copy(), values.copy(), lengths, in_place
    )
    ort_own = _run_attention(
        _attention_session(library, "GroupQueryAttention"),
        qkv,
        keys.astype(np.float32),
        values.astype(np.float32),
        lengths,
        True,
    )
    for b, length in enumerate(seqlens):  # rows past each sequence's end are not part of the contract
        used = length + 1
        assert ours[1].dtype == ours[2].dtype == np.float16
        np.testing.assert_allclose(ours[1][b, :, :used], want_k[b, :, :used], rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(ours[2][b, :, :used], want_v[b, :, :used])
    np.testing.assert_allclose(ours[0], want_out, atol=1e-4)
    np.testing.assert_allclose(ours[0], ort_own[0], atol=5e-3)


@pytest.mark.parametrize("head_dim", [128, 32])  # another multiple of 64; the portable path's only case
@pytest.mark.parametrize(("seqlens", "seq"), [([7, 0, 30], 1), ([40], 21)])
def test_decode_attention_at_other_head_sizes(
    library: Path, head_dim: int, seqlens: list[int], seq: int
) -> None:
    qkv, keys, values, lengths = _attention_inputs(head_dim + seq, seqlens, seq, head_dim)
    want_out, _, _ = _reference_attention(qkv, keys, values, lengths)
    session = _attention_session(library, "DecodeAttention", head_dim)
    got_out, _, _ = _run_attention(session, qkv, keys.copy(), values.copy(), lengths, True)
    np.testing.assert_allclose(got_out, want_out, atol=1e-4)


def test_decode_attention_rejects_a_row_past_the_cache(library: Path) -> None:
    session = _attention_session(library, "DecodeAttention")
    qkv = np.zeros((1, 1, (H + 2 * G) * D), dtype=np.float32)
    cache = np.zeros((1, G, CAPACITY, D), dtype=np.float16)
    with pytest.raises(Exception, match=r"ai\.parley\.DecodeAttention: .*does not fit the cache"):
        _run_attention(session, qkv, cache, cache.copy(), np.array([CAPACITY], dtype=np.int32), True)


@pytest.mark.parametrize(("rows", "k", "n"), [(1, 576, 960), (8, 1536, 576), (16, 576, 3072), (3, 64, 13)])
def test_block_offset_add_matches_numpy(library: Path, rows: int, k: int, n: int) -> None:
    block = 32
    rng = np.random.default_rng(rows + k + n)
    y = rng.standard_normal((rows, 1, n)).astype(np.float32)
    x = rng.standard_normal((rows, 1, k)).astype(np.float32)
    offsets_t = rng.standard_normal((k // block, n)).astype(np.float32)
    node = helper.make_node("BlockOffsetAdd", ["y", "x", "o"], ["out"], domain=DOMAIN, block_size=block)
    session = _session(
        library,
        [node],
        [_info("y", [rows, 1, n]), _info("x", [rows, 1, k]), _info("o", [k // block, n])],
        [_info("out", None)],
    )
    (got,) = session.run(None, {"y": y, "x": x, "o": offsets_t})
    sums = x.astype(np.float64).reshape(rows, 1, k // block, block).sum(-1)
    np.testing.assert_allclose(got, y + sums @ offsets_t, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("width", [1536, 13])
def test_swiglu_matches_numpy(library: Path, width: int) -> None:
    rng = np.random.default_rng(width)
    gate_up = (rng.standard_normal((4, 1, 2 * width)) * 8).astype(np.float32)
    gate_up[0, 0, :4] = [-200.0, 200.0, 0.0, -0.0]  # saturated and zero gates stay finite and exact-ish
    node = helper.make_node("SwiGLU", ["gate_up"], ["out"], domain=DOMAIN)
    session = _session(library, [node], [_info("gate_up", [4, 1, 2 * width])], [_info("out", None)])
    (got,) = session.run(None, {"gate_up": gate_up})
    gate, up = gate_up[..., :width].astype(np.float64), gate_up[..., width:].astype(np.float64)
    want = gate / (1 + np.exp(-gate)) * up
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _linear_session(
    library: Path, op: str, rows: int, k: int, n: int, bits: int, initializers: list[onnx.TensorProto]
) -> ort.InferenceSession:
    names = [t.name for t in initializers]
    stock = op == "MatMulNBits"
    node = helper.make_node(op, ["x", *names], ["y"], domain="com.microsoft" if stock else DOMAIN)
    attrs = {"K": k, "N": n, "bits": bits, "block_size": 32, **({"accuracy_level": 4} if stock else {})}
    node.attribute.extend(helper.make_attribute(key, value) for key, value in attrs.items())
    return _session(library, [node], [_info("x", [rows, 1, k])], [_info("y", None)], initializers)


@pytest.mark.parametrize(
    ("rows", "k", "n"), [(1, 576, 960), (8, 1536, 576), (11, 64, 40), (3, 576, 3072), (45, 576, 72)]
)
@pytest.mark.parametrize(
    ("bits", "with_offsets", "fp16_exact"),
    [(4, False, False), (4, True, False), (4, True, True), (8, False, False), (8, False, True)],
)
def test_quant_linear_computes_what_matmulnbits_computes(
    library: Path, rows: int, k: int, n: int, bits: int, with_offsets: bool, fp16_exact: bool
) -> None:
    """Same int8 activations, same rounding: equal to MatMulNBits (plus the exact offset term) up to the
    order of float sums, on row counts past one register tile (8), widths past whole 16-column groups and
    inputs long enough (45 rows) to be quantised in parallel chunks.
    fp16_exact: scales and minima as GGUF stores them (fp16), which the kernel keeps in compact form."""
    rng = np.random.default_rng(rows * k + n + bits)
    codes = rng.integers(0, 256, (n, k // 32, 32 * bits // 8), dtype=np.uint8)
    scales = (rng.random((n, k // 32)) * 0.02 + 0.001).astype(np.float32)
    offsets_t = (rng.standard_normal((k // 32, n)) * 0.05).astype(np.float32)
    if fp16_exact:  # a Q4_1 block: scale d and minimum m in fp16, offset m + z·d (as models/weights.py packs)
        scales = scales.astype(np.float16).astype(np.float32)
        minima = offsets_t.astype(np.float16).astype(np.float32)
        offsets_t = minima + (1 << (bits - 1)) * scales.T
    weights = [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(scales, "scales")]
    offsets = [numpy_helper.from_array(offsets_t, "offsets_t")] if with_offsets else []
    ours = _linear_session(library, "QuantLinear", rows, k, n, bits, weights + offsets)
    stock = _linear_session(library, "MatMulNBits", rows, k, n, bits, weights)
    x = rng.standard_normal((rows, 1, k)).astype(np.float32)
    (got,) = ours.run(None, {"x": x})
    (want,) = stock.run(None, {"x": x})
    if with_offsets:
        want = want + x.reshape(rows, 1, k // 32, 32).sum(-1) @ offsets_t
    np.testing.assert_allclose(got, want, atol=1e-5 * float(np.abs(want).max()))
    # and both are the exact product up to int8 activation rounding (about 1% here)
    if bits == 4:
        unsigned = np.stack([codes & 15, codes >> 4], -1).reshape(n, k).astype(np.float64)
    else:
        unsigned = codes.reshape(n, k).astype(np.float64)
    exact_w = np.repeat(scales, 32, axis=1) * (unsigned - (1 << (bits - 1)))
    if with_offsets:
        exact_w += np.repeat(offsets_t.T, 32, axis=1)
    exact = x.astype(np.float64) @ exact_w.T
    assert np.abs(got - exact).max() <= 0.05 * np.abs(exact).max()


def test_quant_linear_is_used_only_with_its_vector_kernel(default_model_dir: Path, tmp_path: Path) -> None:
    model = onnx.load(str(default_model_dir / "model.onnx"), load_external_data=False)
    assert fuse(model, quant_linear=False).linear == 0
    assert sum(node.op_type == "MatMulNBits" for node in model.graph.node) == 121
    portable = compile_library(tmp_path / "libparley_ops.so", march="x86-64")
    assert not fast_quant_linear(portable)


def test_fusion_rewrites_every_pattern_of_the_default_model(default_model_dir: Path) -> None:
    model = onnx.load(str(default_model_dir / "model.onnx"), load_external_data=False)
    before = len(model.graph.node)
    report = fuse(model)
    layers = 30
    assert (report.attention, report.offsets, report.swiglu) == (layers, 4 * layers, layers)
    assert report.linear == 4 * layers + 1  # QKV, O, gate/up, down per layer; the 8-bit LM head
    ops = {node.op_type for node in model.graph.node}
    gone = {"GroupQueryAttention", "ReduceSum", "Sigmoid", "Split", "BlockOffsetAdd", "MatMulNBits"}
    assert not ops & gone, ops
    assert len(model.graph.node) == before - report.removed_nodes
    # still a well-formed graph: every input is a graph input, an initializer or an earlier node's output
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        assert all(name in known for name in node.input if name), node.name
        known.update(node.output)
    assert all(o.name in known for o in model.graph.output)
    # the KV cache follows DecodeAttention into fp16: 30 layers' past inputs and present outputs
    caches = [v for v in (*model.graph.input, *model.graph.output) if ".key" in v.name or ".value" in v.name]
    assert len(caches) == 4 * layers
    assert {v.type.tensor_type.elem_type for v in caches} == {TensorProto.FLOAT16}
    stock = onnx.load(str(default_model_dir / "model.onnx"), load_external_data=False)
    assert fuse(stock, attention=False).attention == 0
    stock_keys = {v.type.tensor_type.elem_type for v in stock.graph.input if ".key" in v.name}
    assert stock_keys == {TensorProto.FLOAT}


@pytest.fixture(scope="module")
def fp32_model_dir(default_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model at fp32 (~10 s): no int8 activations, so kernels can be compared to rounding."""
    request = PrepareRequest(default_gguf, None, "fp32", None, tmp_path_factory.mktemp("fp32") / "m")
    return prepare(request, show_progress=False).model_dir


def _runners(model_dir: Path) -> dict[str, ModelRunner]:
    return {
        mode: ModelRunner(model_dir, RunnerOptions(max_batch=3, kv_capacity=256, threads=2, kernels=mode))
        for mode in ("off", "on")
    }


def test_fused_decode_matches_the_stock_graph_at_fp32(fp32_model_dir: Path, native_library: Path) -> None:
    """Three rows of different lengths, 24 greedy steps: the fused graphs' logits stay within the fp16 KV
    cache's rounding of ONNX Runtime's own kernels (fp32 cache; measured 0.014 at most) and the
    continuations are identical."""
    prompts = [
        [1, 504, 3458, 314, 253, 1345],
        [1, 9690, 28],
        [1, 40, 4046, 282, 2940, 30, 476, 1229, 17, 1099],
    ]
    continuations: dict[str, list[list[int]]] = {}
    logits_by_mode: dict[str, list[np.ndarray]] = {}
    for mode, runner in _runners(fp32_model_dir).items():
        assert (runner.fusions is not None) == (mode == "on")
        if mode == "on":  # at fp32 there is no MatMulNBits: attention and SwiGLU only
            assert runner.fusions is not None
            assert (runner.fusions.attention, runner.fusions.swiglu, runner.fusions.linear) == (30, 30, 0)
            assert runner.kv_shape.dtype == np.float16
        for slot, prompt in enumerate(prompts):
            runner.prefill(slot, np.array(prompt[:-1]), 0)
        last = np.array([p[-1] for p in prompts])
        cached = np.array([len(p) - 1 for p in prompts])
        continuations[mode], logits_by_mode[mode] = [], []
        for _ in range(24):
            logits = runner.decode(last, cached).copy()
            logits_by_mode[mode].append(logits)
            last = logits.argmax(-1)
            continuations[mode].append(last.tolist())
            cached = cached + 1
    worst = max(float(np.abs(a - b).max()) for a, b in zip(*logits_by_mode.values(), strict=True))
    assert worst < 0.05, f"fused decode logits differ from the stock graph's by {worst}"
    assert continuations["on"] == continuations["off"]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    result: np.ndarray = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return result


PREFIXED = 12  # tokens of each row prefilled before teacher-forced decoding


def test_fused_graphs_stay_within_int8_activation_noise_at_int4(
    default_model_dir: Path, default_tokenizer: Tokenizer, native_library: Path
) -> None:
    """At int4 both graphs quantise activations to int8, so an ulp of difference upstream can flip a
    rounding: the bound is statistical. Teacher-forced over a text (same tokens into both): measured mean
    KL 0.005, top-1 agreement 96%. Against the exact weights both are KL 0.004 on the eval text
    (tests/models/test_default_model.py checks the served one)."""
    text = (
        "The quick brown fox jumps over the lazy dog. In the beginning the universe was created. This has "
        "made a lot of people very angry and been widely regarded as a bad move. Models run on many kinds "
        "of hardware."
    )
    ids = default_tokenizer.encode(text).ids
    rows = [ids, ids[5:], ids[11:]]
    steps = min(len(r) for r in rows)
    logits: dict[str, np.ndarray] = {}
    for mode, runner in _runners(default_model_dir).items():
        if mode == "on":  # prefill and decode on the same rewritten graph
            assert runner.fusions is not None
            assert (runner.fusions.attention, runner.fusions.linear) == (30, 121)
        for slot, row in enumerate(rows):
            runner.prefill(slot, np.array(row[:PREFIXED]), 0)  # the prefill graph writes these K/V rows
        logits[mode] = np.array(
            [
                runner.decode(np.array([r[t] for r in rows]), np.full(3, t)).copy()
                for t in range(PREFIXED, steps)
            ]
        )
    stock, fused = _log_softmax(logits["off"]), _log_softmax(logits["on"])
    kl = (np.exp(stock) * (stock - fused)).sum(-1)
    agree = float((stock.argmax(-1) == fused.argmax(-1)).mean())
    assert kl.mean() < 0.02 and kl.max() < 0.2 and agree >= 0.9, (kl.mean(), kl.max(), agree)


HEAD_INPUTS = ("logits", "scales", "edit_rows", "edit_tokens", "edit_factors")


def _head_session(library: Path, k: int) -> ort.InferenceSession:
    node = helper.make_node("SamplingHead", list(HEAD_INPUTS), ["ids", "top", "masses"], domain=DOMAIN, k=k)
    return _session(
        library,
        [node],
        [
            _info("logits", ["rows", 1, "vocab"]),
            _info("scales", ["rows", 2]),
            _info("edit_rows", ["edits"], TensorProto.INT64),
            _info("edit_tokens", ["edits"], TensorProto.INT64),
            _info("edit_factors", ["edits", 3]),
        ],
        [
            _info("ids", None, TensorProto.INT64),
            _info("top", None),
            _info("masses", None, TensorProto.DOUBLE),
        ],
    )


def _head_feed(logits: np.ndarray, inputs: HeadInputs) -> dict[str, np.ndarray]:
    edits = inputs.edits
    arrays = (logits[:, None, :], inputs.scales, edits.rows, edits.tokens, edits.factors)
    return dict(zip(HEAD_INPUTS, arrays, strict=True))


def _head_rows(vocab: int) -> tuple[np.ndarray, HeadInputs]:
    """Rows that exercise the selection: model-like, ties (also across the k-th place), a NaN, a +inf,
    nothing finite, fewer finite logits than k, -inf among finite ones; scales off, equal and apart;
    edits of every kind: the top token suppressed, positive and negative logits penalised, a low token
    biased to the top, ties across the k-th place suppressed, a -inf logit biased (stays -inf), every
    finite logit of a row suppressed."""
    rng = np.random.default_rng(vocab)
    logits = zipf_logits(rng, 10, vocab)
    logits[1] = np.round(logits[1])  # many ties, some across the k-th place
    logits[2, 7] = np.nan
    logits[3, vocab - 1] = np.inf
    logits[4] = -np.inf
    logits[5] = -np.inf
    few = rng.choice(vocab, 10, replace=False)
    logits[5, few] = rng.standard_normal(10).astype(np.float32)
    logits[6, ::3] = -np.inf
    logits[7] = 1.5  # every logit tied
    scales = np.array(
        [
            [1.0, 1.0],
            [1 / 0.7, 1.0],
            [1.0, 0.0],
            [0.0, 1.0],
            [1.0, 1.0],
            [2.0, 1.0],
            [0.5, 0.0],
            [1.0, 1.0],
            [0.0, 0.0],
            [1.0, 1.0],
        ],
        np.float32,
    )
    order = np.argsort(-logits[0], kind="stable")
    tied = np.flatnonzero(logits[1] == np.sort(logits[1])[::-1][min(63, vocab - 1)])[:5]
    entries = [  # (row, token, bias, divisor, subtract)
        (0, order[0], -np.inf, 1.0, 0.0),
        (0, order[1], 0.0, 1.3, 0.0),
        (0, order[2], 0.0, 1.0, 2.5),
        (0, order[-1], 40.0, 1.1, 0.0),
        (0, order[-2], 0.0, 1.7, 0.5),  # a negative logit: multiplied
        *((1, token, -np.inf, 1.0, 0.0) for token in tied),
        (6, 0, 0.0, 1.0, 0.0),
        (6, 3, 9.0, 1.2, 0.0),  # -inf stays -inf
        (6, 1, 100.0, 1.0, 0.0),
        *((5, token, -np.inf, 1.0, 0.0) for token in sorted(few)),
    ]
    entries.sort(key=lambda entry: entry[0])
    edits = TokenEdits(
        np.array([entry[0] for entry in entries], np.int64),
        np.array([entry[1] for entry in entries], np.int64),
        np.array([entry[2:] for entry in entries], np.float32),
    )
    return logits, HeadInputs(scales, edits)


@pytest.mark.parametrize("vocab", [49152, 5000, 1000, 77])
def test_sampling_head_matches_a_full_sort(library: Path, vocab: int) -> None:
    """The k most likely tokens of the edited rows (logit descending, id ascending: the first k of that
    order exactly) and the softmax normalisers at the asked scales, NaN for rows without a finite
    maximum; at the default vocabulary and at sizes where the block estimate has a remainder or is
    skipped. The edited logits are bit-exact: the sampler's own arithmetic."""
    k = 64 if vocab > 64 else 16
    logits, inputs = _head_rows(vocab)
    raw = logits.copy()
    session = _head_session(library, k)
    ids, top, masses = session.run(None, _head_feed(logits, inputs))
    np.testing.assert_array_equal(logits, raw)  # the op edits its rows in place and restores them
    want = reference_top_tokens(logits, inputs, k)
    np.testing.assert_array_equal(ids, want.ids)
    np.testing.assert_array_equal(top, want.logits)
    np.testing.assert_array_equal(np.isnan(masses), np.isnan(want.masses))
    np.testing.assert_allclose(masses, want.masses, rtol=1e-6)
    assert np.isnan(masses[5]).all()  # every finite logit suppressed


def test_sampling_head_rejects_bad_inputs(library: Path) -> None:
    session = _head_session(library, 64)
    logits = np.zeros((2, 100), np.float32)

    def run(scales: np.ndarray, rows: list[int], tokens: list[int], width: int = 100) -> None:
        edits = TokenEdits(
            np.array(rows, np.int64), np.array(tokens, np.int64), np.ones((len(rows), 3), np.float32)
        )
        session.run(None, _head_feed(logits[:, :width], HeadInputs(scales, edits)))

    with pytest.raises(Exception, match="scales must be"):
        run(np.zeros((3, 2), np.float32), [], [])
    with pytest.raises(Exception, match="V >= k"):
        run(np.zeros((2, 2), np.float32), [], [], width=10)
    with pytest.raises(Exception, match="edit_rows must ascend"):
        run(np.zeros((2, 2), np.float32), [1, 0], [3, 4])
    with pytest.raises(Exception, match="edit_rows must ascend"):
        run(np.zeros((2, 2), np.float32), [2], [3])
    with pytest.raises(Exception, match="edit_tokens must lie"):
        run(np.zeros((2, 2), np.float32), [0], [100])
    with pytest.raises(Exception, match="edits must be"):
        edits = TokenEdits(np.zeros(1, np.int64), np.zeros(2, np.int64), np.ones((1, 3), np.float32))
        session.run(None, _head_feed(logits, HeadInputs(np.zeros((2, 2), np.float32), edits)))


def test_runner_decode_fills_the_sampling_head(default_model_dir: Path) -> None:
    """The served graph ends in the head: its candidates are the top of the logits the same run returns,
    its masses those of these logits at the scales given."""
    runner = ModelRunner(default_model_dir, RunnerOptions(max_batch=4, kv_capacity=64))
    assert runner.sampling_head
    scales = np.array([[1.0, 1.0], [0.0, 1.0], [1 / 0.7, 0.0]], np.float32)
    edits = TokenEdits(
        np.array([1, 1]), np.array([5, 900]), np.array([[-np.inf, 1, 0], [30, 1, 0]], np.float32)
    )
    inputs = HeadInputs(scales, edits)
    logits = runner.decode(np.array([1, 2, 3]), np.array([0, 0, 0]), inputs).copy()
    top = runner.top_tokens(3)
    assert top is not None and top.inputs is inputs
    want = reference_top_tokens(logits, inputs, top.ids.shape[1])
    np.testing.assert_array_equal(top.ids, want.ids)
    assert top.ids[1, 0] == 900  # the edited row's
    np.testing.assert_allclose(top.masses, want.masses, rtol=1e-6)
    assert (
        ModelRunner(default_model_dir, RunnerOptions(max_batch=1, kv_capacity=64, kernels="off")).top_tokens(
            1
        )
        is None
    )
