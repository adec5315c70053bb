"""An independent fp32 numpy forward of a llama-family GGUF, used as the reference for the converted
graphs. It shares nothing with the converter but `gguf` itself: weights are dequantized with
`gguf.quants.dequantize`, RoPE is ggml's adjacent-pair form, attention is plain causal softmax.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def _field(reader: gguf.GGUFReader, key: str, default: object = None) -> object:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


class ReferenceLlama:
    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(path)
        arch = str(_field(reader, "general.architecture"))
        self.n_layers = int(_field(reader, f"{arch}.block_count"))  # type: ignore[call-overload]
        self.n_heads = int(_field(reader, f"{arch}.attention.head_count"))  # type: ignore[call-overload]
        self.n_kv = int(_field(reader, f"{arch}.attention.head_count_kv", self.n_heads))  # type: ignore[call-overload]
        self.theta = float(_field(reader, f"{arch}.rope.freq_base", 10000.0))  # type: ignore[arg-type]
        self.eps = float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5))  # type: ignore[arg-type]
        self.w: dict[str, np.ndarray] = {}
        for t in reader.tensors:
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            self.w[t.name] = values.reshape(tuple(int(d) for d in reversed(t.shape))).astype(np.float32)
        self.hidden = self.w["token_embd.weight"].shape[1]
        self.head_dim = self.hidden // self.n_heads

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        normed: np.ndarray = (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)) * weight
        return normed

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: (T, heads, head_dim); rotates adjacent pairs (x[2i], x[2i+1]) as ggml's normal RoPE does."""
        half = self.head_dim // 2
        inv = self.theta ** (-np.arange(half, dtype=np.float64) * 2 / self.head_dim)
        ang = positions[:, None].astype(np.float64) * inv[None, :]  # (T, half)
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        even, odd = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
        out = np.empty(x.shape, dtype=np.float64)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out.astype(np.float32)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position: (T, vocab)."""
        w, T = self.w, len(tokens)  # noqa: N806 (T: sequence length, as in the papers)
        x = w["token_embd.weight"][np.asarray(tokens)]
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
        group = self.n_heads // self.n_kv
        for i in range(self.n_layers):
            p = f"blk.{i}"
            h = self._norm(x, w[f"{p}.attn_norm.weight"])
            q = (h @ w[f"{p}.attn_q.weight"].T).reshape(T, self.n_heads, self.head_dim)
            k = (h @ w[f"{p}.attn_k.weight"].T).reshape(T, self.n_kv, self.head_dim)
            v = (h @ w[f"{p}.attn_v.weight"].T).reshape(T, self.n_kv, self.head_dim)
            q, k = self._rope(q, pos), self._rope(k, pos)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (T, heads, head_dim)
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.head_dim) + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", probs, v).reshape(T, self.hidden)
            x = x + attn @ w[f"{p}.attn_output.weight"].T
            h = self._norm(x, w[f"{p}.ffn_norm.weight"])
            gate, up = h @ w[f"{p}.ffn_gate.weight"].T, h @ w[f"{p}.ffn_up.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * up) @ w[f"{p}.ffn_down.weight"].T
        x = self._norm(x, w["output_norm.weight"])
        head = w.get("output.weight", w["token_embd.weight"])
        return np.asarray(x @ head.T, dtype=np.float32)
