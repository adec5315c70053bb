"""A small ONNX graph assembler that streams weights into one external data file as they are added, so
converting a large model never holds two copies of its weights or hits protobuf's 2 GB limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_IR_VERSION = 10
OPSETS = {"": 21, "com.microsoft": 1}
_EXTERNAL_MIN_BYTES = 1024  # smaller constants (shapes, axes) stay inside model.onnx
_ALIGN = 4096  # page-aligned offsets let ONNX Runtime memory-map the weights


class GraphAssembler:
    def __init__(self, weights_path: Path) -> None:
        self.weights_path = weights_path
        self._weights: IO[bytes] = weights_path.open("wb")
        self._offset = 0
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._constants: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def close(self) -> None:
        self._weights.close()

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add an initializer; large ones go to the external data file at an aligned offset."""
        name = self.unique(name)
        array = np.ascontiguousarray(array)
        if array.nbytes < _EXTERNAL_MIN_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        pad = (-self._offset) % _ALIGN
        if pad:
            self._weights.write(b"\0" * pad)
            self._offset += pad
        self._weights.write(array.tobytes())
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.weights_path.name),
            ("offset", str(self._offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self._offset += array.nbytes
        self.initializers.append(tensor)
        return name

    def constant(self, array: np.ndarray, hint: str = "const") -> str:
        """A small constant, deduplicated (shapes, axes, scalars)."""
        key = (str(array.dtype), array.tobytes(), array.shape)
        if key not in self._constants:
            self._constants[key] = self.weight(hint, array)
        return self._constants[key]

    def node(
        self, op: str, inputs: list[str], n_outputs: int = 1, *, name: str, domain: str = "", **attrs: Any
    ) -> list[str]:
        node_name = self.unique(name)
        outputs = [f"{node_name}/out{i}" if n_outputs > 1 else f"{node_name}/out" for i in range(n_outputs)]
        self.nodes.append(
            helper.make_node(op, inputs, outputs, name=node_name, domain=domain or None, **attrs)
        )
        return outputs

    def node1(self, op: str, inputs: list[str], *, name: str, domain: str = "", **attrs: Any) -> str:
        return self.node(op, inputs, 1, name=name, domain=domain, **attrs)[0]

    def add_input(self, name: str, elem_type: int, shape: list[int | str]) -> str:
        self._names.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, source: str, elem_type: int, shape: list[int | str]) -> None:
        """Expose `source` as graph output `name` (renaming the producing node's output)."""
        for node in self.nodes:
            for i, out in enumerate(node.output):
                if out == source:
                    node.output[i] = name
            for i, inp in enumerate(node.input):
                if inp == source:
                    node.input[i] = name
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def model(self, graph_name: str, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid(domain, version) for domain, version in OPSETS.items()]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=ONNX_IR_VERSION, doc_string=doc)
        model.producer_name = "parley"
        return model
