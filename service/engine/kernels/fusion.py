"""Rewrite a prepared CPU graph to use Parley's custom ops (parley_ops.c).

A pure function over the ONNX graph: the patterns the converter emits become one op each, and the nodes
left without consumers are dropped. The model directory is never changed; the runner loads the rewritten
graphs from memory (a prefill and a decode session, both with every fusion).

    GroupQueryAttention(qkv, -, -, past_k, past_v, seqlens_k, total, cos, sin) [rotary, interleaved]
        -> DecodeAttention(qkv, past_k, past_v, seqlens_k, total, cos, sin)
       DecodeAttention keeps the KV cache in fp16, so the graph's cache inputs and outputs become fp16: all
       attention nodes are fused or none is.
    Add(MatMulNBits(x), MatMul(ReduceSum(Reshape(x)), offsets_t))   -> BlockOffsetAdd(y, x, offsets_t)
    Mul(Mul(gate, Sigmoid(gate)), up) with gate, up = Split(gate_up)  -> SwiGLU(gate_up)
    MatMulNBits(x) [4 or 8 bits, block 32, int8 activations], + its BlockOffsetAdd if any
        -> QuantLinear(x, codes, scales[, offsets_t])   (2x faster at batch 8, weights repacked once)

add_sampling_head appends a SamplingHead after the logits (service/sampling/top.py says what it gives
the sampler): four more graph inputs (scales and edits), three more outputs; the logits stay an output.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "ai.parley"
FUSED_CACHE_DTYPE = "float16"  # the KV cache's element type once attention is fused
_MS = "com.microsoft"


@dataclass(frozen=True)
class FusionReport:
    attention: int
    offsets: int  # offset terms folded into one op (into Int4Linear where that applies)
    swiglu: int
    linear: int  # MatMulNBits now on QuantLinear
    removed_nodes: int

    def __str__(self) -> str:
        return (
            f"{self.attention} attention, {self.offsets} block-offset, {self.swiglu} SwiGLU and "
            f"{self.linear} quantized linear fusions ({self.removed_nodes} nodes removed)"
        )


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.initializers = {t.name: t for t in graph.initializer}

    def made_by(self, name: str, op: str, domain: str = "") -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op and node.domain == domain else None

    def constant(self, name: str) -> list[int] | None:
        tensor = self.initializers.get(name)
        return None if tensor is None else [int(v) for v in numpy_helper.to_array(tensor).ravel()]


def _attention(node: onnx.NodeProto) -> onnx.NodeProto | None:
    if node.op_type != "GroupQueryAttention" or node.domain != _MS or len(node.input) < 9:
        return None
    plain = {"num_heads", "kv_num_heads", "do_rotary", "rotary_interleaved"}
    if {a.name for a in node.attribute} - plain or _attr(node, "do_rotary") != 1:
        return None  # scale, softcap, local windows...: not what DecodeAttention implements
    if _attr(node, "rotary_interleaved") != 1 or node.input[1] or node.input[2]:
        return None  # the kernel takes packed QKV and ggml's adjacent-pair rotary only
    qkv, _, _, past_k, past_v, seqlens, total, cos, sin = node.input[:9]
    return helper.make_node(
        "DecodeAttention",
        [qkv, past_k, past_v, seqlens, total, cos, sin],
        list(node.output),
        name=node.name,
        domain=DOMAIN,
        num_heads=_attr(node, "num_heads"),
        kv_num_heads=_attr(node, "kv_num_heads"),
        rotary_interleaved=1,
    )


def _fuse_attention(graph: onnx.GraphProto) -> int:
    """Every GroupQueryAttention -> DecodeAttention, with the cache tensors they read and write (graph
    inputs and outputs) retyped to fp16; or, if any of them does not fit, none. Returns how many."""
    inputs = {v.name: v for v in graph.input}
    outputs = {v.name: v for v in graph.output}
    rewrites: list[tuple[int, onnx.NodeProto]] = []
    caches: list[onnx.ValueInfoProto] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "GroupQueryAttention":
            continue
        fused = _attention(node)
        if fused is None:
            return 0
        past = [inputs.get(name) for name in fused.input[1:3]]
        present = [outputs.get(name) for name in fused.output[1:3]]
        for value in (*past, *present):
            if value is None:
                return 0  # a cache that is not the graph's own input or output: its type is not ours to set
            caches.append(value)
        rewrites.append((index, fused))
    for index, fused in rewrites:
        graph.node[index].CopyFrom(fused)
    for value in caches:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    return len(rewrites)


def _block_offset(g: _Graph, node: onnx.NodeProto) -> onnx.NodeProto | None:
    if node.op_type != "Add" or node.domain or len(node.input) != 2:
        return None
    for y, term in (node.input, node.input[::-1]):
        matmul = g.made_by(term, "MatMul")
        linear = g.made_by(y, "MatMulNBits", _MS)
        if matmul is None or linear is None:
            continue
        reduce = g.made_by(matmul.input[0], "ReduceSum")
        reshape = g.made_by(reduce.input[0], "Reshape") if reduce is not None else None
        if reduce is None or reshape is None or reshape.input[0] != linear.input[0]:
            continue
        block = _attr(linear, "block_size")
        shape = g.constant(reshape.input[1]) or []
        if shape[-1:] != [block] or g.constant(reduce.input[1]) != [-1] or _attr(reduce, "keepdims") != 0:
            continue
        return helper.make_node(
            "BlockOffsetAdd",
            [y, linear.input[0], matmul.input[1]],
            list(node.output),
            name=node.name,
            domain=DOMAIN,
            block_size=block,
        )
    return None


def _swiglu(g: _Graph, node: onnx.NodeProto) -> onnx.NodeProto | None:
    if node.op_type != "Mul" or node.domain or len(node.input) != 2:
        return None
    for silu_name, up in (node.input, node.input[::-1]):
        silu = g.made_by(silu_name, "Mul")
        split = g.made_by(up, "Split")
        if silu is None or split is None or len(split.output) != 2 or up != split.output[1]:
            continue
        gate = split.output[0]
        sigmoid = next((g.made_by(i, "Sigmoid") for i in silu.input if i != gate), None)
        if gate not in silu.input or sigmoid is None or sigmoid.input[0] != gate:
            continue
        sizes = g.constant(split.input[1]) if len(split.input) > 1 else None
        if sizes is None or len(sizes) != 2 or sizes[0] != sizes[1] or _attr(split, "axis") != -1:
            continue
        return helper.make_node("SwiGLU", [split.input[0]], list(node.output), name=node.name, domain=DOMAIN)
    return None


def _quant_linear(node: onnx.NodeProto) -> bool:
    """A MatMulNBits that QuantLinear computes the same way: 4 or 8 bits, blocks of 32, no zero points,
    int8 activations."""
    return (
        node.op_type == "MatMulNBits"
        and node.domain == _MS
        and _attr(node, "bits") in (4, 8)
        and _attr(node, "block_size") == 32
        and _attr(node, "accuracy_level") == 4
        and (len(node.input) < 4 or not node.input[3])
    )


def _linear_node(
    linear: onnx.NodeProto, offsets_t: str | None, outputs: list[str], name: str
) -> onnx.NodeProto:
    inputs = list(linear.input[:3]) + ([offsets_t] if offsets_t else [])
    return helper.make_node(
        "QuantLinear",
        inputs,
        outputs,
        name=name,
        domain=DOMAIN,
        K=_attr(linear, "K"),
        N=_attr(linear, "N"),
        bits=_attr(linear, "bits"),
        block_size=32,
    )


def _fuse_linears(graph: onnx.GraphProto) -> int:
    """MatMulNBits (with its BlockOffsetAdd, if any) -> QuantLinear; returns how many."""
    g = _Graph(graph)
    fused = 0
    for node in graph.node:  # first the linears with an offset term: one op for both
        if node.op_type == "BlockOffsetAdd" and node.domain == DOMAIN:
            linear = g.made_by(node.input[0], "MatMulNBits", _MS)
            if linear is not None and _quant_linear(linear) and linear.input[0] == node.input[1]:
                node.CopyFrom(_linear_node(linear, node.input[2], list(node.output), node.name))
                fused += 1
    _drop_dead_nodes(graph)
    for node in graph.node:
        if _quant_linear(node):
            node.CopyFrom(_linear_node(node, None, list(node.output), node.name))
            fused += 1
    return fused


def _drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes none of whose outputs are read, repeatedly; then the initializers nobody reads."""
    keep = {o.name for o in graph.output}
    removed = 0
    while True:
        reads = Counter(i for node in graph.node for i in node.input if i)
        dead = [n for n in graph.node if not any(o in reads or o in keep for o in n.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    reads = Counter(i for node in graph.node for i in node.input if i)
    unused = [t for t in graph.initializer if t.name not in reads]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return removed


SAMPLING_SCALES = "sampling_scales"  # input [rows, 2] float: RowParameters.head_scales
# inputs [edits] int64, [edits] int64, [edits, 3] float: SamplingColumns.edits (rows ascending)
EDIT_ROWS, EDIT_TOKENS, EDIT_FACTORS = "edit_rows", "edit_tokens", "edit_factors"
TOP_IDS, TOP_LOGITS, SAMPLING_MASSES = "top_ids", "top_logits", "sampling_masses"  # outputs, see top.py


def add_sampling_head(model: onnx.ModelProto, logits: str, k: int) -> None:
    """Read the graph output `logits` [batch, 1, V] with a SamplingHead keeping `k` candidates per row."""
    graph = model.graph
    if not any(o.name == logits for o in graph.output):
        raise ValueError(f"the graph has no output {logits!r} to put a sampling head on")
    graph.node.append(
        helper.make_node(
            "SamplingHead",
            [logits, SAMPLING_SCALES, EDIT_ROWS, EDIT_TOKENS, EDIT_FACTORS],
            [TOP_IDS, TOP_LOGITS, SAMPLING_MASSES],
            name="sampling_head",
            domain=DOMAIN,
            k=k,
        )
    )
    graph.input.extend(
        [
            helper.make_tensor_value_info(SAMPLING_SCALES, TensorProto.FLOAT, ["rows", 2]),
            helper.make_tensor_value_info(EDIT_ROWS, TensorProto.INT64, ["edits"]),
            helper.make_tensor_value_info(EDIT_TOKENS, TensorProto.INT64, ["edits"]),
            helper.make_tensor_value_info(EDIT_FACTORS, TensorProto.FLOAT, ["edits", 3]),
        ]
    )
    graph.output.extend(
        [
            helper.make_tensor_value_info(TOP_IDS, TensorProto.INT64, ["rows", k]),
            helper.make_tensor_value_info(TOP_LOGITS, TensorProto.FLOAT, ["rows", k]),
            helper.make_tensor_value_info(SAMPLING_MASSES, TensorProto.DOUBLE, ["rows", 2]),
        ]
    )
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))


def fuse(model: onnx.ModelProto, *, attention: bool = True, quant_linear: bool = True) -> FusionReport:
    """Rewrite `model` in place; returns what was fused (all zero for a graph with none of the patterns).
    attention=False keeps GroupQueryAttention and the graph's fp32 cache; quant_linear=False keeps
    MatMulNBits."""
    graph = model.graph
    attentions = _fuse_attention(graph) if attention else 0
    g = _Graph(graph)
    counts = Counter[str]()
    for index, node in enumerate(list(graph.node)):
        fused = _block_offset(g, node) or _swiglu(g, node)
        if fused is not None:
            graph.node[index].CopyFrom(fused)
            counts[fused.op_type] += 1
    removed = _drop_dead_nodes(graph)
    before = len(graph.node)
    linear = _fuse_linears(graph) if quant_linear else 0
    removed += before - len(graph.node) + _drop_dead_nodes(graph)
    if (attentions or counts or linear) and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return FusionReport(
        attention=attentions,
        offsets=counts["BlockOffsetAdd"],
        swiglu=counts["SwiGLU"],
        linear=linear,
        removed_nodes=removed,
    )
