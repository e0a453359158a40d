// Fused attention on the GPU: FlashAttention-2 forward and backward with shared-memory tiles.
//
// Loaded at run time by kernels/cuda_attention.py with cupy.RawModule (NVRTC), compiled once
// per head size with -DHEAD_DIM=<d> (and the launch shape below), so the per-thread pieces of a
// row live in registers. No host code, no #include: NVRTC compiles it as is; `nvcc --ptx`
// checks it in CI.
//
// Layout: q, k, v, out, dout, dq, dk, dv are (B*H, T, HEAD_DIM) row-major; key_bias is (B, T)
// (0 or -10000, the BERT padding mask); row_max, row_inv_sum, delta are (B*H, T).
//
// Work split: a GROUP of THREADS_PER_ROW neighbouring threads (lanes of one warp) owns one row
// (a query row in the forward and in dQ, a key row in dK/dV). Lane g of the group holds the
// row's columns c = t * THREADS_PER_ROW + g, t = 0 .. COLS-1. A dot product over the row is a
// partial sum per lane, then a butterfly of warp shuffles (group_sum) gives every lane the total.
// Splitting rows this way gives the GPU THREADS_PER_ROW times more threads than one thread per
// row, each with THREADS_PER_ROW times fewer registers.
//
// Forward (keys in tiles of TILE_K rows held in shared memory):
//     s_ij = q_i . k_j * scale + bias_j
//     m'   = max(m, max_j s_ij);  c = exp(m - m')            (online-softmax correction)
//     l    = c * l + sum_j exp(s_ij - m')
//     o    = c * o + sum_j exp(s_ij - m') * z_ij / (1 - p) * v_j
//     out_i = o / l;   row_max_i = m;   row_inv_sum_i = 1 / l
// Backward, with P_ij = exp(s_ij - row_max_i) * row_inv_sum_i recomputed and
// D_i = rowsum(dO_i * O_i) (computed by the caller):
//     dP_ij = (dO_i . v_j) * z_ij / (1 - p);   dS_ij = P_ij (dP_ij - D_i)
//     dq_i  = scale * sum_j dS_ij k_j                      (kernel attention_backward_dq_*:  a group per query)
//     dk_j  = scale * sum_i dS_ij q_i,  dv_j = sum_i P_ij z_ij / (1 - p) dO_i
//                                                          (kernel attention_backward_dkdv_*: a group per key)
// Two backward kernels instead of atomics: deterministic, and each recomputes only S and dP.
//
// Dropout keep bit: mix32(mix32(mix32(mix32(seed ^ GOLDEN) ^ bh) ^ i) ^ j) >> 8 >= threshold,
// identical to bert_from_scratch.attention.dropout_keep_mask (the caller passes
// seed_hash = mix32(seed ^ GOLDEN)); threshold == 0 means no dropout.

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#ifndef THREADS_PER_ROW
#define THREADS_PER_ROW 4      // lanes per row: a power of two, at most 32
#endif
#ifndef ROWS_PER_BLOCK
#define ROWS_PER_BLOCK 32      // rows per block: query rows (forward, dq) or key rows (dk, dv)
#endif

#define BLOCK_THREADS (ROWS_PER_BLOCK * THREADS_PER_ROW)
#define COLS ((HEAD_DIM + THREADS_PER_ROW - 1) / THREADS_PER_ROW)   // columns per lane
#define PADDED_DIM (COLS * THREADS_PER_ROW)                          // tile width, zero-padded
#define NEG_BIG (-1.0e30)      // a finite "minus infinity" for the running maximum

typedef unsigned long long index_t;   // 64-bit offsets (NVRTC has no <cstddef>)

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

// sum of x over the THREADS_PER_ROW lanes of this thread's group; every lane gets the total.
// All 32 lanes of the warp must call it (rows past T take part with zeros).
template <typename scalar_t>
__device__ __forceinline__ scalar_t group_sum(scalar_t x) {
#pragma unroll
    for (int offset = THREADS_PER_ROW / 2; offset > 0; offset >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// keys (or queries) per shared-memory tile: at most 8 KiB per tile, between 8 and 32 rows
template <typename scalar_t>
struct Tile {
    static constexpr int BY_SIZE = 8192 / (PADDED_DIM * (int)sizeof(scalar_t));
    static constexpr int N = BY_SIZE > 32 ? 32 : (BY_SIZE < 8 ? 8 : BY_SIZE);
};

// rows r0 .. r0+TILE-1 of a (T, HEAD_DIM) matrix into a zero-padded [TILE][PADDED_DIM] tile
template <typename scalar_t, int TILE>
__device__ __forceinline__ void load_tile(scalar_t (*tile)[PADDED_DIM], const scalar_t* __restrict__ src,
                                          int r0, int n_rows) {
    for (int e = threadIdx.x; e < TILE * PADDED_DIM; e += BLOCK_THREADS) {
        const int rr = e / PADDED_DIM, c = e % PADDED_DIM;
        tile[rr][c] = (rr < n_rows && c < HEAD_DIM) ? src[(index_t)(r0 + rr) * HEAD_DIM + c] : (scalar_t)0;
    }
}

// this lane's columns of row `row` of a (T, HEAD_DIM) matrix (zeros past the row's end or past T)
template <typename scalar_t>
__device__ __forceinline__ void load_row(scalar_t (&dst)[COLS], const scalar_t* __restrict__ src, int row,
                                         bool valid, int lane) {
#pragma unroll
    for (int t = 0; t < COLS; ++t) {
        const int c = t * THREADS_PER_ROW + lane;
        dst[t] = (valid && c < HEAD_DIM) ? src[(index_t)row * HEAD_DIM + c] : (scalar_t)0;
    }
}

template <typename scalar_t>
__device__ __forceinline__ void store_row(scalar_t* __restrict__ dst, const scalar_t (&src)[COLS], scalar_t factor,
                                          int row, bool valid, int lane) {
    if (!valid) return;
#pragma unroll
    for (int t = 0; t < COLS; ++t) {
        const int c = t * THREADS_PER_ROW + lane;
        if (c < HEAD_DIM) dst[(index_t)row * HEAD_DIM + c] = src[t] * factor;
    }
}

// ----------------------------------------------------------------------------------------
// Forward: grid (ceil(T / ROWS_PER_BLOCK), B*H), block BLOCK_THREADS
// ----------------------------------------------------------------------------------------
template <typename scalar_t>
__device__ void attention_forward(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                  const scalar_t* __restrict__ v, const scalar_t* __restrict__ key_bias,
                                  scalar_t* __restrict__ out, scalar_t* __restrict__ row_max,
                                  scalar_t* __restrict__ row_inv_sum, int T, int n_heads, double scale_d,
                                  unsigned int seed_hash, unsigned int threshold, double keep_scale_d,
                                  int planted_bug, unsigned int bh_offset) {
    constexpr int TK = Tile<scalar_t>::N;
    __shared__ scalar_t k_tile[TK][PADDED_DIM];
    __shared__ scalar_t v_tile[TK][PADDED_DIM];
    __shared__ scalar_t bias_tile[TK];

    const int bh = blockIdx.y;
    const int b = bh / n_heads;
    const int lane = threadIdx.x % THREADS_PER_ROW;
    const int i = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / THREADS_PER_ROW;   // this group's query row
    const bool valid = i < T;
    const scalar_t* q_head = q + (index_t)bh * T * HEAD_DIM;
    const scalar_t* k_head = k + (index_t)bh * T * HEAD_DIM;
    const scalar_t* v_head = v + (index_t)bh * T * HEAD_DIM;
    const scalar_t scale = (scalar_t)scale_d;
    const scalar_t keep_scale = (scalar_t)keep_scale_d;
    const unsigned int row_h = row_hash(seed_hash, (int)((unsigned int)bh + bh_offset), i);   // global b*H+h

    scalar_t q_row[COLS], acc[COLS];        // this lane's columns of q_i and of the running output
    load_row(q_row, q_head, i, valid, lane);
#pragma unroll
    for (int t = 0; t < COLS; ++t) acc[t] = 0;
    scalar_t m = (scalar_t)NEG_BIG;         // running row max
    scalar_t l = 0;                         // running row sum

    for (int j0 = 0; j0 < T; j0 += TK) {
        const int nk = min(TK, T - j0);
        load_tile<scalar_t, TK>(k_tile, k_head, j0, nk);
        load_tile<scalar_t, TK>(v_tile, v_head, j0, nk);
        for (int jj = threadIdx.x; jj < TK; jj += BLOCK_THREADS)
            bias_tile[jj] = jj < nk ? key_bias[(index_t)b * T + j0 + jj] : (scalar_t)0;
        __syncthreads();

        scalar_t s[TK];                     // this tile's scores (keys past T: NEG_BIG, so exp gives 0)
        scalar_t new_max = m;
#pragma unroll
        for (int jj = 0; jj < TK; ++jj) {
            scalar_t dot = 0;
#pragma unroll
            for (int t = 0; t < COLS; ++t) dot += q_row[t] * k_tile[jj][t * THREADS_PER_ROW + lane];
            dot = group_sum(dot);
            s[jj] = jj < nk ? dot * scale + bias_tile[jj] : (scalar_t)NEG_BIG;
            new_max = s[jj] > new_max ? s[jj] : new_max;
        }
        scalar_t correction = exp_t(m - new_max);
        if (planted_bug == 1) correction = 1;
        l *= correction;
#pragma unroll
        for (int t = 0; t < COLS; ++t) acc[t] *= correction;
#pragma unroll
        for (int jj = 0; jj < TK; ++jj) {
            scalar_t p = exp_t(s[jj] - new_max);
            l += p;
            if (threshold > 0) p = keep_entry(row_h, j0 + jj, threshold) ? p * keep_scale : (scalar_t)0;
#pragma unroll
            for (int t = 0; t < COLS; ++t) acc[t] += p * v_tile[jj][t * THREADS_PER_ROW + lane];
        }
        m = new_max;
        __syncthreads();
    }
    const scalar_t inv = (scalar_t)1 / l;
    store_row(out + (index_t)bh * T * HEAD_DIM, acc, inv, i, valid, lane);
    if (valid && lane == 0) {
        row_max[(index_t)bh * T + i] = m;
        row_inv_sum[(index_t)bh * T + i] = inv;
    }
}

// ----------------------------------------------------------------------------------------
// Backward dQ: grid (ceil(T / ROWS_PER_BLOCK), B*H), a group of lanes per query row
// ----------------------------------------------------------------------------------------
template <typename scalar_t>
__device__ void attention_backward_dq(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                      const scalar_t* __restrict__ v, const scalar_t* __restrict__ dout,
                                      const scalar_t* __restrict__ key_bias, const scalar_t* __restrict__ row_max,
                                      const scalar_t* __restrict__ row_inv_sum, const scalar_t* __restrict__ delta,
                                      scalar_t* __restrict__ dq, int T, int n_heads, double scale_d,
                                      unsigned int seed_hash, unsigned int threshold, double keep_scale_d,
                                      unsigned int bh_offset) {
    constexpr int TK = Tile<scalar_t>::N;
    __shared__ scalar_t k_tile[TK][PADDED_DIM];
    __shared__ scalar_t v_tile[TK][PADDED_DIM];
    __shared__ scalar_t bias_tile[TK];

    const int bh = blockIdx.y;
    const int b = bh / n_heads;
    const int lane = threadIdx.x % THREADS_PER_ROW;
    const int i = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / THREADS_PER_ROW;
    const bool valid = i < T;
    const index_t head = (index_t)bh * T * HEAD_DIM;
    const scalar_t scale = (scalar_t)scale_d;
    const scalar_t keep_scale = (scalar_t)keep_scale_d;
    const unsigned int row_h = row_hash(seed_hash, (int)((unsigned int)bh + bh_offset), i);   // global b*H+h

    scalar_t q_row[COLS], do_row[COLS], dq_row[COLS];
    load_row(q_row, q + head, i, valid, lane);
    load_row(do_row, dout + head, i, valid, lane);
#pragma unroll
    for (int t = 0; t < COLS; ++t) dq_row[t] = 0;
    const scalar_t m_i = valid ? row_max[(index_t)bh * T + i] : (scalar_t)0;
    const scalar_t inv_i = valid ? row_inv_sum[(index_t)bh * T + i] : (scalar_t)0;
    const scalar_t d_i = valid ? delta[(index_t)bh * T + i] : (scalar_t)0;

    for (int j0 = 0; j0 < T; j0 += TK) {
        const int nk = min(TK, T - j0);     // the same in every thread: the shuffles stay in step
        load_tile<scalar_t, TK>(k_tile, k + head, j0, nk);
        load_tile<scalar_t, TK>(v_tile, v + head, j0, nk);
        for (int jj = threadIdx.x; jj < TK; jj += BLOCK_THREADS)
            bias_tile[jj] = jj < nk ? key_bias[(index_t)b * T + j0 + jj] : (scalar_t)0;
        __syncthreads();
        for (int jj = 0; jj < nk; ++jj) {
            scalar_t s = 0, dp = 0;
#pragma unroll
            for (int t = 0; t < COLS; ++t) {
                s += q_row[t] * k_tile[jj][t * THREADS_PER_ROW + lane];
                dp += do_row[t] * v_tile[jj][t * THREADS_PER_ROW + lane];
            }
            s = group_sum(s);
            dp = group_sum(dp);
            const scalar_t p = exp_t(s * scale + bias_tile[jj] - m_i) * inv_i;      // P
            scalar_t zs = 1;                                                     // Z / (1 - p)
            if (threshold > 0) zs = keep_entry(row_h, j0 + jj, threshold) ? keep_scale : (scalar_t)0;
            const scalar_t ds = p * (dp * zs - d_i);                             // dS
#pragma unroll
            for (int t = 0; t < COLS; ++t) dq_row[t] += ds * k_tile[jj][t * THREADS_PER_ROW + lane];
        }
        __syncthreads();
    }
    store_row(dq + head, dq_row, scale, i, valid, lane);
}

// ----------------------------------------------------------------------------------------
// Backward dK, dV: grid (ceil(T / ROWS_PER_BLOCK), B*H), a group of lanes per key row
// ----------------------------------------------------------------------------------------
template <typename scalar_t>
__device__ void attention_backward_dkdv(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                        const scalar_t* __restrict__ v, const scalar_t* __restrict__ dout,
                                        const scalar_t* __restrict__ key_bias, const scalar_t* __restrict__ row_max,
                                        const scalar_t* __restrict__ row_inv_sum, const scalar_t* __restrict__ delta,
                                        scalar_t* __restrict__ dk, scalar_t* __restrict__ dv, int T, int n_heads,
                                        double scale_d, unsigned int seed_hash, unsigned int threshold,
                                        double keep_scale_d, unsigned int bh_offset) {
    constexpr int TQ = Tile<scalar_t>::N;
    __shared__ scalar_t q_tile[TQ][PADDED_DIM];
    __shared__ scalar_t do_tile[TQ][PADDED_DIM];
    __shared__ scalar_t max_tile[TQ], inv_tile[TQ], delta_tile[TQ];

    const int bh = blockIdx.y;
    const int b = bh / n_heads;
    const int lane = threadIdx.x % THREADS_PER_ROW;
    const int j = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / THREADS_PER_ROW;   // this group's key row
    const bool valid = j < T;
    const index_t head = (index_t)bh * T * HEAD_DIM;
    const scalar_t scale = (scalar_t)scale_d;
    const scalar_t keep_scale = (scalar_t)keep_scale_d;
    const unsigned int bh_h = mix32(seed_hash ^ ((unsigned int)bh + bh_offset));

    scalar_t k_row[COLS], v_row[COLS], dk_row[COLS], dv_row[COLS];
    load_row(k_row, k + head, j, valid, lane);
    load_row(v_row, v + head, j, valid, lane);
#pragma unroll
    for (int t = 0; t < COLS; ++t) {
        dk_row[t] = 0;
        dv_row[t] = 0;
    }
    const scalar_t bias_j = valid ? key_bias[(index_t)b * T + j] : (scalar_t)0;

    for (int i0 = 0; i0 < T; i0 += TQ) {
        const int nq = min(TQ, T - i0);     // the same in every thread: the shuffles stay in step
        load_tile<scalar_t, TQ>(q_tile, q + head, i0, nq);
        load_tile<scalar_t, TQ>(do_tile, dout + head, i0, nq);
        for (int ii = threadIdx.x; ii < TQ; ii += BLOCK_THREADS) {
            const index_t r = (index_t)bh * T + i0 + ii;
            max_tile[ii] = ii < nq ? row_max[r] : (scalar_t)0;
            inv_tile[ii] = ii < nq ? row_inv_sum[r] : (scalar_t)0;
            delta_tile[ii] = ii < nq ? delta[r] : (scalar_t)0;
        }
        __syncthreads();
        for (int ii = 0; ii < nq; ++ii) {
            scalar_t s = 0, dp = 0;
#pragma unroll
            for (int t = 0; t < COLS; ++t) {
                s += q_tile[ii][t * THREADS_PER_ROW + lane] * k_row[t];
                dp += do_tile[ii][t * THREADS_PER_ROW + lane] * v_row[t];
            }
            s = group_sum(s);
            dp = group_sum(dp);
            const scalar_t p = exp_t(s * scale + bias_j - max_tile[ii]) * inv_tile[ii];   // P
            scalar_t zs = 1;                                                              // Z / (1 - p)
            if (threshold > 0)
                zs = keep_entry(mix32(bh_h ^ (unsigned int)(i0 + ii)), j, threshold) ? keep_scale : (scalar_t)0;
            const scalar_t p_dropped = p * zs;                                            // P~
            const scalar_t ds = p * (dp * zs - delta_tile[ii]);                           // dS
#pragma unroll
            for (int t = 0; t < COLS; ++t) {
                dv_row[t] += p_dropped * do_tile[ii][t * THREADS_PER_ROW + lane];
                dk_row[t] += ds * q_tile[ii][t * THREADS_PER_ROW + lane];
            }
        }
        __syncthreads();
    }
    store_row(dk + head, dk_row, scale, j, valid, lane);
    store_row(dv + head, dv_row, (scalar_t)1, j, valid, lane);
}

// ----------------------------------------------------------------------------------------
// Entry points, one per dtype (extern "C" names are what cupy.RawModule.get_function finds)
// ----------------------------------------------------------------------------------------
#define FORWARD_ARGS(S)                                                                                  \
    const S *q, const S *k, const S *v, const S *key_bias, S *out, S *row_max, S *row_inv_sum, int T,    \
        int n_heads, double scale, unsigned int seed_hash, unsigned int threshold, double keep_scale,    \
        int planted_bug, unsigned int bh_offset
#define DQ_ARGS(S)                                                                                       \
    const S *q, const S *k, const S *v, const S *dout, const S *key_bias, const S *row_max,              \
        const S *row_inv_sum, const S *delta, S *dq, int T, int n_heads, double scale,                   \
        unsigned int seed_hash, unsigned int threshold, double keep_scale, unsigned int bh_offset
#define DKDV_ARGS(S)                                                                                     \
    const S *q, const S *k, const S *v, const S *dout, const S *key_bias, const S *row_max,              \
        const S *row_inv_sum, const S *delta, S *dk, S *dv, int T, int n_heads, double scale,            \
        unsigned int seed_hash, unsigned int threshold, double keep_scale, unsigned int bh_offset

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attention_forward_f32(FORWARD_ARGS(float)) {
    attention_forward<float>(q, k, v, key_bias, out, row_max, row_inv_sum, T, n_heads, scale, seed_hash,
                             threshold, keep_scale, planted_bug, bh_offset);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attention_forward_f64(FORWARD_ARGS(double)) {
    attention_forward<double>(q, k, v, key_bias, out, row_max, row_inv_sum, T, n_heads, scale, seed_hash,
                              threshold, keep_scale, planted_bug, bh_offset);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attention_backward_dq_f32(DQ_ARGS(float)) {
    attention_backward_dq<float>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dq, T, n_heads, scale,
                                 seed_hash, threshold, keep_scale, bh_offset);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attention_backward_dq_f64(DQ_ARGS(double)) {
    attention_backward_dq<double>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dq, T, n_heads, scale,
                                  seed_hash, threshold, keep_scale, bh_offset);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attention_backward_dkdv_f32(DKDV_ARGS(float)) {
    attention_backward_dkdv<float>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dk, dv, T, n_heads,
                                   scale, seed_hash, threshold, keep_scale, bh_offset);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attention_backward_dkdv_f64(DKDV_ARGS(double)) {
    attention_backward_dkdv<double>(q, k, v, dout, key_bias, row_max, row_inv_sum, delta, dk, dv, T, n_heads,
                                    scale, seed_hash, threshold, keep_scale, bh_offset);
}
