// Fused attention on the GPU: FlashAttention-2 forward and backward with shared-memory tiles.
//
// Loaded at run time by kernels/cuda_attention.py with cupy.RawModule (NVRTC), compiled once
// per head size with -DHEAD_DIM=<d>, so the per-thread rows below live in registers.
// No host code, no #include: NVRTC compiles it as is; `nvcc --ptx` checks it in CI.
//
// Layout: q, k, v, out, dout, dq, dk, dv are (B*H, T, HEAD_DIM) row-major; key_bias is (B, T)
// (0 or -10000, the BERT padding mask); row_max, row_inv_sum, delta are (B*H, T).
//
// Forward (one thread per query row i, keys in tiles of TILE_K held in shared memory):
//     s_ij = q_i . k_j * scale + bias_j
//     m'   = max(m, max_j s_ij);  c = exp(m - m')            (online-softmax correction)
//     l    = c * l + sum_j exp(s_ij - m')
//     o    = c * o + sum_j exp(s_ij - m') * z_ij / (1 - p) * v_j
//     out_i = o / l;   row_max_i = m;   row_inv_sum_i = 1 / l
// Backward, with P_ij = exp(s_ij - row_max_i) * row_inv_sum_i recomputed and
// D_i = rowsum(dO_i * O_i) (computed by the caller):
//     dP_ij = (dO_i . v_j) * z_ij / (1 - p);   dS_ij = P_ij (dP_ij - D_i)
//     dq_i  = scale * sum_j dS_ij k_j                      (kernel attention_backward_dq_*:  thread per query)
//     dk_j  = scale * sum_i dS_ij q_i,  dv_j = sum_i P_ij z_ij / (1 - p) dO_i
//                                                          (kernel attention_backward_dkdv_*: thread per key)
// Two backward kernels instead of atomics: deterministic, and each recomputes only S and dP.
//
// Dropout keep bit: mix32(mix32(mix32(mix32(seed ^ GOLDEN) ^ bh) ^ i) ^ j) >> 8 >= threshold,
// identical to bert_from_scratch.attention.dropout_keep_mask (the caller passes
// seed_hash = mix32(seed ^ GOLDEN)); threshold == 0 means no dropout.

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif

typedef unsigned long long index_t;   // 64-bit offsets (NVRTC has no <cstddef>)

#define ROWS_PER_BLOCK 64      // threads per block: query rows (forward, dq) or key rows (dk, dv)
#define NEG_BIG (-1.0e30)      // a finite "minus infinity" for the running maximum

__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    // lowbias32: the same integer finalizer as the NumPy reference (uint32 wraps mod 2^32)
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

__device__ __forceinline__ unsigned int row_hash(unsigned int seed_hash, int bh, int i) {
    return mix32(mix32(seed_hash ^ (unsigned int)bh) ^ (unsigned int)i);
}

__device__ __forceinline__ bool keep_entry(unsigned int row_h, int j, unsigned int threshold) {
    return (mix32(row_h ^ (unsigned int)j) >> 8) >= threshold;
}

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }

// keys (or queries) per shared-memory tile: at most 8 KiB per tile, between 8 and 32 rows
template <typename scalar_t>
struct Tile {
    static constexpr int BY_SIZE = 8192 / (HEAD_DIM * (int)sizeof(scalar_t));
    static constexpr int N = BY_SIZE > 32 ? 32 : (BY_SIZE < 8 ? 8 : BY_SIZE);
};

// ----------------------------------------------------------------------------------------
// Forward: grid (ceil(T / ROWS_PER_BLOCK), B*H), block ROWS_PER_BLOCK
// ----------------------------------------------------------------------------------------
template <typename scalar_t>
__device__ void attention_forward(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                  const scalar_t* __restrict__ v, const scalar_t* __restrict__ key_bias,
                                  scalar_t* __restrict__ out, scalar_t* __restrict__ row_max,
                                  scalar_t* __restrict__ row_inv_sum, int T, int n_heads, double scale_d,
                                  unsigned int seed_hash, unsigned int threshold, double keep_scale_d,
                                  int planted_bug) {
    constexpr int TK = Tile<scalar_t>::N;
    __shared__ scalar_t k_tile[TK][HEAD_DIM];
    __shared__ scalar_t v_tile[TK][HEAD_DIM];
    __shared__ scalar_t bias_tile[TK];
    __shared__ scalar_t s_tile[TK][ROWS_PER_BLOCK];   // this thread's scores: column threadIdx.x

    const int bh = blockIdx.y;
    const int b = bh / n_heads;
    const int i = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x;
    const bool valid = i < T;
    const index_t head = (index_t)bh * T * HEAD_DIM;
    const scalar_t scale = (scalar_t)scale_d;
    const scalar_t keep_scale = (scalar_t)keep_scale_d;
    const unsigned int row_h = row_hash(seed_hash, bh, i);

    scalar_t q_row[HEAD_DIM];
    scalar_t acc[HEAD_DIM];                 // running unnormalised output row
#pragma unroll
    for (int c = 0; c < HEAD_DIM; ++c) {
        q_row[c] = valid ? q[head + (index_t)i * HEAD_DIM + c] : (scalar_t)0;
        acc[c] = 0;
    }
    scalar_t m = (scalar_t)NEG_BIG;         // running row max
    scalar_t l = 0;                         // running row sum

    for (int j0 = 0; j0 < T; j0 += TK) {
        const int nk = min(TK, T - j0);
        for (int e = threadIdx.x; e < TK * HEAD_DIM; e += blockDim.x) {
            const int jj = e / HEAD_DIM, c = e % HEAD_DIM;
            const index_t src = head + (index_t)(j0 + jj) * HEAD_DIM + c;
            k_tile[jj][c] = jj < nk ? k[src] : (scalar_t)0;
            v_tile[jj][c] = jj < nk ? v[src] : (scalar_t)0;
        }
        for (int jj = threadIdx.x; jj < TK; jj += blockDim.x)
            bias_tile[jj] = jj < nk ? key_bias[(index_t)b * T + j0 + jj] : (scalar_t)0;
        __syncthreads();

        if (valid) {
            scalar_t new_max = m;
            for (int jj = 0; jj < nk; ++jj) {
                scalar_t dot = 0;
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) dot += q_row[c] * k_tile[jj][c];
                const scalar_t s = dot * scale + bias_tile[jj];
                s_tile[jj][threadIdx.x] = s;
                new_max = s > new_max ? s : new_max;
            }
            scalar_t correction = exp_t(m - new_max);
            if (planted_bug == 1) correction = 1;
            l *= correction;
#pragma unroll
            for (int c = 0; c < HEAD_DIM; ++c) acc[c] *= correction;
            for (int jj = 0; jj < nk; ++jj) {
                scalar_t p = exp_t(s_tile[jj][threadIdx.x] - new_max);
                l += p;
                if (threshold > 0) p = keep_entry(row_h, j0 + jj, threshold) ? p * keep_scale : (scalar_t)0;
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) acc[c] += p * v_tile[jj][c];
            }
            m = new_max;
        }
        __syncthreads();
    }
    if (valid) {
        const scalar_t inv = (scalar_t)1 / l;
#pragma unroll
        for (int c = 0; c < HEAD_DIM; ++c) out[head + (index_t)i * HEAD_DIM + c] = acc[c] * inv;
        row_max[(index_t)bh * T + i] = m;
        row_inv_sum[(index_t)bh * T + i] = inv;
    }
}

// ----------------------------------------------------------------------------------------
// Backward dQ: grid (ceil(T / ROWS_PER_BLOCK), B*H), one thread per query row
// ----------------------------------------------------------------------------------------
template <typename scalar_t>
__device__ void attention_backward_dq(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                      const scalar_t* __restrict__ v, const scalar_t* __restrict__ dout,
                                      const scalar_t* __restrict__ key_bias, const scalar_t* __restrict__ row_max,
                                      const scalar_t* __restrict__ row_inv_sum, const scalar_t* __restrict__ delta,
                                      scalar_t* __restrict__ dq, int T, int n_heads, double scale_d,
                                      unsigned int seed_hash, unsigned int threshold, double keep_scale_d) {
    constexpr int TK = Tile<scalar_t>::N;
    __shared__ scalar_t k_tile[TK][HEAD_DIM];
    __shared__ scalar_t v_tile[TK][HEAD_DIM];
    __shared__ scalar_t bias_tile[TK];

    const int bh = blockIdx.y;
    const int b = bh / n_heads;
    const int i = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x;
    const bool valid = i < T;
    const index_t head = (index_t)bh * T * HEAD_DIM;
    const scalar_t scale = (scalar_t)scale_d;
    const scalar_t keep_scale = (scalar_t)keep_scale_d;
    const unsigned int row_h = row_hash(seed_hash, bh, i);

    scalar_t q_row[HEAD_DIM], do_row[HEAD_DIM], dq_row[HEAD_DIM];
#pragma unroll
    for (int c = 0; c < HEAD_DIM; ++c) {
        q_row[c] = valid ? q[head + (index_t)i * HEAD_DIM + c] : (scalar_t)0;
        do_row[c] = valid ? dout[head + (index_t)i * HEAD_DIM + c] : (scalar_t)0;
        dq_row[c] = 0;
    }
    const scalar_t m_i = valid ? row_max[(index_t)bh * T + i] : (scalar_t)0;
    const scalar_t inv_i = valid ? row_inv_sum[(index_t)bh * T + i] : (scalar_t)0;
    const scalar_t d_i = valid ? delta[(index_t)bh * T + i] : (scalar_t)0;

    for (int j0 = 0; j0 < T; j0 += TK) {
        const int nk = min(TK, T - j0);
        for (int e = threadIdx.x; e < TK * HEAD_DIM; e += blockDim.x) {
            const int jj = e / HEAD_DIM, c = e % HEAD_DIM;
            const index_t src = head + (index_t)(j0 + jj) * HEAD_DIM + c;
            k_tile[jj][c] = jj < nk ? k[src] : (scalar_t)0;
            v_tile[jj][c] = jj < nk ? v[src] : (scalar_t)0;
        }
        for (int jj = threadIdx.x; jj < TK; jj += blockDim.x)
            bias_tile[jj] = jj < nk ? key_bias[(index_t)b * T + j0 + jj] : (scalar_t)0;
        __syncthreads();
        if (valid) {
            for (int jj = 0; jj < nk; ++jj) {
                scalar_t s = 0, dp = 0;
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) {
                    s += q_row[c] * k_tile[jj][c];
                    dp += do_row[c] * v_tile[jj][c];
                }
                const scalar_t p = exp_t(s * scale + bias_tile[jj] - m_i) * inv_i;   // P
                scalar_t zs = 1;                                                     // Z / (1 - p)
                if (threshold > 0) zs = keep_entry(row_h, j0 + jj, threshold) ? keep_scale : (scalar_t)0;
                const scalar_t ds = p * (dp * zs - d_i);                             // dS
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) dq_row[c] += ds * k_tile[jj][c];
            }
        }
        __syncthreads();
    }
    if (valid) {
#pragma unroll
        for (int c = 0; c < HEAD_DIM; ++c) dq[head + (index_t)i * HEAD_DIM + c] = dq_row[c] * scale;
    }
}

// ----------------------------------------------------------------------------------------
// Backward dK, dV: grid (ceil(T / ROWS_PER_BLOCK), B*H), one thread per key row
// ----------------------------------------------------------------------------------------
template <typename scalar_t>
__device__ void attention_backward_dkdv(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                        const scalar_t* __restrict__ v, const scalar_t* __restrict__ dout,
                                        const scalar_t* __restrict__ key_bias, const scalar_t* __restrict__ row_max,
                                        const scalar_t* __restrict__ row_inv_sum, const scalar_t* __restrict__ delta,
                                        scalar_t* __restrict__ dk, scalar_t* __restrict__ dv, int T, int n_heads,
                                        double scale_d, unsigned int seed_hash, unsigned int threshold,
                                        double keep_scale_d) {
    constexpr int TQ = Tile<scalar_t>::N;
    __shared__ scalar_t q_tile[TQ][HEAD_DIM];
    __shared__ scalar_t do_tile[TQ][HEAD_DIM];
    __shared__ scalar_t max_tile[TQ], inv_tile[TQ], delta_tile[TQ];

    const int bh = blockIdx.y;
    const int b = bh / n_heads;
    const int j = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x;
    const bool valid = j < T;
    const index_t head = (index_t)bh * T * HEAD_DIM;
    const scalar_t scale = (scalar_t)scale_d;
    const scalar_t keep_scale = (scalar_t)keep_scale_d;
    const unsigned int bh_h = mix32(seed_hash ^ (unsigned int)bh);

    scalar_t k_row[HEAD_DIM], v_row[HEAD_DIM], dk_row[HEAD_DIM], dv_row[HEAD_DIM];
#pragma unroll
    for (int c = 0; c < HEAD_DIM; ++c) {
        k_row[c] = valid ? k[head + (index_t)j * HEAD_DIM + c] : (scalar_t)0;
        v_row[c] = valid ? v[head + (index_t)j * HEAD_DIM + c] : (scalar_t)0;
        dk_row[c] = 0;
        dv_row[c] = 0;
    }
    const scalar_t bias_j = valid ? key_bias[(index_t)b * T + j] : (scalar_t)0;

    for (int i0 = 0; i0 < T; i0 += TQ) {
        const int nq = min(TQ, T - i0);
        for (int e = threadIdx.x; e < TQ * HEAD_DIM; e += blockDim.x) {
            const int ii = e / HEAD_DIM, c = e % HEAD_DIM;
            const index_t src = head + (index_t)(i0 + ii) * HEAD_DIM + c;
            q_tile[ii][c] = ii < nq ? q[src] : (scalar_t)0;
            do_tile[ii][c] = ii < nq ? dout[src] : (scalar_t)0;
        }
        for (int ii = threadIdx.x; ii < TQ; ii += blockDim.x) {
            const index_t r = (index_t)bh * T + i0 + ii;
            max_tile[ii] = ii < nq ? row_max[r] : (scalar_t)0;
            inv_tile[ii] = ii < nq ? row_inv_sum[r] : (scalar_t)0;
            delta_tile[ii] = ii < nq ? delta[r] : (scalar_t)0;
        }
        __syncthreads();
        if (valid) {
            for (int ii = 0; ii < nq; ++ii) {
                scalar_t s = 0, dp = 0;
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) {
                    s += q_tile[ii][c] * k_row[c];
                    dp += do_tile[ii][c] * v_row[c];
                }
                const scalar_t p = exp_t(s * scale + bias_j - max_tile[ii]) * inv_tile[ii];   // P
                scalar_t zs = 1;                                                              // Z / (1 - p)
                if (threshold > 0)
                    zs = keep_entry(mix32(bh_h ^ (unsigned int)(i0 + ii)), j, threshold) ? keep_scale : (scalar_t)0;
                const scalar_t p_dropped = p * zs;                                            // P~
                const scalar_t ds = p * (dp * zs - delta_tile[ii]);                           // dS
#pragma unroll
                for (int c = 0; c < HEAD_DIM; ++c) {
                    dv_row[c] += p_dropped * do_tile[ii][c];
                    dk_row[c] += ds * q_tile[ii][c];
                }
            }
        }
        __syncthreads();
    }
    if (valid) {
#pragma unroll
        for (int c = 0; c < HEAD_DIM; ++c) {
            dk[head + (index_t)j * HEAD_DIM + c] = dk_row[c] * scale;
            dv[head + (index_t)j * HEAD_DIM + c] = dv_row[c];
        }
    }
}

// ----------------------------------------------------------------------------------------
// Entry points, one per dtype (extern "C" names are what cupy.RawModule.get_function finds)
// ----------------------------------------------------------------------------------------
#define FORWARD_ARGS(S)                                                                                  \
    const S *q, const S *k, const S *v, const S *key_bias, S *out, S *row_max, S *row_inv_sum, int T,    \
        int n_heads, double scale, unsigned int seed_hash, unsigned int threshold, double keep_scale,    \
        int planted_bug
#define DQ_ARGS(S)                                                                                       \
    const S *q, const S *k, const S *v, const S *dout, const S *key_bias, const S *row_max,              \
        const S *row_inv_sum, const S *delta, S *dq, int T, int n_heads, double scale,                   \
        unsigned int seed_hash, unsigned int threshold, double keep_scale
#define DKDV_ARGS(S)                                                                                     \
    const S *q, const S *k, const S *v, const S *dout, const S *key_bias, const S *row_max,              \
        const S *row_inv_sum, const S *delta, S *dk, S *dv, int T, int n_heads, double scale,            \
        unsigned int seed_hash, unsigned int threshold, double keep_scale

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK) attention_forward_f32(FORWARD_ARGS(float)) {
    attention_forward<float>(q, k, v, key_bias, out, row_max, row_inv_sum, T, n_heads, scale, seed_hash,
                             threshold, keep_scale, planted_bug);
}
extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK) attention_forward_f64(FORWARD_ARGS(double)) {
    attention_forward<double>(q, k, v, key_bias, out, row_max, row_inv_sum, T, n_heads, scale, seed_hash,
                              threshold, keep_scale, planted_bug);
}
extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK) attention_backward_dq_f32(DQ_ARGS(float)) {
    attention_backward_dq<float>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dq, T, n_heads, scale,
                                 seed_hash, threshold, keep_scale);
}
extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK) attention_backward_dq_f64(DQ_ARGS(double)) {
    attention_backward_dq<double>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dq, T, n_heads, scale,
                                  seed_hash, threshold, keep_scale);
}
extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK) attention_backward_dkdv_f32(DKDV_ARGS(float)) {
    attention_backward_dkdv<float>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dk, dv, T, n_heads,
                                   scale, seed_hash, threshold, keep_scale);
}
extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK) attention_backward_dkdv_f64(DKDV_ARGS(double)) {
    attention_backward_dkdv<double>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dk, dv, T, n_heads,
                                    scale, seed_hash, threshold, keep_scale);
}
