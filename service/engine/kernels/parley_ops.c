/*
 * Parley's ONNX Runtime custom ops for the CPU graphs (domain "ai.parley").
 *
 * ORT 1.31's CPU kernels spend much of a small-batch decode step on per-op overhead rather than on
 * arithmetic: GroupQueryAttention's decode path re-reads each KV head once per query head, and the exact
 * Q4_1 offset term costs four tiny ops per linear layer. These kernels replace those patterns with one op
 * each (service/engine/kernels/fusion.py rewrites the graph); their figures are in the README (Performance).
 *
 *   DecodeAttention  GroupQueryAttention with interleaved rotary, K/V written in place in an fp16 cache;
 *                    a decode step row by row, a prefill chunk with blocked kernels
 *   QuantLinear      MatMulNBits (4/8-bit, int8 activations) with the Q4_1 offsets, on AVX-512 VNNI
 *   BlockOffsetAdd   y + blocksum(x) · offsetsᵀ   (the Q4_1 minima, exact in fp32)
 *   SwiGLU           silu(gate) · up over a packed [.., 2F] gate/up tensor
 *   SamplingHead     per row of logits: the k most likely tokens and the softmax normalisers the sampler
 *                    needs, so that it rarely reads the whole row
 *
 * Activations are fp32 (the CPU graph's dtype). Built by service/engine/kernels/build.py against ORT's C API.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

static const OrtApi *ort;

#define CHECK(expr)                      \
    do {                                 \
        OrtStatus *status_ = (expr);     \
        if (status_ != NULL) return status_; \
    } while (0)

static OrtStatus *fail(const char *op, const char *message) {
    char text[512];
    snprintf(text, sizeof text, "ai.parley.%s: %s", op, message);
    return ort->CreateStatus(ORT_INVALID_ARGUMENT, text);
}

/* --- tensors ---------------------------------------------------------------------------------- */

typedef struct {
    const void *data;
    int64_t dims[4];
    size_t rank;
    size_t count;
} Tensor;

static OrtStatus *read_shape(const OrtValue *value, Tensor *t) {
    OrtTensorTypeAndShapeInfo *info = NULL;
    CHECK(ort->GetTensorTypeAndShape(value, &info));
    OrtStatus *status = ort->GetDimensionsCount(info, &t->rank);
    if (status == NULL && t->rank > 4) status = ort->CreateStatus(ORT_INVALID_ARGUMENT, "rank above 4");
    if (status == NULL) status = ort->GetDimensions(info, t->dims, t->rank);
    if (status == NULL) status = ort->GetTensorShapeElementCount(info, &t->count);
    ort->ReleaseTensorTypeAndShapeInfo(info);
    return status;
}

static OrtStatus *input(OrtKernelContext *ctx, size_t index, Tensor *t) {
    const OrtValue *value = NULL;
    memset(t, 0, sizeof *t);  // unused dims compare equal
    CHECK(ort->KernelContext_GetInput(ctx, index, &value));
    CHECK(read_shape(value, t));
    return ort->GetTensorData(value, &t->data);
}

static OrtStatus *output(OrtKernelContext *ctx, size_t index, const int64_t *dims, size_t rank, void **data) {
    OrtValue *value = NULL;
    CHECK(ort->KernelContext_GetOutput(ctx, index, dims, rank, &value));
    return ort->GetTensorMutableData(value, data);
}

static OrtStatus *int_attribute(const OrtKernelInfo *info, const char *name, int64_t fallback, int64_t *out) {
    OrtStatus *status = ort->KernelInfoGetAttribute_int64(info, name, out);
    if (status != NULL) {  // absent: the schema's default
        ort->ReleaseStatus(status);
        *out = fallback;
    }
    return NULL;
}

/* Per-thread scratch that grows as needed and lives as long as the thread (ORT's pool threads are
 * long-lived), so no kernel call allocates in the steady state. */
static float *scratch(size_t floats) {
    static __thread float *buffer = NULL;
    static __thread size_t capacity = 0;
    if (floats > capacity) {
        float *grown = realloc(buffer, floats * sizeof(float));
        if (grown == NULL) return NULL;
        buffer = grown;
        capacity = floats;
    }
    return buffer;
}

/* --- vector helpers: AVX2+FMA where the CPU has them (-march=native decides), plain C otherwise --- */

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline float hsum(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* e^x: x = n·ln2 + r, e^r by a degree-6 polynomial, 2^n through the exponent bits. Relative error about
 * 2e-7 over the clamped range (the classic single-precision expansion); 8 lanes, or 16 with AVX-512. */
static const float EXP_MIN = -87.3f, EXP_MAX = 88.3f, EXP_LOG2E = 1.44269504f;
static const float EXP_LN2_HIGH = 0.693359375f, EXP_LN2_LOW = -2.12194440e-4f;
static const float EXP_POLY[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                  4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)), _mm256_set1_ps(EXP_MAX));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HIGH), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LOW), r);
    __m256 p = _mm256_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[i]));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

#if defined(__AVX512F__)
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)), _mm512_set1_ps(EXP_MAX));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HIGH), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LOW), r);
    __m512 p = _mm512_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_POLY[i]));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);  // p · 2^n
}
#endif
#endif

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static inline float sum_of(const float *x, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
    sum = hsum(acc);
#endif
    for (; i < n; i++) sum += x[i];
    return sum;
}

static inline float max_of(const float *x, int64_t n) {
    int64_t i = 0;
    float top = -INFINITY;
#if defined(__AVX512F__)
    __m512 acc = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) acc = _mm512_max_ps(acc, _mm512_loadu_ps(x + i));
    top = _mm512_reduce_max_ps(acc);
#endif
    for (; i < n; i++) top = x[i] > top ? x[i] : top;
    return top;
}

/* y += a·x */
static inline void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

/* x[i] = e^(x[i] − shift); returns Σ of the results. */
static inline float exp_shifted(float *x, float shift, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
#if defined(__AVX512F__)
    const __m512 shift16 = _mm512_set1_ps(shift);
    __m512 acc16 = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), shift16));
        _mm512_storeu_ps(x + i, e);
        acc16 = _mm512_add_ps(acc16, e);
    }
    sum = _mm512_reduce_add_ps(acc16);
#endif
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 vs = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum += hsum(acc);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

/* out = gate·sigmoid(gate)·up */
static inline void swiglu_row(float *restrict out, const float *gate, const float *up, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* --- DecodeAttention -------------------------------------------------------------------------- */
/* Inputs: qkv [B, S, (H + 2G)·D], past_key/past_value [B, G, C, D] fp16, seqlens_k [B] (tokens after this
 * run − 1, per row), total_sequence_length [] (unused: each row's own length governs), cos/sin caches
 * [P, D/2]. Outputs: attention [B, S, H·D], present_key/present_value [B, G, C, D] fp16. When a present
 * output is bound to its past input's memory (the engine always binds them so) only the S new rows are
 * written; otherwise the past rows are copied first.
 * The cache holds keys and values in fp16, as llama.cpp's default cache does: half the bytes a decode step
 * streams. Scores and sums are fp32, and each new key and value is rounded to fp16 before any query reads
 * it, so a token sees the same numbers whether its keys came from a prefill chunk or a decode step.
 * One task per (row, KV head): its R = H/G query heads share one pass over that head's keys and values.
 * A decode step (S = 1) reads the cache row by row; a prefill chunk (S > 1) runs blocked kernels on fp32
 * copies of the visible keys (transposed, 16 keys a vector) and values. */

typedef _Float16 half;

typedef struct {
    int64_t heads, kv_heads;
} AttentionKernel;

typedef struct {
    const float *qkv, *cos, *sin;
    const half *past_k, *past_v;
    const int32_t *seqlens;
    float *out;
    half *present_k, *present_v;
    int64_t batch, seq, heads, kv_heads, capacity, head_dim, positions;
    float scale;
    int failed;
} AttentionJob;

static inline void halves_from_floats(half *dst, const float *src, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; i++) dst[i] = (half)src[i];
}

static inline void floats_from_halves(float *dst, const half *src, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = (float)src[i];
}

static void rotate_interleaved(float *dst, const float *src, const float *cos, const float *sin, int64_t d) {
    for (int64_t i = 0; i < d / 2; i++) {
        float x = src[2 * i], y = src[2 * i + 1];
        dst[2 * i] = x * cos[i] - y * sin[i];
        dst[2 * i + 1] = x * sin[i] + y * cos[i];
    }
}

/* Softmax of p[0, visible) in place; p[visible, padded) becomes 0. */
static void softmax_prefix(float *p, int64_t visible, int64_t padded) {
    const float top = max_of(p, visible);
    const float inv = 1.0f / exp_shifted(p, top, visible);
    for (int64_t t = 0; t < visible; t++) p[t] *= inv;
    memset(p + visible, 0, (size_t)(padded - visible) * sizeof(float));
}

/* The portable path, query by query and key row by key row: CPUs without AVX-512, or a head_dim that is not
 * a multiple of 64. */
static int attention_direct(const AttentionJob *job, int64_t b, int64_t g, const half *keys, const half *values,
                            int64_t past) {
    const int64_t D = job->head_dim, S = job->seq, R = job->heads / job->kv_heads, total = past + S;
    const int64_t width = (job->heads + 2 * job->kv_heads) * D;
    float *work = scratch((size_t)(R * (D + total) + D));
    if (work == NULL) return 0;
    float *queries = work, *scores = work + R * D, *row = scores + R * total;  // [R, D], [R, total], [D]
    const float *qkv = job->qkv + (size_t)(b * S) * (size_t)width;
    for (int64_t s = 0; s < S; s++, qkv += width) {
        const int64_t pos = past + s, visible = pos + 1;  // causal: keys 0..pos
        for (int64_t r = 0; r < R; r++)
            rotate_interleaved(queries + r * D, qkv + (g * R + r) * D, job->cos + pos * (D / 2),
                               job->sin + pos * (D / 2), D);
        for (int64_t t = 0; t < visible; t++) {
            floats_from_halves(row, keys + t * D, D);
            for (int64_t r = 0; r < R; r++) scores[r * total + t] = dot(queries + r * D, row, D) * job->scale;
        }
        for (int64_t r = 0; r < R; r++) softmax_prefix(scores + r * total, visible, visible);
        float *out = job->out + (size_t)(b * S + s) * (size_t)(job->heads * D) + g * R * D;
        memset(out, 0, (size_t)(R * D) * sizeof(float));
        for (int64_t t = 0; t < visible; t++) {
            floats_from_halves(row, values + t * D, D);
            for (int64_t r = 0; r < R; r++) axpy(out + r * D, scores[r * total + t], row, D);
        }
    }
    return 1;
}

#if defined(__AVX512F__)
enum { LANES = 16, AV_QUERIES = 4 };

/* Lane i of the result = the sum of v[i]'s 16 lanes: pairs, then quads, then 128-bit quarters are added
 * (45 instructions for 16 sums, where 16 separate reductions take ~130). */
static inline __m512 sums_of_16(const __m512 *v) {
    __m512 pairs[8], quads[4];
    for (int i = 0; i < 8; i++)  // per quarter: v[2i] and v[2i+1] halved, interleaved
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) {  // per quarter: v[4i..4i+3], one lane each
        const __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
        quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // quarters 0+1 and 2+3 of quads[0], quads[1] (then of quads[2], quads[3]); then across those
    const __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88), _mm512_shuffle_f32x4(quads[0], quads[1], 0xDD));
    const __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88), _mm512_shuffle_f32x4(quads[2], quads[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88), _mm512_shuffle_f32x4(low, high, 0xDD));
}

/* rows[j][0, D) = Σ_t weights[j·stride + t] · values[t] over t < count, for the n ≤ 4 queries j: 4 queries
 * × 64 columns of accumulators stay in registers, and each fp16 value row is converted once for all. */
static inline void weighted_values(float *const *rows, const float *weights, int64_t stride, int n,
                                   const half *values, int64_t count, int64_t D) {
    for (int64_t c0 = 0; c0 < D; c0 += 64) {
        __m512 acc[AV_QUERIES][4];
#pragma GCC unroll 4
        for (int j = 0; j < AV_QUERIES; j++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) acc[j][c] = _mm512_setzero_ps();
        for (int64_t t = 0; t < count; t++) {
            __m512 v[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                v[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(values + t * D + c0 + 16 * c)));
#pragma GCC unroll 4
            for (int j = 0; j < AV_QUERIES; j++) {
                if (j >= n) break;
                const __m512 weight = _mm512_set1_ps(weights[j * stride + t]);
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) acc[j][c] = _mm512_fmadd_ps(weight, v[c], acc[j][c]);
            }
        }
        for (int j = 0; j < n; j++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(rows[j] + c0 + 16 * c, acc[j][c]);
    }
}

/* The blocked path for S > 1 and head_dim a multiple of 64. Query vectors (position s, head r) are taken
 * 16 at a time in the order s·R + r, so a tile's last vector sees the most keys:
 *   scores: 16 accumulators, one per query, each 16 keys wide; a key block costs D vector loads and
 *           16·D broadcast FMAs (keys were transposed once per task);
 *   softmax row by row over each query's visible keys;
 *   values: 4 queries × 64 columns in 16 accumulators, one broadcast weight per query and key. */
static inline __attribute__((always_inline)) int attention_blocked_of(const AttentionJob *job, int64_t b, int64_t g,
                                                                     const half *keys, const half *values,
                                                                     int64_t past, const int64_t D) {
    const int64_t S = job->seq, R = job->heads / job->kv_heads, total = past + S;
    const int64_t width = (job->heads + 2 * job->kv_heads) * D;
    const int64_t padded = (total + LANES - 1) / LANES * LANES;
    float *work = scratch((size_t)(padded * D + LANES * D + LANES * padded));
    if (work == NULL) return 0;
    float *kt = work, *q = kt + padded * D, *p = q + LANES * D;
    for (int64_t t = 0; t < padded; t++) {  // kt[(block·D + d)·16 + lane] = key[16·block + lane][d]
        float *dst = kt + (t / LANES) * D * LANES + t % LANES;
        if (t < total) {
            for (int64_t d = 0; d < D; d++) dst[d * LANES] = (float)keys[t * D + d];
        } else {
            for (int64_t d = 0; d < D; d++) dst[d * LANES] = 0.0f;
        }
    }
    const float *qkv = job->qkv + (size_t)(b * S) * (size_t)width;
    const int64_t vectors = S * R;
    for (int64_t v0 = 0; v0 < vectors; v0 += LANES) {
        const int64_t n = vectors - v0 < LANES ? vectors - v0 : LANES;
        memset(q, 0, (size_t)(LANES * D) * sizeof(float));
        for (int64_t j = 0; j < n; j++) {
            const int64_t s = (v0 + j) / R, r = (v0 + j) % R, pos = past + s;
            float *qj = q + j * D;
            rotate_interleaved(qj, qkv + s * width + (g * R + r) * D, job->cos + pos * (D / 2), job->sin + pos * (D / 2), D);
            for (int64_t d = 0; d < D; d++) qj[d] *= job->scale;
        }
        const int64_t seen = past + (v0 + n - 1) / R + 1;  // keys the tile's last query sees
        const int64_t seen_padded = (seen + LANES - 1) / LANES * LANES;
        for (int64_t block = 0; block < seen_padded / LANES; block++) {
            __m512 acc[LANES];
#pragma GCC unroll 16
            for (int j = 0; j < LANES; j++) acc[j] = _mm512_setzero_ps();
            const float *k = kt + block * D * LANES;
            for (int64_t d = 0; d < D; d++) {
                const __m512 kd = _mm512_loadu_ps(k + d * LANES);
#pragma GCC unroll 16
                for (int j = 0; j < LANES; j++) acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(q[j * D + d]), kd, acc[j]);
            }
#pragma GCC unroll 16
            for (int j = 0; j < LANES; j++) _mm512_storeu_ps(p + j * padded + block * LANES, acc[j]);
        }
        for (int64_t j = 0; j < n; j++) softmax_prefix(p + j * padded, past + (v0 + j) / R + 1, seen_padded);
        for (int64_t j0 = 0; j0 < n; j0 += AV_QUERIES) {
            const int count = (int)(n - j0 < AV_QUERIES ? n - j0 : AV_QUERIES);
            float *rows[AV_QUERIES];
            for (int j = 0; j < count; j++) {
                const int64_t s = (v0 + j0 + j) / R, r = (v0 + j0 + j) % R;
                rows[j] = job->out + (size_t)(b * S + s) * (size_t)(job->heads * D) + (g * R + r) * D;
            }
            weighted_values(rows, p + j0 * padded, padded, count, values, seen, D);
        }
    }
    return 1;
}
/* The decode path for head_dim a multiple of 64: per query, the R query heads (4 at a time) stay in
 * registers; each key row is converted once and dotted with all of them, and each value row is converted
 * once and added into all their outputs, which stay in registers too. */
static inline __attribute__((always_inline)) int attention_rows_of(const AttentionJob *job, int64_t b, int64_t g,
                                                                  const half *keys, const half *values,
                                                                  int64_t past, const int64_t D) {
    const int64_t S = job->seq, R = job->heads / job->kv_heads, total = past + S;
    const int64_t width = (job->heads + 2 * job->kv_heads) * D;
    float *work = scratch((size_t)(R * (D + total)));
    if (work == NULL) return 0;
    float *queries = work, *scores = work + R * D;  // [R, D] (scaled), [R, total]
    __m512 partial[AV_QUERIES][LANES];
    const float *qkv = job->qkv + (size_t)(b * S) * (size_t)width;
    for (int64_t s = 0; s < S; s++, qkv += width) {
        const int64_t pos = past + s, visible = pos + 1;
        for (int64_t r = 0; r < R; r++) {
            float *qr = queries + r * D;
            rotate_interleaved(qr, qkv + (g * R + r) * D, job->cos + pos * (D / 2), job->sin + pos * (D / 2), D);
            for (int64_t d = 0; d < D; d++) qr[d] *= job->scale;
        }
        for (int64_t r0 = 0; r0 < R; r0 += AV_QUERIES) {
            const int n = (int)(R - r0 < AV_QUERIES ? R - r0 : AV_QUERIES);
            for (int64_t t0 = 0; t0 < visible; t0 += LANES) {
                const int keys_here = (int)(visible - t0 < LANES ? visible - t0 : LANES);
                for (int l = 0; l < LANES; l++) {  // each key's 16 partial sums, per query
                    __m512 acc[AV_QUERIES];
#pragma GCC unroll 4
                    for (int r = 0; r < AV_QUERIES; r++) acc[r] = _mm512_setzero_ps();
                    if (l < keys_here) {
                        const half *key = keys + (t0 + l) * D;
                        for (int64_t c = 0; c < D; c += 16) {
                            const __m512 k = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(key + c)));
#pragma GCC unroll 4
                            for (int r = 0; r < AV_QUERIES; r++)
                                if (r < n)
                                    acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(queries + (r0 + r) * D + c), k, acc[r]);
                        }
                    }
#pragma GCC unroll 4
                    for (int r = 0; r < AV_QUERIES; r++) partial[r][l] = acc[r];
                }
                for (int r = 0; r < n; r++)
                    _mm512_mask_storeu_ps(scores + (r0 + r) * total + t0, (__mmask16)((1u << keys_here) - 1u),
                                          sums_of_16(partial[r]));
            }
        }
        for (int64_t r = 0; r < R; r++) softmax_prefix(scores + r * total, visible, visible);
        float *out = job->out + (size_t)(b * S + s) * (size_t)(job->heads * D) + g * R * D;
        for (int64_t r0 = 0; r0 < R; r0 += AV_QUERIES) {
            const int n = (int)(R - r0 < AV_QUERIES ? R - r0 : AV_QUERIES);
            float *rows[AV_QUERIES];
            for (int r = 0; r < n; r++) rows[r] = out + (r0 + r) * D;
            weighted_values(rows, scores + r0 * total, total, n, values, visible, D);
        }
    }
    return 1;
}
/* head_dim 64 (the default model's) as a constant: loops over it unroll, queries stay in registers and a
 * tile's 16 query rows are one base address plus constant offsets */
static int attention_rows(const AttentionJob *job, int64_t b, int64_t g, const half *keys, const half *values,
                          int64_t past) {
    return job->head_dim == 64 ? attention_rows_of(job, b, g, keys, values, past, 64)
                               : attention_rows_of(job, b, g, keys, values, past, job->head_dim);
}

static int attention_blocked(const AttentionJob *job, int64_t b, int64_t g, const half *keys, const half *values,
                             int64_t past) {
    return job->head_dim == 64 ? attention_blocked_of(job, b, g, keys, values, past, 64)
                               : attention_blocked_of(job, b, g, keys, values, past, job->head_dim);
}
#endif

static void attention_task(void *user, size_t task) {
    AttentionJob *job = user;
    const int64_t b = (int64_t)task / job->kv_heads, g = (int64_t)task % job->kv_heads;
    const int64_t D = job->head_dim, S = job->seq, C = job->capacity;
    const int64_t width = (job->heads + 2 * job->kv_heads) * D;
    const int64_t total = (int64_t)job->seqlens[b] + 1, past = total - S;
    if (past < 0 || total > C || total > job->positions) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);  // reported by the caller; other rows complete
        return;
    }
    const size_t plane = (size_t)(b * job->kv_heads + g) * (size_t)(C * D);
    half *keys = job->present_k + plane, *values = job->present_v + plane;
    if (job->present_k != job->past_k) memcpy(keys, job->past_k + plane, (size_t)(past * D) * sizeof(half));
    if (job->present_v != job->past_v) memcpy(values, job->past_v + plane, (size_t)(past * D) * sizeof(half));

    float *rotated = scratch((size_t)D);
    if (rotated == NULL) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const float *qkv = job->qkv + (size_t)(b * S) * (size_t)width;
    for (int64_t s = 0; s < S; s++, qkv += width) {  // append the new keys (rotated) and values, in fp16
        const int64_t pos = past + s;
        rotate_interleaved(rotated, qkv + (job->heads + g) * D, job->cos + pos * (D / 2), job->sin + pos * (D / 2), D);
        halves_from_floats(keys + pos * D, rotated, D);
        halves_from_floats(values + pos * D, qkv + (job->heads + job->kv_heads + g) * D, D);
    }
    int done;
#if defined(__AVX512F__)
    if (D % 64 == 0)
        done = S > 1 ? attention_blocked(job, b, g, keys, values, past) : attention_rows(job, b, g, keys, values, past);
    else
#endif
        done = attention_direct(job, b, g, keys, values, past);
    if (!done) __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
}

static OrtStatus *attention_compute(void *state, OrtKernelContext *ctx) {
    const AttentionKernel *kernel = state;
    Tensor qkv, pk, pv, seqlens, cos, sin;
    CHECK(input(ctx, 0, &qkv));
    CHECK(input(ctx, 1, &pk));
    CHECK(input(ctx, 2, &pv));
    CHECK(input(ctx, 3, &seqlens));
    CHECK(input(ctx, 5, &cos));
    CHECK(input(ctx, 6, &sin));
    const char *op = "DecodeAttention";
    if (qkv.rank != 3 || pk.rank != 4 || pv.rank != 4 || cos.rank != 2 || sin.rank != 2)
        return fail(op, "expected qkv [B, S, W], past [B, G, C, D], cos/sin [P, D/2]");
    const int64_t B = qkv.dims[0], S = qkv.dims[1], D = pk.dims[3];
    if (pk.dims[0] != B || pk.dims[1] != kernel->kv_heads || memcmp(pk.dims, pv.dims, sizeof pk.dims) != 0)
        return fail(op, "past_key/past_value must both be [B, kv_num_heads, C, D]");
    if (qkv.dims[2] != (kernel->heads + 2 * kernel->kv_heads) * D || D % 2 != 0)
        return fail(op, "qkv width must be (num_heads + 2·kv_num_heads)·head_dim with an even head_dim");
    if ((int64_t)seqlens.count != B) return fail(op, "seqlens_k must hold one length per batch row");
    if (cos.dims[1] != D / 2 || memcmp(cos.dims, sin.dims, sizeof cos.dims) != 0)
        return fail(op, "cos/sin caches must be [P, head_dim/2]");

    AttentionJob job = {
        .qkv = qkv.data, .past_k = pk.data, .past_v = pv.data, .cos = cos.data, .sin = sin.data,
        .seqlens = seqlens.data, .batch = B, .seq = S, .heads = kernel->heads,
        .kv_heads = kernel->kv_heads, .capacity = pk.dims[2], .head_dim = D, .positions = cos.dims[0],
        .scale = 1.0f / sqrtf((float)D), .failed = 0,
    };
    const int64_t out_dims[3] = {B, S, kernel->heads * D};
    CHECK(output(ctx, 0, out_dims, 3, (void **)&job.out));
    CHECK(output(ctx, 1, pk.dims, 4, (void **)&job.present_k));
    CHECK(output(ctx, 2, pv.dims, 4, (void **)&job.present_v));
    CHECK(ort->KernelContext_ParallelFor(ctx, attention_task, (size_t)(B * kernel->kv_heads), 0, &job));
    if (job.failed) return fail(op, "a row's seqlens_k does not fit the cache or the rotary caches (or out of memory)");
    return NULL;
}

/* --- BlockOffsetAdd --------------------------------------------------------------------------- */
/* Inputs: y [.., N], x [.., K], offsets_t [K/block, N]; attribute block_size. Output y + Σ_b blocksum_b(x)
 * · offsets_t[b, :]: the per-block minima that MatMulNBits' integer zero points cannot express. */

typedef struct {
    int64_t block;
} OffsetKernel;

enum { OFFSET_CHUNK = 128 };  // output columns per task: the table's [blocks, 128] slice stays in L1

typedef struct {
    const float *y, *table, *sums;
    float *out;
    int64_t rows, n, blocks;
} OffsetJob;

/* Columns [c·CHUNK, (c+1)·CHUNK) of every row: the table slice is read from memory once, not per row. */
static void offset_task(void *user, size_t chunk) {
    const OffsetJob *job = user;
    const int64_t n0 = (int64_t)chunk * OFFSET_CHUNK;
    const int64_t width = job->n - n0 < OFFSET_CHUNK ? job->n - n0 : OFFSET_CHUNK;
    for (int64_t m = 0; m < job->rows; m++) {
        float *o = job->out + m * job->n + n0;
        const float *sums = job->sums + m * job->blocks;
        memcpy(o, job->y + m * job->n + n0, (size_t)width * sizeof(float));
        for (int64_t b = 0; b < job->blocks; b++) axpy(o, sums[b], job->table + b * job->n + n0, width);
    }
}

static OrtStatus *offset_compute(void *state, OrtKernelContext *ctx) {
    const OffsetKernel *kernel = state;
    Tensor y, x, offsets;
    CHECK(input(ctx, 0, &y));
    CHECK(input(ctx, 1, &x));
    CHECK(input(ctx, 2, &offsets));
    const char *op = "BlockOffsetAdd";
    if (y.rank < 1 || x.rank != y.rank || offsets.rank != 2) return fail(op, "expected y [.., N], x [.., K], offsets_t [K/block, N]");
    const int64_t N = y.dims[y.rank - 1], K = x.dims[x.rank - 1], blocks = offsets.dims[0];
    if (offsets.dims[1] != N || blocks * kernel->block != K) return fail(op, "offsets_t must be [K/block_size, N]");
    const int64_t rows = N > 0 ? (int64_t)(y.count / (size_t)N) : 0;
    if (K <= 0 || (int64_t)(x.count / (size_t)K) != rows) return fail(op, "y and x must have the same leading dims");

    OffsetJob job = {.y = y.data, .table = offsets.data, .rows = rows, .n = N, .blocks = blocks};
    CHECK(output(ctx, 0, y.dims, y.rank, (void **)&job.out));
    float *sums = scratch((size_t)(rows * blocks));
    if (sums == NULL) return ort->CreateStatus(ORT_FAIL, "ai.parley.BlockOffsetAdd: out of memory");
    const float *xs = x.data;
    for (int64_t i = 0; i < rows * blocks; i++) sums[i] = sum_of(xs + i * kernel->block, kernel->block);
    job.sums = sums;
    const size_t chunks = (size_t)((N + OFFSET_CHUNK - 1) / OFFSET_CHUNK);
    if (rows * N * blocks < (1 << 17)) {  // too little work to be worth waking the pool
        for (size_t c = 0; c < chunks; c++) offset_task(&job, c);
        return NULL;
    }
    return ort->KernelContext_ParallelFor(ctx, offset_task, chunks, 0, &job);
}

/* --- SwiGLU ----------------------------------------------------------------------------------- */
/* Input gate_up [.., 2F] (gate first); output [.., F] = gate·sigmoid(gate)·up. */

static OrtStatus *swiglu_compute(void *state, OrtKernelContext *ctx) {
    (void)state;
    Tensor gate_up;
    CHECK(input(ctx, 0, &gate_up));
    if (gate_up.rank < 1 || gate_up.dims[gate_up.rank - 1] % 2 != 0) return fail("SwiGLU", "last dim must be even (gate then up)");
    int64_t dims[4];
    memcpy(dims, gate_up.dims, sizeof dims);
    const int64_t F = dims[gate_up.rank - 1] / 2, rows = (int64_t)(gate_up.count / (size_t)(2 * F));
    dims[gate_up.rank - 1] = F;
    float *out;
    CHECK(output(ctx, 0, dims, gate_up.rank, (void **)&out));
    const float *in = gate_up.data;
    for (int64_t m = 0; m < rows; m++) {
        const float *gate = in + m * 2 * F;
        swiglu_row(out + m * F, gate, gate + F, F);
    }
    return NULL;
}

/* --- QuantLinear ----------------------------------------------------------------------------- */
/* y = x · Wᵀ for MatMulNBits' 4- or 8-bit weights (block 32, no zero-point input): W[n, k] =
 * scale[n,b]·(u − z) + offset[n,b], u the unsigned code, z = 8 or 128, offset optional (offsets_t [K/32, N],
 * the exact Q4_1 minima). Activations are quantised to int8 per block of 32 exactly as MatMulNBits'
 * accuracy_level 4 does (scale max|x|/127, round to nearest even); the offset term uses the exact fp32
 * block sums, as the stock graph does:
 *     y[m, n] = Σ_b scale[n,b]·dx[m,b]·(Σ_i u_i·qx[m,i] − z·Σ_i qx[m,i]) + offset[n,b]·Σ_i x[m,i].
 * (Centring the codes before the rounding error meets them matters: folding −z·scale into the offset and
 * its exact sums instead doubles the error, KL 0.017 against 0.004 on the eval text.)
 * At kernel creation the constant weights are repacked so that 16 output columns share each vector: per
 * (16-column group, block) one record of codes (256 bytes at 4 bits, 512 at 8), and 16 scales and 16
 * offsets in arrays of their own (fp16 where exact, see compact_if_exact). 4-bit: in chunk q (64 bytes) byte 4c + t holds column c's weight for k = 8q + t in its
 * low nibble and k = 8q + 4 + t in its high nibble. 8-bit: in chunk g byte 4c + t is column c's weight
 * for k = 4g + t. Either way a u8·s8 dot-product instruction (VNNI) multiplies 16 columns by 4
 * activations at once, and the weights are unpacked once for every row of the batch. */

enum { COLUMNS = 16, BLOCK = 32, ROW_CHUNK = 8 };

static inline size_t record_bytes(int bits) { return (size_t)(COLUMNS * BLOCK * bits / 8); }

typedef struct {
    int64_t n, k, groups, blocks, bits;
    uint8_t *codes;  // [groups][blocks][record_bytes(bits)]
    float *scales;   // [groups][blocks][COLUMNS]
    float *offsets;  // [groups][blocks][COLUMNS]; zero without an offsets input
    /* Compact form, used instead of the two above when every value survives it exactly (GGUF's scales
     * and minima are fp16): scale and offset − z·scale as fp16, 32 bytes a record less to stream. */
    int compact;
    uint16_t *scales16, *minima16;
} LinearKernel;

/* Quantised activations, tiled for the kernels: rows go in tiles of ROW_CHUNK, and tile t's block b holds its
 * rows' 32 codes one after another, so one pointer walks a tile's whole input block by block:
 *     entry i = (t·blocks + b)·ROW_CHUNK + r   (row m = t·ROW_CHUNK + r)
 *     qx[32·i .. 32·i + 31]  int8 codes;  dx[i] their scale;  sx[i] the exact fp32 block sum;
 *     zq[i] = −z·Σ codes (int32), the centring of the weights' unsigned codes, exact in integers.
 * A last, partial tile keeps the stride; its missing rows are never read. */
typedef struct {
    const int8_t *qx;
    const float *dx, *sx;
    const int32_t *zq;
} Activations;

typedef struct {
    const LinearKernel *w;
    Activations a;
    float *y;
    int64_t rows;
} LinearJob;

static inline size_t entry(int64_t tile, int64_t blocks) { return (size_t)(tile * blocks * ROW_CHUNK); }

static inline void store_rows(const LinearJob *job, int64_t group, int64_t tile, int r, const float *acc) {
    const LinearKernel *w = job->w;
    const int64_t n0 = group * COLUMNS, width = w->n - n0 < COLUMNS ? w->n - n0 : COLUMNS;
    memcpy(job->y + (tile * ROW_CHUNK + r) * w->n + n0, acc, (size_t)width * sizeof(float));
}

__attribute__((unused)) static void linear_group_portable(const LinearJob *job, int64_t group, int64_t tile, int rows) {
    const LinearKernel *w = job->w;
    float acc[ROW_CHUNK][COLUMNS] = {{0}};
    size_t i = entry(tile, w->blocks);
    for (int64_t b = 0; b < w->blocks; b++, i += ROW_CHUNK) {
        const size_t record = (size_t)(group * w->blocks + b);
        const uint8_t *codes = w->codes + record * record_bytes((int)w->bits);
        const float *scales = w->scales + record * COLUMNS, *offsets = w->offsets + record * COLUMNS;
        for (int r = 0; r < rows; r++) {
            const int8_t *qx = job->a.qx + (i + (size_t)r) * BLOCK;
            for (int c = 0; c < COLUMNS; c++) {
                int32_t dot = job->a.zq[i + (size_t)r];
                for (int t = 0; t < 4; t++) {
                    if (w->bits == 8) {
                        for (int g = 0; g < 8; g++) dot += codes[g * 64 + c * 4 + t] * qx[4 * g + t];
                    } else {
                        for (int q = 0; q < 4; q++) {
                            const uint8_t byte = codes[q * 64 + c * 4 + t];
                            dot += (byte & 15) * qx[8 * q + t] + (byte >> 4) * qx[8 * q + 4 + t];
                        }
                    }
                }
                acc[r][c] += (float)dot * scales[c] * job->a.dx[i + (size_t)r] + offsets[c] * job->a.sx[i + (size_t)r];
            }
        }
    }
    for (int r = 0; r < rows; r++) store_rows(job, group, tile, r, acc[r]);
}

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* Inlined once per (code width, compact or not, row count 1..8) below, so the row loop unrolls and the
 * accumulators and the unpacked weights live in registers. VNNI's dot product runs on one port here, so
 * the float work around it is kept to a convert, a multiply and two FMAs per row and block; the codes'
 * centring rides in the dot product's starting value. */
static inline __attribute__((always_inline)) void linear_group_vnni(const LinearJob *job, int64_t group,
                                                                    int64_t tile, const int rows, const int bits,
                                                                    const int compact) {
    const LinearKernel *w = job->w;
    const __m512i low = _mm512_set1_epi8(15);
    const __m512 zero = _mm512_set1_ps((float)(1 << (bits - 1)));
    __m512 acc[ROW_CHUNK];
#pragma GCC unroll 8
    for (int r = 0; r < ROW_CHUNK; r++) acc[r] = _mm512_setzero_ps();
    const size_t first = (size_t)(group * w->blocks);
    const uint8_t *codes = w->codes + first * record_bytes(bits);
    const size_t i0 = entry(tile, w->blocks);
    const int32_t *qx = (const int32_t *)(job->a.qx + i0 * BLOCK);  // 4 activations a lane
    const float *dx = job->a.dx + i0, *sx = job->a.sx + i0;
    const int32_t *zq = job->a.zq + i0;
    for (int64_t b = 0; b < w->blocks; b++) {
        __m512i u[8];
        if (bits == 8) {
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) u[g] = _mm512_loadu_si512(codes + 64 * g);
        } else {
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                const __m512i packed = _mm512_loadu_si512(codes + 64 * q);
                u[2 * q] = _mm512_and_si512(packed, low);
                u[2 * q + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
            }
        }
        const size_t record = first + (size_t)b;
        __m512 scales, offsets;
        if (compact) {  // offset = minimum + z·scale, exact (checked when the weights were packed)
            scales = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w->scales16 + record * COLUMNS)));
            offsets = _mm512_fmadd_ps(
                scales, zero, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w->minima16 + record * COLUMNS))));
        } else {
            scales = _mm512_loadu_ps(w->scales + record * COLUMNS);
            offsets = _mm512_loadu_ps(w->offsets + record * COLUMNS);
        }
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) {
            // u[g] pairs with activations 4g..4g+3 (see the layout); two chains hide the dot's latency
            __m512i dot0 = _mm512_set1_epi32(zq[r]), dot1 = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int g = 0; g < 8; g += 2) {
                dot0 = _mm512_dpbusd_epi32(dot0, u[g], _mm512_set1_epi32(qx[8 * r + g]));
                dot1 = _mm512_dpbusd_epi32(dot1, u[g + 1], _mm512_set1_epi32(qx[8 * r + g + 1]));
            }
            const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(dot0, dot1)), scales);
            acc[r] = _mm512_fmadd_ps(scaled, _mm512_set1_ps(dx[r]), acc[r]);
            acc[r] = _mm512_fmadd_ps(offsets, _mm512_set1_ps(sx[r]), acc[r]);
        }
        codes += record_bytes(bits);
        qx += ROW_CHUNK * BLOCK / 4;
        dx += ROW_CHUNK;
        sx += ROW_CHUNK;
        zq += ROW_CHUNK;
    }
    const int64_t n0 = group * COLUMNS, width = w->n - n0 < COLUMNS ? w->n - n0 : COLUMNS;
    const __mmask16 mask = (__mmask16)((1u << width) - 1u);
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++) _mm512_mask_storeu_ps(job->y + (tile * ROW_CHUNK + r) * w->n + n0, mask, acc[r]);
}

static void linear_group_fast(const LinearJob *job, int64_t group, int64_t tile, int rows) {
#define PARLEY_ROWS(bits, compact)                                                      \
    switch (rows) {                                                                     \
        case 1: linear_group_vnni(job, group, tile, 1, bits, compact); break;           \
        case 2: linear_group_vnni(job, group, tile, 2, bits, compact); break;           \
        case 3: linear_group_vnni(job, group, tile, 3, bits, compact); break;           \
        case 4: linear_group_vnni(job, group, tile, 4, bits, compact); break;           \
        case 5: linear_group_vnni(job, group, tile, 5, bits, compact); break;           \
        case 6: linear_group_vnni(job, group, tile, 6, bits, compact); break;           \
        case 7: linear_group_vnni(job, group, tile, 7, bits, compact); break;           \
        default: linear_group_vnni(job, group, tile, ROW_CHUNK, bits, compact); break;  \
    }
    const int compact = job->w->compact;
    if (job->w->bits == 8) {
        if (compact) {
            PARLEY_ROWS(8, 1)
        } else {
            PARLEY_ROWS(8, 0)
        }
    } else {
        if (compact) {
            PARLEY_ROWS(4, 1)
        } else {
            PARLEY_ROWS(4, 0)
        }
    }
#undef PARLEY_ROWS
}
#endif

static void linear_task(void *user, size_t group) {
    const LinearJob *job = user;
    for (int64_t tile = 0; tile * ROW_CHUNK < job->rows; tile++) {
        const int rows = (int)(job->rows - tile * ROW_CHUNK < ROW_CHUNK ? job->rows - tile * ROW_CHUNK : ROW_CHUNK);
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
        linear_group_fast(job, (int64_t)group, tile, rows);
#else
        linear_group_portable(job, (int64_t)group, tile, rows);
#endif
    }
}

/* int8 activations per block of 32, as MatMulNBits' accuracy_level 4: scale max|x|/127, round to nearest
 * even; beside them the exact fp32 sum of each block and −z·Σ codes. Rows [first, end) of x [rows, k] into the
 * tiled layout above. */
typedef struct {
    const float *x;
    int64_t rows, blocks, zero;
    int8_t *qx;
    float *dx, *sx;
    int32_t *zq;
} QuantizeJob;

static void quantize_rows(const QuantizeJob *job, int64_t first, int64_t end) {
    for (int64_t m = first; m < end; m++) {
        size_t i = entry(m / ROW_CHUNK, job->blocks) + (size_t)(m % ROW_CHUNK);
        const float *v = job->x + m * job->blocks * BLOCK;
        for (int64_t b = 0; b < job->blocks; b++, i += ROW_CHUNK, v += BLOCK) {
            int8_t *q = job->qx + i * BLOCK;
#if defined(__AVX512F__) && defined(__AVX512BW__)
            /* The same products and rounding as below (cvtps2dq rounds as the current mode, nearest even,
             * as lrintf does); only the order of the fp32 block sum differs. */
            const __m512 lo = _mm512_loadu_ps(v), hi = _mm512_loadu_ps(v + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv));
            const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
            _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(qlo));
            _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtsepi32_epi8(qhi));
            const int32_t codes = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
            const float sum = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
#else
            float amax = 0.0f, sum = 0.0f;
            for (int j = 0; j < BLOCK; j++) {
                const float a = fabsf(v[j]);
                amax = a > amax ? a : amax;
                sum += v[j];
            }
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            int32_t codes = 0;
            for (int j = 0; j < BLOCK; j++) {
                q[j] = (int8_t)lrintf(v[j] * inv);
                codes += q[j];
            }
#endif
            job->dx[i] = amax / 127.0f;
            job->sx[i] = sum;
            job->zq[i] = -(int32_t)job->zero * codes;
        }
    }
}

/* Long inputs (prefill) quantise on every pool thread, this many rows a task. */
enum { QUANTIZE_ROWS = 16 };

static void quantize_task(void *user, size_t chunk) {
    const QuantizeJob *job = user;
    const int64_t first = (int64_t)chunk * QUANTIZE_ROWS;
    quantize_rows(job, first, first + QUANTIZE_ROWS < job->rows ? first + QUANTIZE_ROWS : job->rows);
}

static OrtStatus *linear_compute(void *state, OrtKernelContext *ctx) {
    const LinearKernel *w = state;
    Tensor x;
    CHECK(input(ctx, 0, &x));
    if (x.rank < 1 || x.dims[x.rank - 1] != w->k) return fail("QuantLinear", "x must be [.., K]");
    const int64_t rows = (int64_t)(x.count / (size_t)w->k);
    int64_t dims[4];
    memcpy(dims, x.dims, sizeof dims);
    dims[x.rank - 1] = w->n;
    LinearJob job = {.w = w, .rows = rows};
    CHECK(output(ctx, 0, dims, x.rank, (void **)&job.y));
    if (rows == 0) return NULL;
    // one scratch area for whole tiles: int8 codes, then scales, sums and centrings (4-byte aligned)
    const size_t entries = entry((rows + ROW_CHUNK - 1) / ROW_CHUNK, w->blocks);
    float *area = scratch(entries * (BLOCK / 4 + 3));
    if (area == NULL) return ort->CreateStatus(ORT_FAIL, "ai.parley.QuantLinear: out of memory");
    QuantizeJob quantize = {.x = x.data, .rows = rows, .blocks = w->blocks, .zero = 1 << (w->bits - 1)};
    quantize.qx = (int8_t *)area;
    quantize.dx = area + entries * (BLOCK / 4);
    quantize.sx = quantize.dx + entries;
    quantize.zq = (int32_t *)(quantize.sx + entries);
    if (rows > QUANTIZE_ROWS) {
        CHECK(ort->KernelContext_ParallelFor(ctx, quantize_task, (size_t)((rows + QUANTIZE_ROWS - 1) / QUANTIZE_ROWS),
                                             0, &quantize));
    } else {
        quantize_rows(&quantize, 0, rows);
    }
    job.a = (Activations){quantize.qx, quantize.dx, quantize.sx, quantize.zq};
    return ort->KernelContext_ParallelFor(ctx, linear_task, (size_t)w->groups, 0, &job);
}

static void destroy_linear(void *state) {
    LinearKernel *w = state;
    if (w == NULL) return;
    free(w->codes);
    free(w->scales);
    free(w->offsets);
    free(w->scales16);
    free(w->minima16);
    free(w);
}

static OrtStatus *constant_input(const OrtKernelInfo *info, size_t index, Tensor *t) {
    int constant = 0;
    const OrtValue *value = NULL;
    memset(t, 0, sizeof *t);
    CHECK(ort->KernelInfoGetConstantInput_tensor(info, index, &constant, &value));
    if (!constant || value == NULL) return fail("QuantLinear", "weights, scales and offsets must be initializers");
    CHECK(read_shape(value, t));
    return ort->GetTensorData(value, &t->data);
}

/* Switch `w` to the compact form when it loses nothing: every scale an exact fp16, and every offset
 * recovered bit for bit as fp16(offset − z·scale) + z·scale, the sum the kernel computes. Only the VNNI
 * kernel reads the compact form, so other builds keep fp32. */
static void compact_if_exact(LinearKernel *w) {
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
    const size_t count = (size_t)(w->groups * w->blocks * COLUMNS);
    const float zero = (float)(1 << (w->bits - 1));
    uint16_t *scales16 = aligned_alloc(64, count * sizeof(uint16_t));
    uint16_t *minima16 = aligned_alloc(64, count * sizeof(uint16_t));
    int exact = scales16 != NULL && minima16 != NULL;
    for (size_t i = 0; exact && i < count; i++) {
        const float scale = w->scales[i], offset = w->offsets[i];
        scales16[i] = _cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT);
        minima16[i] = _cvtss_sh(offset - zero * scale, _MM_FROUND_TO_NEAREST_INT);
        const float back = _cvtsh_ss(scales16[i]);
        exact = back == scale && _cvtsh_ss(minima16[i]) + zero * back == offset;
    }
    if (!exact) {
        free(scales16);
        free(minima16);
        return;
    }
    free(w->scales);
    free(w->offsets);
    w->scales = w->offsets = NULL;
    w->scales16 = scales16;
    w->minima16 = minima16;
    w->compact = 1;
#else
    (void)w;
#endif
}

static OrtStatus *create_linear(const OrtKernelInfo *info, void **out) {
    const char *op = "QuantLinear";
    int64_t n = 0, k = 0, bits = 0, block = 0;
    int_attribute(info, "N", 0, &n);
    int_attribute(info, "K", 0, &k);
    int_attribute(info, "bits", 4, &bits);
    int_attribute(info, "block_size", 0, &block);
    if (n <= 0 || k <= 0 || (bits != 4 && bits != 8) || block != BLOCK || k % BLOCK != 0)
        return fail(op, "needs N, K > 0, bits 4 or 8, block_size=32 and K a multiple of 32");
    size_t inputs = 0;
    CHECK(ort->KernelInfo_GetInputCount(info, &inputs));
    Tensor codes, scales, offsets = {0};
    CHECK(constant_input(info, 1, &codes));
    CHECK(constant_input(info, 2, &scales));
    const int64_t blocks = k / BLOCK;
    if (codes.count != (size_t)(n * blocks * BLOCK * bits / 8) || scales.count != (size_t)(n * blocks))
        return fail(op, "codes must be [N, K/32, 32·bits/8] and scales [N, K/32]");
    if (inputs > 3) {
        CHECK(constant_input(info, 3, &offsets));
        if (offsets.count != (size_t)(n * blocks)) return fail(op, "offsets_t must be [K/32, N]");
    }
    LinearKernel *w = calloc(1, sizeof *w);
    if (w == NULL) return ort->CreateStatus(ORT_FAIL, "ai.parley.QuantLinear: out of memory");
    w->n = n;
    w->k = k;
    w->blocks = blocks;
    w->bits = bits;
    w->groups = (n + COLUMNS - 1) / COLUMNS;
    const size_t records = (size_t)(w->groups * blocks);
    const size_t record_size = record_bytes((int)bits);
    w->codes = aligned_alloc(64, records * record_size);
    w->scales = aligned_alloc(64, records * COLUMNS * sizeof(float));
    w->offsets = aligned_alloc(64, records * COLUMNS * sizeof(float));
    if (w->codes == NULL || w->scales == NULL || w->offsets == NULL) {
        destroy_linear(w);
        return ort->CreateStatus(ORT_FAIL, "ai.parley.QuantLinear: out of memory");
    }
    memset(w->codes, 0, records * record_size);  // columns past N: zero weights
    memset(w->scales, 0, records * COLUMNS * sizeof(float));
    memset(w->offsets, 0, records * COLUMNS * sizeof(float));
    const uint8_t *src = codes.data;  // [N][blocks][bytes]; 4-bit: byte i holds elements 2i (low), 2i+1
    const float *src_scales = scales.data, *src_offsets = offsets.data;
    const int64_t src_block = BLOCK * bits / 8;
    for (int64_t col = 0; col < n; col++)
        for (int64_t b = 0; b < blocks; b++) {
            const size_t record = (size_t)((col / COLUMNS) * blocks + b);
            const int c = (int)(col % COLUMNS);
            const uint8_t *block_src = src + (col * blocks + b) * src_block;
            uint8_t *dst = w->codes + record * record_size;
            for (int kk = 0; kk < BLOCK; kk++) {
                if (bits == 8) {
                    dst[(kk / 4) * 64 + c * 4 + kk % 4] = block_src[kk];
                } else {
                    const uint8_t u = (block_src[kk / 2] >> (4 * (kk % 2))) & 15;
                    const int q = kk / 8, t = kk % 4, high = (kk % 8) / 4;
                    dst[q * 64 + c * 4 + t] |= (uint8_t)(u << (4 * high));
                }
            }
            const float scale = src_scales[col * blocks + b];
            w->scales[record * COLUMNS + c] = scale;
            w->offsets[record * COLUMNS + c] = src_offsets ? src_offsets[b * n + col] : 0.0f;
        }
    compact_if_exact(w);
    *out = w;
    return NULL;
}

/* --- SamplingHead ---------------------------------------------------------------------------- */
/* What the sampler needs from each row of logits, so that it rarely reads the row itself
 * (service/sampling/top.py). Inputs: logits [.., V] (R rows), scales [R, 2], and the rows' edits
 * (service/sampling/columns.py TokenEdits): edit_rows [E] (ascending), edit_tokens [E], edit_factors
 * [E, 3] (bias, divisor, subtract); attribute k. Each row is first edited: logit x of an edited token
 * becomes v = x + bias, v / divisor if v > 0 else v · divisor, then v − subtract (float32, rounded at
 * each step as numpy does). The edits are written into the logits and undone before the op returns
 * (edit_row says why), so its logits must be writable and read by nothing else meanwhile: in the decode
 * graph the head is their only consumer. Outputs, of the edited row:
 *   top_ids [R, k] int64, top_logits [R, k]: the row's first k tokens in the order (logit descending, id
 *     ascending), so every other token's logit is at most the last one's; −1 / −inf pad a row with fewer
 *     than k logits above −inf.
 *   masses [R, 2] double: Σ_v e^((x_v − max x)·scales[r, j]) for j = 0, 1 (the softmax normaliser at
 *     temperature 1/scale); 0 where the scale is 0 (not wanted); NaN in both when the row has no finite
 *     maximum (a NaN, a +inf, or nothing above −inf).
 * One row per task (head_task says how). */

enum { HEAD_BUFFER = 1024 };  // tokens buffered before the k best are selected and the threshold raised

typedef struct {
    int64_t k;
} HeadKernel;

typedef struct {
    const float *logits, *scales, *edit_factors;
    const int64_t *edit_rows, *edit_tokens;
    int64_t *ids;
    float *top;
    double *masses;
    int64_t vocab, k, edits;
} HeadJob;

/* The span [*first, *end) of row's entries in the ascending edit_rows. */
static void edit_span(const HeadJob *job, int64_t row, int64_t *first, int64_t *end) {
    int64_t lo = 0, hi = job->edits;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (job->edit_rows[mid] < row) lo = mid + 1;
        else hi = mid;
    }
    *first = *end = lo;
    while (*end < job->edits && job->edit_rows[*end] == row) ++*end;
}

/* Apply entries [first, end) to row x in place, keeping the raw values in `saved` (restore_row undoes it).
 * In place rather than on a copy: a copy of the row costs more than the rest of an edited row's work, and
 * the logits are this op's alone while it runs (it is their only reader; each task touches only its row). */
static void edit_row(const HeadJob *job, float *x, int64_t first, int64_t end, float *saved) {
    for (int64_t e = first; e < end; e++) saved[e - first] = x[job->edit_tokens[e]];
    for (int64_t e = first; e < end; e++) {
        const float *f = job->edit_factors + 3 * e;
        const float biased = saved[e - first] + f[0];
        volatile float scaled = biased > 0.0f ? biased / f[1] : biased * f[1];  // volatile: no fused a·b − c
        x[job->edit_tokens[e]] = scaled - f[2];
    }
}

static void restore_row(const HeadJob *job, float *x, int64_t first, int64_t end, const float *saved) {
    for (int64_t e = end - 1; e >= first; e--) x[job->edit_tokens[e]] = saved[e - first];
}

/* The k-th largest of values[0, n) (1 ≤ k ≤ n, no NaN): quickselect on a copy in `work`. */
static float kth_largest(const float *values, int64_t n, int64_t k, float *work) {
    memcpy(work, values, (size_t)n * sizeof(float));
    int64_t lo = 0, hi = n - 1;
    const int64_t target = k - 1;  // index in descending order
    while (lo < hi) {
        const float pivot = work[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {  // afterwards [lo, j] >= pivot >= [i, hi], and anything between equals pivot
            while (work[i] > pivot) i++;
            while (work[j] < pivot) j--;
            if (i <= j) {
                const float t = work[i];
                work[i++] = work[j];
                work[j--] = t;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break;
    }
    return work[target];
}

/* Keep the k best of n > k buffered candidates, whose ids ascend: those above the k-th value, then the
 * lowest ids among its ties. The order (and so the ascending ids) is kept; returns the k-th value. */
static float keep_best(float *values, int32_t *ids, int64_t n, int64_t k, float *work) {
    const float kth = kth_largest(values, n, k, work);
    int64_t above = 0;
    for (int64_t i = 0; i < n; i++) above += values[i] > kth;
    int64_t ties = k - above, kept = 0;
    for (int64_t i = 0; i < n; i++) {
        if (values[i] > kth || (values[i] == kth && ties-- > 0)) {
            values[kept] = values[i];
            ids[kept++] = ids[i];
        }
    }
    return kth;
}

/* The running selection of a row's k best tokens: a buffer of the tokens above `threshold` (ids ascending,
 * as they are scanned), cut back to the k best whenever it fills. */
typedef struct {
    float *values, *work;
    int32_t *ids;
    int64_t n, k;
    float threshold;  // strict: a later token tied with the k-th best ranks after it
} Selection;

static inline void buffer_token(Selection *s, float value, int64_t id) {
    s->values[s->n] = value;
    s->ids[s->n++] = (int32_t)id;
    if (s->n == HEAD_BUFFER) {
        s->threshold = keep_best(s->values, s->ids, s->n, s->k, s->work);
        s->n = s->k;
    }
}

/* Buffer the tokens of x[start, end) above the threshold. */
static void select_above(Selection *s, const float *x, int64_t start, int64_t end) {
    int64_t i = start;
#if defined(__AVX512F__)
    __m512 level = _mm512_set1_ps(s->threshold);
    __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int32_t)start),
                                     _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (; i + 16 <= end; i += 16, index = _mm512_add_epi32(index, _mm512_set1_epi32(16))) {
        const __m512 v = _mm512_loadu_ps(x + i);
        const __mmask16 above = _mm512_cmp_ps_mask(v, level, _CMP_GT_OQ);
        if (above == 0) continue;
        _mm512_mask_compressstoreu_ps(s->values + s->n, above, v);
        _mm512_mask_compressstoreu_epi32(s->ids + s->n, above, index);
        s->n += __builtin_popcount(above);
        if (s->n > HEAD_BUFFER - 16) {
            s->threshold = keep_best(s->values, s->ids, s->n, s->k, s->work);
            s->n = s->k;
            level = _mm512_set1_ps(s->threshold);
        }
    }
#endif
    for (; i < end; i++)
        if (x[i] > s->threshold) buffer_token(s, x[i], i);
}

/* Σ e^((x − top)·scale) over a short block, x ≤ top, as Σ 2^t with t = (x − top)·scale·log2(e): t = n + f,
 * |f| ≤ 1/2, 2^f by its degree-6 Taylor series in f·ln2 (relative error ~1e-7, below the rounding of t
 * itself), 2^n by scalef. Two-thirds of exp16's work: no upper clamp, no Cody-Waite split. */
#if defined(__AVX512F__)
static const float EXP2_TAYLOR[7] = {1.0f, 6.93147181e-1f, 2.40226507e-1f, 5.55041087e-2f,
                                     9.61812911e-3f, 1.33335581e-3f, 1.54035304e-4f};
#endif

static float exp_sum(const float *x, int64_t n, float top, float scale) {
    double total = 0.0;
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 top16 = _mm512_set1_ps(top), scale16 = _mm512_set1_ps(scale * EXP_LOG2E);
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 t = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), top16), scale16),
                                       _mm512_set1_ps(-126.0f));  // -inf logits weigh 2^-126, not NaN
        const __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512 f = _mm512_sub_ps(t, whole);
        __m512 p = _mm512_set1_ps(EXP2_TAYLOR[6]);
        for (int c = 5; c >= 0; c--) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_TAYLOR[c]));
        const __m512 e = _mm512_scalef_ps(p, whole);
        acc = _mm512_add_ps(acc, e);
    }
    total = _mm512_reduce_add_ps(acc);
#endif
    for (; i < n; i++) total += expf((x[i] - top) * scale);
    return (float)total;
}

/* A block's maximum and, relative to it, Σ e^((x − max)·scale) for each wanted scale (0: not wanted; a
 * second scale equal to the first is not summed twice). Sets *bad on a NaN or +inf. */
typedef struct {
    float max, sums[2];
} BlockStats;

static BlockStats block_stats(const float *x, int64_t n, const float *scales, int *bad) {
    BlockStats st = {.max = -INFINITY};
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 inf = _mm512_set1_ps(INFINITY);
    __m512 acc0 = _mm512_set1_ps(-INFINITY), acc1 = acc0;  // two chains: a max waits for the previous one
    __mmask16 unusable = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
        unusable |= _mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v0, inf, _CMP_EQ_OQ) |
                    _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v1, inf, _CMP_EQ_OQ);
        acc0 = _mm512_max_ps(acc0, v0);
        acc1 = _mm512_max_ps(acc1, v1);
    }
    st.max = _mm512_reduce_max_ps(_mm512_max_ps(acc0, acc1));
    if (unusable) *bad = 1;
#endif
    for (; i < n; i++) {
        if (isnan(x[i]) || x[i] == INFINITY) *bad = 1;
        if (x[i] > st.max) st.max = x[i];
    }
    if (*bad || st.max == -INFINITY) return st;  // nothing to sum (or a row that fails anyway)
    for (int j = 0; j < 2; j++)
        if (scales[j] > 0.0f && !(j == 1 && scales[1] == scales[0])) st.sums[j] = exp_sum(x, n, st.max, scales[j]);
    return st;
}

/* Three short passes per row, each over data in L1: blocks' maxima and exponential sums (the row is read
 * from memory once), the k-th largest block maximum as the first threshold (at least k tokens reach it,
 * one per block, and in practice few more), then a scan of the blocks whose maximum reaches it. */
static void head_task(void *user, size_t row) {
    const HeadJob *job = user;
    const int64_t V = job->vocab, k = job->k;
    const float *x = job->logits + (int64_t)row * V, *scales = job->scales + 2 * row;
    int64_t *out_ids = job->ids + (int64_t)row * k;
    float *out_top = job->top + (int64_t)row * k;
    double *masses = job->masses + 2 * row;
    int64_t first, end;
    edit_span(job, (int64_t)row, &first, &end);
    // values, ids (int32 in float storage), work, block data; then the raw values of the edited tokens
    float *buffer = scratch(4 * HEAD_BUFFER + (size_t)(end - first));
    if (buffer == NULL) {  // out of memory: report the row as unusable rather than guess
        masses[0] = masses[1] = NAN;
        for (int64_t j = 0; j < k; j++) out_ids[j] = -1, out_top[j] = -INFINITY;
        return;
    }
    float *saved = buffer + 4 * HEAD_BUFFER;
    edit_row(job, (float *)x, first, end, saved);
    Selection sel = {.values = buffer, .ids = (int32_t *)(buffer + HEAD_BUFFER), .work = buffer + 2 * HEAD_BUFFER,
                     .k = k, .threshold = -INFINITY};
    float *maxima = buffer + 3 * HEAD_BUFFER, *sums = sel.values;  // 2k ≤ HEAD_BUFFER / 2 blocks
    const int64_t width = V / (2 * k) / 16 * 16, blocks = width > 0 ? 2 * k : 0, covered = blocks * width;

    int bad = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const BlockStats st = block_stats(x + b * width, width, scales, &bad);
        maxima[b] = st.max;
        sums[2 * b] = st.sums[0];
        sums[2 * b + 1] = st.sums[1];
    }
    const BlockStats rest = block_stats(x + covered, V - covered, scales, &bad);
    float top = rest.max;
    for (int64_t b = 0; b < blocks; b++) top = maxima[b] > top ? maxima[b] : top;
    if (bad || top == -INFINITY) {
        masses[0] = masses[1] = NAN;
    } else {
        for (int j = 0; j < 2; j++) {
            const double scale = scales[j];
            masses[j] = 0.0;
            if (scale <= 0.0 || (j == 1 && scales[1] == scales[0])) continue;
            masses[j] = rest.max > -INFINITY ? exp((double)(rest.max - top) * scale) * rest.sums[j] : 0.0;
            for (int64_t b = 0; b < blocks; b++)
                if (maxima[b] > -INFINITY) masses[j] += exp((double)(maxima[b] - top) * scale) * sums[2 * b + j];
        }
        if (scales[1] == scales[0]) masses[1] = masses[0];
    }

    if (blocks > 0) sel.threshold = nextafterf(kth_largest(maxima, blocks, k, sel.work), -INFINITY);  // > is >=
    for (int64_t b = 0; b < blocks; b++)
        if (maxima[b] > sel.threshold) select_above(&sel, x, b * width, (b + 1) * width);
    select_above(&sel, x, covered, V);
    int64_t n = sel.n;
    if (n > k) {
        keep_best(sel.values, sel.ids, n, k, sel.work);
        n = k;
    }
    float *values = sel.values;
    int32_t *ids = sel.ids;
    for (int64_t a = 1; a < n; a++) {  // insertion sort, descending; stable, so tied ids stay ascending
        const float v = values[a];
        const int32_t id = ids[a];
        int64_t b = a;
        for (; b > 0 && values[b - 1] < v; b--) values[b] = values[b - 1], ids[b] = ids[b - 1];
        values[b] = v;
        ids[b] = id;
    }
    for (int64_t j = 0; j < k; j++) {
        out_ids[j] = j < n ? ids[j] : -1;
        out_top[j] = j < n ? values[j] : -INFINITY;
    }
    restore_row(job, (float *)x, first, end, saved);
}

static OrtStatus *head_compute(void *state, OrtKernelContext *ctx) {
    const HeadKernel *kernel = state;
    Tensor logits, scales, edit_rows, edit_tokens, edit_factors;
    CHECK(input(ctx, 0, &logits));
    CHECK(input(ctx, 1, &scales));
    CHECK(input(ctx, 2, &edit_rows));
    CHECK(input(ctx, 3, &edit_tokens));
    CHECK(input(ctx, 4, &edit_factors));
    const char *op = "SamplingHead";
    if (logits.rank < 1 || logits.dims[logits.rank - 1] < kernel->k) return fail(op, "logits must be [.., V] with V >= k");
    const int64_t V = logits.dims[logits.rank - 1], rows = (int64_t)(logits.count / (size_t)V);
    if (scales.rank != 2 || scales.dims[0] != rows || scales.dims[1] != 2) return fail(op, "scales must be [rows of logits, 2]");
    const int64_t E = (int64_t)edit_rows.count;
    if (edit_rows.rank != 1 || edit_tokens.rank != 1 || (int64_t)edit_tokens.count != E || edit_factors.rank != 2 ||
        edit_factors.dims[0] != E || edit_factors.dims[1] != 3)
        return fail(op, "edits must be edit_rows [E], edit_tokens [E] and edit_factors [E, 3]");
    const int64_t *erows = edit_rows.data, *etokens = edit_tokens.data;
    for (int64_t e = 0; e < E; e++) {
        if (erows[e] < 0 || erows[e] >= rows || (e > 0 && erows[e] < erows[e - 1]))
            return fail(op, "edit_rows must ascend and lie in [0, rows of logits)");
        if (etokens[e] < 0 || etokens[e] >= V) return fail(op, "edit_tokens must lie in [0, V)");
    }
    HeadJob job = {.logits = logits.data, .scales = scales.data, .vocab = V, .k = kernel->k, .edits = E,
                   .edit_rows = erows, .edit_tokens = etokens, .edit_factors = edit_factors.data};
    const int64_t top_dims[2] = {rows, kernel->k}, mass_dims[2] = {rows, 2};
    CHECK(output(ctx, 0, top_dims, 2, (void **)&job.ids));
    CHECK(output(ctx, 1, top_dims, 2, (void **)&job.top));
    CHECK(output(ctx, 2, mass_dims, 2, (void **)&job.masses));
    if (rows == 1) {
        head_task(&job, 0);
        return NULL;
    }
    return ort->KernelContext_ParallelFor(ctx, head_task, (size_t)rows, 0, &job);
}

/* --- registration ----------------------------------------------------------------------------- */

typedef struct {
    OrtCustomOp base;  // first: ORT passes &base back to every callback
    const char *name;
    size_t inputs, outputs;
    const ONNXTensorElementDataType *input_types;
    const ONNXTensorElementDataType *output_types;  // NULL: all float
    OrtStatusPtr (*compute)(void *, OrtKernelContext *);
    OrtStatusPtr (*create)(const OrtKernelInfo *, void **);
    void (*destroy)(void *);     // NULL: free()
    size_t required_inputs;      // inputs past this count are optional (0: all required)
} ParleyOp;

static OrtStatus *create_attention(const OrtKernelInfo *info, void **out) {
    AttentionKernel *k = calloc(1, sizeof *k);
    if (k == NULL) return ort->CreateStatus(ORT_FAIL, "ai.parley.DecodeAttention: out of memory");
    int64_t interleaved = 0;
    int_attribute(info, "num_heads", 0, &k->heads);
    int_attribute(info, "kv_num_heads", 0, &k->kv_heads);
    int_attribute(info, "rotary_interleaved", 1, &interleaved);
    if (k->heads <= 0 || k->kv_heads <= 0 || k->heads % k->kv_heads != 0 || interleaved != 1) {
        free(k);
        return fail("DecodeAttention", "needs num_heads a positive multiple of kv_num_heads and rotary_interleaved=1");
    }
    *out = k;
    return NULL;
}

static OrtStatus *create_offset(const OrtKernelInfo *info, void **out) {
    OffsetKernel *k = calloc(1, sizeof *k);
    if (k == NULL) return ort->CreateStatus(ORT_FAIL, "ai.parley.BlockOffsetAdd: out of memory");
    int_attribute(info, "block_size", 0, &k->block);
    if (k->block <= 0) {
        free(k);
        return fail("BlockOffsetAdd", "block_size must be positive");
    }
    *out = k;
    return NULL;
}

static OrtStatus *create_head(const OrtKernelInfo *info, void **out) {
    HeadKernel *k = calloc(1, sizeof *k);
    if (k == NULL) return ort->CreateStatus(ORT_FAIL, "ai.parley.SamplingHead: out of memory");
    int_attribute(info, "k", 64, &k->k);
    if (k->k <= 0 || k->k > HEAD_BUFFER / 4) {
        free(k);
        return fail("SamplingHead", "k must be in [1, 256]");
    }
    *out = k;
    return NULL;
}

static OrtStatus *create_stateless(const OrtKernelInfo *info, void **out) {
    (void)info;
    *out = calloc(1, 1);
    return *out == NULL ? ort->CreateStatus(ORT_FAIL, "ai.parley: out of memory") : NULL;
}

static const char *op_name(const OrtCustomOp *op) { return ((const ParleyOp *)op)->name; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static size_t op_input_count(const OrtCustomOp *op) { return ((const ParleyOp *)op)->inputs; }
static size_t op_output_count(const OrtCustomOp *op) { return ((const ParleyOp *)op)->outputs; }
static ONNXTensorElementDataType op_input_type(const OrtCustomOp *op, size_t i) {
    return ((const ParleyOp *)op)->input_types[i];
}
static ONNXTensorElementDataType op_output_type(const OrtCustomOp *op, size_t i) {
    const ONNXTensorElementDataType *types = ((const ParleyOp *)op)->output_types;
    return types != NULL ? types[i] : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static OrtCustomOpInputOutputCharacteristic op_input_kind(const OrtCustomOp *op, size_t i) {
    const size_t required = ((const ParleyOp *)op)->required_inputs;
    return required != 0 && i >= required ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
static OrtCustomOpInputOutputCharacteristic op_required(const OrtCustomOp *op, size_t i) {
    (void)op; (void)i;
    return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType op_memory(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return OrtMemTypeDefault; }
static int op_start_version(const OrtCustomOp *op) { (void)op; return 1; }
static int op_end_version(const OrtCustomOp *op) { (void)op; return 1 << 30; }

/* ORT hands compute only the kernel pointer, so each kernel remembers its op beside its state. */
typedef struct {
    const ParleyOp *op;
    void *state;
} Kernel;

static OrtStatusPtr kernel_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)api;
    Kernel *k = calloc(1, sizeof *k);
    if (k == NULL) return ort->CreateStatus(ORT_FAIL, "ai.parley: out of memory");
    k->op = (const ParleyOp *)op;
    OrtStatus *status = k->op->create(info, &k->state);
    if (status != NULL) {
        free(k);
        return status;
    }
    *out = k;
    return NULL;
}
static OrtStatusPtr kernel_compute(void *kernel, OrtKernelContext *ctx) {
    Kernel *k = kernel;
    return k->op->compute(k->state, ctx);
}
static void kernel_destroy(void *kernel) {
    Kernel *k = kernel;
    if (k == NULL) return;
    if (k->op->destroy != NULL) k->op->destroy(k->state);
    else free(k->state);
    free(k);
}

static const ONNXTensorElementDataType ATTENTION_INPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};
static const ONNXTensorElementDataType ATTENTION_OUTPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
};
static const ONNXTensorElementDataType FLOAT_INPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};

static const ONNXTensorElementDataType LINEAR_INPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};

static const ONNXTensorElementDataType HEAD_INPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};
static const ONNXTensorElementDataType HEAD_OUTPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
};

static ParleyOp OPS[] = {
    {.name = "DecodeAttention", .inputs = 7, .outputs = 3, .input_types = ATTENTION_INPUTS,
     .output_types = ATTENTION_OUTPUTS, .compute = attention_compute, .create = create_attention},
    {.name = "BlockOffsetAdd", .inputs = 3, .outputs = 1, .input_types = FLOAT_INPUTS,
     .compute = offset_compute, .create = create_offset},
    {.name = "SwiGLU", .inputs = 1, .outputs = 1, .input_types = FLOAT_INPUTS,
     .compute = swiglu_compute, .create = create_stateless},
    {.name = "QuantLinear", .inputs = 4, .outputs = 1, .input_types = LINEAR_INPUTS, .compute = linear_compute,
     .create = create_linear, .destroy = destroy_linear, .required_inputs = 3},
    {.name = "SamplingHead", .inputs = 5, .outputs = 3, .input_types = HEAD_INPUTS, .output_types = HEAD_OUTPUTS,
     .compute = head_compute, .create = create_head},
};

static void fill(ParleyOp *op) {
    OrtCustomOp *base = &op->base;
    base->version = ORT_API_VERSION;
    base->GetName = op_name;
    base->GetExecutionProviderType = op_provider;
    base->GetInputType = op_input_type;
    base->GetInputTypeCount = op_input_count;
    base->GetOutputType = op_output_type;
    base->GetOutputTypeCount = op_output_count;
    base->GetInputCharacteristic = op_input_kind;
    base->GetOutputCharacteristic = op_required;
    base->GetInputMemoryType = op_memory;
    base->CreateKernelV2 = kernel_create;
    base->KernelComputeV2 = kernel_compute;
    base->KernelDestroy = kernel_destroy;
    base->GetStartVersion = op_start_version;
    base->GetEndVersion = op_end_version;
}

/* Whether QuantLinear has its vector kernel in this build (its plain-C path is slower than ONNX Runtime's
 * MatMulNBits, so fusion.py uses it only when this says 1). */
__attribute__((visibility("default"))) int ParleyFastQuantLinear(void) {
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
    return 1;
#else
    return 0;
#endif
}

__attribute__((visibility("default"))) OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    ort = base->GetApi(ORT_API_VERSION);
    if (ort == NULL) return NULL;  // an older runtime than the header: ORT reports the failed registration
    static int filled = 0;  // once: a running session of an earlier registration reads these tables
    if (!filled) {
        for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++) fill(&OPS[i]);
        filled = 1;
    }
    OrtCustomOpDomain *domain = NULL;  // owned by ORT's sessions from here on; never released
    CHECK(ort->CreateCustomOpDomain("ai.parley", &domain));
    for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++) CHECK(ort->CustomOpDomain_Add(domain, &OPS[i].base));
    return ort->AddCustomOpDomain(options, domain);
}
