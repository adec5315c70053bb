/*
 * Parley's ONNX Runtime custom ops for the CPU decode graph (domain "ai.parley").
 *
 * ORT 1.31's CPU kernels spend much of a small-batch decode step on per-op overhead rather than on
 * arithmetic: GroupQueryAttention's decode path re-reads each KV head once per query head, and the exact
 * Q4_1 offset term costs four tiny ops per linear layer. These kernels replace those patterns with one op
 * each (service/engine/kernels/fusion.py rewrites the graph); the numbers behind them are in DESIGN.md §5.
 *
 *   DecodeAttention  GroupQueryAttention with interleaved rotary and K/V written in place
 *   BlockOffsetAdd   y + blocksum(x) · offsetsᵀ   (the Q4_1 minima, exact in fp32)
 *   SwiGLU           silu(gate) · up over a packed [.., 2F] gate/up tensor
 *
 * fp32 only: the CPU graph's dtype. Built by service/engine/kernels/build.py against ORT's C API.
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

static OrtStatus *output(OrtKernelContext *ctx, size_t index, const int64_t *dims, size_t rank, float **data) {
    OrtValue *value = NULL;
    CHECK(ort->KernelContext_GetOutput(ctx, index, dims, rank, &value));
    return ort->GetTensorMutableData(value, (void **)data);
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

/* e^x for 8 lanes: x = n·ln2 + r, e^r by a degree-6 polynomial, 2^n through the exponent bits.
 * Relative error about 2e-7 over the clamped range (the classic single-precision expansion). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}
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
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 vs = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum(acc);
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
/* Inputs: qkv [B, S, (H + 2G)·D], past_key/past_value [B, G, C, D], seqlens_k [B] (tokens after this
 * run − 1, per row), total_sequence_length [] (unused: each row's own length governs), cos/sin caches
 * [P, D/2]. Outputs: attention [B, S, H·D], present_key/present_value [B, G, C, D]. When a present
 * output is bound to its past input's memory (the engine always binds them so) only the S new rows are
 * written; otherwise the past rows are copied first. Each of the R = H/G query heads of a KV head reads
 * that head's keys and values in one shared pass. */

typedef struct {
    int64_t heads, kv_heads;
} AttentionKernel;

typedef struct {
    const float *qkv, *past_k, *past_v, *cos, *sin;
    const int32_t *seqlens;
    float *out, *present_k, *present_v;
    int64_t batch, seq, heads, kv_heads, capacity, head_dim, positions;
    float scale;
    int failed;
} AttentionJob;

static void rotate_interleaved(float *dst, const float *src, const float *cos, const float *sin, int64_t d) {
    for (int64_t i = 0; i < d / 2; i++) {
        float x = src[2 * i], y = src[2 * i + 1];
        dst[2 * i] = x * cos[i] - y * sin[i];
        dst[2 * i + 1] = x * sin[i] + y * cos[i];
    }
}

static void attention_task(void *user, size_t task) {
    AttentionJob *job = user;
    const int64_t b = (int64_t)task / job->kv_heads, g = (int64_t)task % job->kv_heads;
    const int64_t D = job->head_dim, S = job->seq, C = job->capacity, R = job->heads / job->kv_heads;
    const int64_t width = (job->heads + 2 * job->kv_heads) * D;
    const int64_t total = (int64_t)job->seqlens[b] + 1, past = total - S;
    if (past < 0 || total > C || total > job->positions) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);  // reported by the caller; other rows complete
        return;
    }
    const size_t plane = (size_t)(b * job->kv_heads + g) * (size_t)(C * D);
    float *keys = job->present_k + plane, *values = job->present_v + plane;
    if (job->present_k != job->past_k) memcpy(keys, job->past_k + plane, (size_t)(past * D) * sizeof(float));
    if (job->present_v != job->past_v) memcpy(values, job->past_v + plane, (size_t)(past * D) * sizeof(float));

    const float *row0 = job->qkv + (size_t)(b * S) * (size_t)width;
    for (int64_t s = 0; s < S; s++) {  // append the new keys (rotated) and values
        const float *row = row0 + s * width;
        const int64_t pos = past + s;
        rotate_interleaved(keys + pos * D, row + (job->heads + g) * D, job->cos + pos * (D / 2),
                           job->sin + pos * (D / 2), D);
        memcpy(values + pos * D, row + (job->heads + job->kv_heads + g) * D, (size_t)D * sizeof(float));
    }

    float *work = scratch((size_t)(R * (D + total)));
    if (work == NULL) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *queries = work, *scores = work + R * D;  // [R, D] then [R, total]
    for (int64_t s = 0; s < S; s++) {
        const float *row = row0 + s * width;
        const int64_t pos = past + s, visible = pos + 1;  // causal: keys 0..pos
        for (int64_t r = 0; r < R; r++)
            rotate_interleaved(queries + r * D, row + (g * R + r) * D, job->cos + pos * (D / 2),
                               job->sin + pos * (D / 2), D);
        for (int64_t t = 0; t < visible; t++) {
            const float *key = keys + t * D;
            for (int64_t r = 0; r < R; r++) scores[r * total + t] = dot(queries + r * D, key, D) * job->scale;
        }
        for (int64_t r = 0; r < R; r++) {
            float *p = scores + r * total, top = p[0];
            for (int64_t t = 1; t < visible; t++) top = p[t] > top ? p[t] : top;
            const float inv = 1.0f / exp_shifted(p, top, visible);
            for (int64_t t = 0; t < visible; t++) p[t] *= inv;
        }
        float *out = job->out + (size_t)(b * S + s) * (size_t)(job->heads * D) + g * R * D;
        memset(out, 0, (size_t)(R * D) * sizeof(float));
        for (int64_t t = 0; t < visible; t++)
            for (int64_t r = 0; r < R; r++) axpy(out + r * D, scores[r * total + t], values + t * D, D);
    }
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
    CHECK(output(ctx, 0, out_dims, 3, &job.out));
    CHECK(output(ctx, 1, pk.dims, 4, &job.present_k));
    CHECK(output(ctx, 2, pv.dims, 4, &job.present_v));
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
    CHECK(output(ctx, 0, y.dims, y.rank, &job.out));
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
    CHECK(output(ctx, 0, dims, gate_up.rank, &out));
    const float *in = gate_up.data;
    for (int64_t m = 0; m < rows; m++) {
        const float *gate = in + m * 2 * F;
        swiglu_row(out + m * F, gate, gate + F, F);
    }
    return NULL;
}

/* --- registration ----------------------------------------------------------------------------- */

typedef struct {
    OrtCustomOp base;  // first: ORT passes &base back to every callback
    const char *name;
    size_t inputs, outputs;
    const ONNXTensorElementDataType *input_types;
    OrtStatusPtr (*compute)(void *, OrtKernelContext *);
    OrtStatusPtr (*create)(const OrtKernelInfo *, void **);
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
    (void)op; (void)i;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
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
    if (k != NULL) free(k->state);
    free(k);
}

static const ONNXTensorElementDataType ATTENTION_INPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};
static const ONNXTensorElementDataType FLOAT_INPUTS[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
};

static ParleyOp OPS[] = {
    {.name = "DecodeAttention", .inputs = 7, .outputs = 3, .input_types = ATTENTION_INPUTS,
     .compute = attention_compute, .create = create_attention},
    {.name = "BlockOffsetAdd", .inputs = 3, .outputs = 1, .input_types = FLOAT_INPUTS,
     .compute = offset_compute, .create = create_offset},
    {.name = "SwiGLU", .inputs = 1, .outputs = 1, .input_types = FLOAT_INPUTS,
     .compute = swiglu_compute, .create = create_stateless},
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
    base->GetInputCharacteristic = op_required;
    base->GetOutputCharacteristic = op_required;
    base->GetInputMemoryType = op_memory;
    base->CreateKernelV2 = kernel_create;
    base->KernelComputeV2 = kernel_compute;
    base->KernelDestroy = kernel_destroy;
    base->GetStartVersion = op_start_version;
    base->GetEndVersion = op_end_version;
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
