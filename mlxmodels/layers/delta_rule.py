"""The gated delta rule: the linear-attention recurrence of Gated DeltaNet and Kimi Delta Attention.

Each head keeps a state S [Dk, Dv] (a fast-weight memory mapping keys to values). Per token t:

    S   = exp(g_t) * S                     decay: one rate per head (GDN) or per key channel (KDA)
    S  += k_t (beta_t (v_t - S^T k_t))^T   delta rule: write the part of v_t that S does not predict
    o_t = S^T q_t

Decode (one token) runs this recurrence. Prefill uses the chunked form, which gives the same numbers
with matrix products instead of a loop over tokens: within a chunk of C tokens, let G be the
cumulative log-decay from the chunk start and S0 the incoming state. The corrections u_t each token
writes satisfy a unit lower-triangular system (I + A) U = beta V - beta (exp(G) k) S0, with
A_tj = beta_t k_t . (exp(G_t - G_j) k_j) for j < t (the "UT transform" of DeltaNet). Its inverse is
computed by doubling the diagonal blocks of the triangle (no triangular solver, so every backend
runs it). Then o_t = (exp(G_t) q_t) S0 + sum_{j<=t} q_t . (exp(G_t - G_j) k_j) u_j and the
state passed on is exp(G_C) S0 + sum_j (exp(G_C - G_j) k_j) u_j^T. Only the chunk-to-chunk step is
sequential, so prefill costs grow linearly with length.

Decays enter only as exp of non-positive differences (masked before the exp), so nothing overflows.
Everything is computed in float32: the state accumulates over the whole context.
"""

from __future__ import annotations

import mlx.core as mx


def gated_delta_rule(q: mx.array, k: mx.array, v: mx.array, g: mx.array, beta: mx.array,
                     state: mx.array | None = None, chunk_size: int = 64) -> tuple[mx.array, mx.array]:
    """q, k [B, L, H, Dk]; v [B, L, H, Dv]; g, the log decay (<= 0), [B, L, H] or [B, L, H, Dk];
    beta [B, L, H]; state [B, H, Dk, Dv] or None (zeros).

    q and k are used as given (the caller normalises and scales them and repeats key heads to the
    value heads). Returns (o [B, L, H, Dv] in v's dtype, the final state [B, H, Dk, Dv] float32)."""
    B, L, H, Dk = k.shape
    out_dtype = v.dtype
    q, k, v, g, beta = (t.astype(mx.float32) for t in (q, k, v, g, beta))
    if state is None:
        state = mx.zeros((B, H, Dk, v.shape[-1]), dtype=mx.float32)
    if L == 1:
        o, state = _step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state)
        return o[:, None].astype(out_dtype), state
    o, state = _chunked(q, k, v, g, beta, state, chunk_size)
    return o.astype(out_dtype), state


def _step(q, k, v, g, beta, S):
    """One token: q, k [B, H, Dk]; v [B, H, Dv]; g [B, H] or [B, H, Dk]; beta [B, H]."""
    decay = mx.exp(g)
    S = S * (decay[..., None, None] if decay.ndim == 2 else decay[..., None])
    predicted = (k[..., None, :] @ S)[..., 0, :]  # S^T k: [B, H, Dv]
    S = S + k[..., :, None] * ((v - predicted) * beta[..., None])[..., None, :]
    return (q[..., None, :] @ S)[..., 0, :], S


def _unit_lower_inverse(A: mx.array) -> mx.array:
    """(I + A)^-1 for strictly lower-triangular A [..., C, C], by doubling the diagonal blocks:
    with X0, X1 the inverses of two neighbouring diagonal blocks and L21 the block below the first,
    the inverse of the pair is [[X0, 0], [-X1 L21 X0, X1]]. log2(C) rounds of small batched matmuls,
    ~C^3/3 multiply-adds in all (no triangular solver, so every backend runs it)."""
    C = A.shape[-1]
    size = 1 << (C - 1).bit_length()  # blocks pair up evenly on a power of two
    if size != C:  # zero rows/columns: the top-left C x C block of the inverse is unchanged
        A = mx.pad(A, [(0, 0)] * (A.ndim - 2) + [(0, size - C), (0, size - C)])
    lead = A.shape[:-2]
    X = mx.ones((*lead, size, 1, 1), dtype=A.dtype)  # the 1 x 1 diagonal blocks' inverses
    b = 1
    while b < size:
        m = size // (2 * b)
        blocks = A.reshape(*lead, m, 2, b, m, 2, b)[..., :, 1, :, :, 0, :]  # [.., m, b, m, b]
        below = mx.moveaxis(mx.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)  # pair i's L21: [.., m, b, b]
        X0, X1 = X[..., 0::2, :, :], X[..., 1::2, :, :]
        corner = -(X1 @ below @ X0)
        top = mx.concatenate([X0, mx.zeros_like(X0)], axis=-1)
        X = mx.concatenate([top, mx.concatenate([corner, X1], axis=-1)], axis=-2)
        b *= 2
    return X.reshape(*lead, size, size)[..., :C, :C]


def _chunk_terms(q, k, beta, G):
    """Per chunk, independent of the incoming state. q, k [..., C, Dk]; beta [..., C]; G the
    cumulative log decay, [..., C] (per head) or [..., C, Dk] (per channel).
    Returns (A, scores): A [..., C, C] strictly lower (the UT system), scores [..., C, C] with the
    diagonal (q_t . decayed k_j, j <= t)."""
    C = k.shape[-2]
    causal = mx.tril(mx.ones((C, C), dtype=mx.bool_))
    strict = mx.tril(mx.ones((C, C), dtype=mx.bool_), k=-1)
    if G.ndim == k.ndim - 1:  # one decay per head: the decays factor out of the dot products
        decay = mx.exp(mx.where(causal, G[..., :, None] - G[..., None, :], -mx.inf))
        A = (k @ k.swapaxes(-1, -2)) * beta[..., :, None] * mx.where(strict, decay, 0.0)
        scores = (q @ k.swapaxes(-1, -2)) * decay
        return A, scores
    # One decay per key channel: decay[t, j, d] = exp(G_td - G_jd) weighs each channel of the products.
    decay = mx.exp(mx.where(causal[..., None], G[..., :, None, :] - G[..., None, :, :], -mx.inf))
    decayed_k = decay * k[..., None, :, :]  # [..., t, j, Dk]
    A = (decayed_k @ k[..., :, :, None])[..., 0]  # k_t . decayed k_j, read as [t, j]
    A = mx.where(strict, A, 0.0) * beta[..., :, None]
    scores = (decayed_k @ q[..., :, :, None])[..., 0]
    return A, scores


def _chunked(q, k, v, g, beta, S, chunk_size):
    B, L, H, Dk = k.shape
    Dv = v.shape[-1]
    per_channel = g.ndim == 4
    C = min(chunk_size, L)  # a prompt shorter than a chunk is not padded up to one
    pad = (-L) % C
    if pad:
        # Padded steps have g = 0, beta = 0, k = v = q = 0: they neither decay nor write the state.
        q, k, v, g, beta = (mx.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2)) for t in (q, k, v, g, beta))
    n = (L + pad) // C

    def chunks(t):  # [B, L, H, ...] -> [B, H, n, C, ...]
        t = t.reshape(B, n, C, H, *t.shape[3:])
        return t.transpose(0, 3, 1, 2, *range(4, t.ndim))

    q, k, v, beta, g = (chunks(t) for t in (q, k, v, beta, g))
    G = mx.cumsum(g, axis=3)  # log decay from the chunk start, [B, H, n, C(, Dk)]
    G_end = G[:, :, :, -1]  # [B, H, n(, Dk)]
    Gd = G if per_channel else G[..., None]  # broadcastable against [.., C, Dk]
    decayed_q = q * mx.exp(Gd)  # reads the incoming state
    decayed_k = k * mx.exp(Gd) * beta[..., None]  # beta exp(G) k: what the incoming state predicts
    to_end = k * mx.exp((G_end[:, :, :, None] if per_channel else G_end[..., None, None]) - Gd)
    end_decay = mx.exp(G_end)[..., None] if per_channel else mx.exp(G_end)[..., None, None]
    v_beta = v * beta[..., None]

    if not per_channel:  # every chunk's terms at once: [B, H, n, C, C] is small
        A, scores = _chunk_terms(q, k, beta, G)
        inverse = _unit_lower_inverse(A)
        U0, W = inverse @ v_beta, inverse @ decayed_k

    outputs = []
    for i in range(n):
        if per_channel:  # [B, H, C, C, Dk] per chunk: bounded memory, one chunk at a time
            A_i, scores_i = _chunk_terms(q[:, :, i], k[:, :, i], beta[:, :, i], G[:, :, i])
            inverse = _unit_lower_inverse(A_i)
            U0_i, W_i = inverse @ v_beta[:, :, i], inverse @ decayed_k[:, :, i]
        else:
            scores_i, U0_i, W_i = scores[:, :, i], U0[:, :, i], W[:, :, i]
        u = U0_i - W_i @ S  # the corrections this chunk writes, [B, H, C, Dv]
        outputs.append(decayed_q[:, :, i] @ S + scores_i @ u)
        S = S * end_decay[:, :, i] + to_end[:, :, i].swapaxes(-1, -2) @ u
    o = mx.stack(outputs, axis=2).reshape(B, H, n * C, Dv).transpose(0, 2, 1, 3)
    return o[:, :L], S
