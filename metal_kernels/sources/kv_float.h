// Decode attention over a float KV cache: k and v are [B, Hkv, S, D] in the kernel's dtype.
#define LOAD_K(row, d) float(k[(row) * D + (d)])
#define LOAD_V(row, d) float(v[(row) * D + (d)])
