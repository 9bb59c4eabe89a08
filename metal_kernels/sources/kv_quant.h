// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
