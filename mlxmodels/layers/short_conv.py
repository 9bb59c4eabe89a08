"""The gated short-convolution mixer of Liquid's LFM2 (transformers' `Lfm2ShortConv`).

    B, C, x = split(in_proj(h), 3)        each [batch, L, hidden]
    y = out_proj(C * conv(B * x))         conv: causal, depthwise, kernel K (`conv_L_cache`), no activation

The only state is the conv window, the last K - 1 values of B * x: an `SSMCache` whose `ssm` stays
None, so the layer's cache is a few KiB however long the context, and, like any recurrent state,
cannot be rewound (a chat reuses a prefix through `copy()` snapshots). A prefill convolves the whole
chunk at once; a decode step is the same convolution over the window plus one token.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.layers.ssm import causal_conv


class ShortConv(nn.Module):
    """Parameter names and shapes follow Hugging Face's `Lfm2ShortConv` (`conv` as [C, K, 1])."""

    def __init__(self, hidden: int, kernel: int, bias: bool = False):
        super().__init__()
        self.in_proj = nn.Linear(hidden, 3 * hidden, bias=bias)
        self.conv = nn.Conv1d(hidden, hidden, kernel, groups=hidden, bias=bias)
        self.out_proj = nn.Linear(hidden, hidden, bias=bias)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        B, C, xs = mx.split(self.in_proj(x), 3, axis=-1)
        window = cache.fetch()[0] if cache is not None else None
        y, window = causal_conv(self.conv, B * xs, window, act=None)
        if cache is not None:
            cache.update(window, None, x.shape[1])
        return self.out_proj(C * y)
