/* The host sampler's vocabulary-wide work in one native pass (nucleus.py is the reference and the
 * fallback where this extension did not build).
 *
 * For a logits row: the largest logit; then, block by block while the block is in the L1 cache,
 * the weights exp(logit - largest) and a histogram of them by their float bit pattern (for a
 * positive float the bit pattern is monotone in the value, so a bucket is a range of weights: 6
 * mantissa bits, 1.1% wide), summed in double. Walking the buckets from the heaviest down finds the
 * one the top-p nucleus ends in; only that bucket's few hundred weights are sorted. The draw walks
 * the row once more, adding up kept weights until a uniform number's share is reached (any order
 * of the nucleus gives the same distribution). No vocabulary-sized sort, no allocation but the
 * boundary bucket's.
 *
 * The semantics are nucleus.py's: top-p and min-p are decided on the temperature-1 probabilities,
 * the temperature reshapes the probabilities inside the kept set; of tokens tied exactly at the
 * end, as many are kept as the nucleus needs, lowest ids first. exp() is a polynomial with a
 * relative error of a few float32 ulps (as numpy's vectorized exp), written so compilers vectorize
 * it; every sum is double.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3", "no-trapping-math")   /* lets the clamp in exp_nonpositive vectorize */
#endif

/* The vocabulary-wide loops get an AVX2 clone, picked at load time where the CPU has it (GCC and
 * clang on x86-64 ELF, through ifunc); elsewhere the portable build's own vectorization. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__)
#define WIDE __attribute__((target_clones("avx2", "default")))
#else
#define WIDE
#endif

#define BLOCK 256
#define SHIFT 17                       /* bits below the histogram's: 23 - 17 = 6 mantissa bits */
#define BUCKETS (1 << (31 - SHIFT))    /* positive floats only: the sign bit is always 0 */
#define LOWEST (-80.0f)                /* weights below e^-80 cannot matter and would be denormal */

static inline uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* exp(x) for x in [LOWEST, 0]: round x / ln 2 to n, a degree-6 polynomial for exp of the rest
 * (|r| <= ln2 / 2), 2^n put into the exponent bits. Branch-free so the block loop vectorizes. */
static inline float exp_nonpositive(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f;   /* 1.5 * 2^23: adding it rounds to an integer */
    x = x < LOWEST ? LOWEST : x;
    float n = (x * log2e + round_magic) - round_magic;
    float r = x - n * ln2_hi - n * ln2_lo;
    float p = 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t) n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

typedef struct {
    float weight;
    int32_t id;
} Entry;

static int heavier_first(const void *a, const void *b) {
    const Entry *x = a, *y = b;
    if (x->weight != y->weight) return x->weight > y->weight ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);   /* ties: lowest id first, as a stable sort */
}

/* The kept set: every weight >= cut, except those equal to it with a larger id than tie_limit (of
 * weights tied exactly at the nucleus' end, only as many as it needs are kept, lowest ids first);
 * ``dropped`` lists those left out (ascending ids, malloc'd; usually none). */
typedef struct {
    float cut;
    int64_t tie_limit;
    int32_t *dropped;
    uint32_t n_dropped;
} Nucleus;

static inline int is_kept(const Nucleus *nu, float w, Py_ssize_t i) {
    return w > nu->cut || (w == nu->cut && i <= nu->tie_limit);
}

static void keep_all_at_or_above(Nucleus *nu, float cut) {
    free(nu->dropped);
    nu->dropped = NULL;
    nu->n_dropped = 0;
    nu->cut = cut;
    nu->tie_limit = INT64_MAX;
}

WIDE static float largest(const float *logits, Py_ssize_t n) {
    float m[8];
    Py_ssize_t i = 0;
    for (int j = 0; j < 8; j++) m[j] = -3.402823466e38f;   /* not logits[0]: it may be NaN */
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) m[j] = logits[i + j] > m[j] ? logits[i + j] : m[j];
    for (; i < n; i++) m[0] = logits[i] > m[0] ? logits[i] : m[0];
    float top = m[0];
    for (int j = 1; j < 8; j++) top = m[j] > top ? m[j] : top;
    return top;
}

/* The sum of a block, in 8 lanes so that it vectorizes without reassociation flags. */
static inline double block_sum(const float *w, Py_ssize_t len) {
    float lanes[8] = {0};
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int j = 0; j < 8; j++) lanes[j] += w[i + j];
    double sum = 0.0;
    for (int j = 0; j < 8; j++) sum += lanes[j];
    for (; i < len; i++) sum += w[i];
    return sum;
}

/* Fills w with exp(x - top) and returns their sum. A NaN logit (a broken model's) weighs 0: it is
 * never drawn, and its bit pattern never indexes the histogram. */
WIDE static double exp_block(const float *x, float *w, Py_ssize_t len, float top) {
    if (len == BLOCK) {
        for (int i = 0; i < BLOCK; i++) {
            float e = exp_nonpositive(x[i] - top);
            w[i] = e == e ? e : 0.0f;
        }
    } else {
        for (Py_ssize_t i = 0; i < len; i++) {
            float e = exp_nonpositive(x[i] - top);
            w[i] = e == e ? e : 0.0f;
        }
    }
    return block_sum(w, len);
}

/* The largest of a block's weights, found in 8 vectorized lanes. */
static inline float block_max(const float *w, Py_ssize_t len) {
    float lanes[8] = {0};
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int j = 0; j < 8; j++) lanes[j] = w[i + j] > lanes[j] ? w[i + j] : lanes[j];
    for (; i < len; i++) lanes[0] = w[i] > lanes[0] ? w[i] : lanes[0];
    float heaviest = lanes[0];
    for (int j = 1; j < 8; j++) heaviest = lanes[j] > heaviest ? lanes[j] : heaviest;
    return heaviest;
}

/* Adds the weights at or above ``floor`` to the histogram. A weight far below the top one is left
 * out: on a peaked row nearly all are, and thousands of adds to one bucket would wait on each other.
 * A block whose largest weight (``heaviest``) is below the floor is skipped whole. */
static void histogram(const float *w, Py_ssize_t len, float floor, float heaviest, double *sums) {
    if (heaviest < floor) return;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (!(w[i] >= floor)) continue;
        uint32_t b = float_bits(w[i]) >> SHIFT;
        sums[b] += w[i];
    }
}

/* Fills ``weights`` with exp(logit - top) and finds the nucleus; -1 when out of memory. */
static int find_nucleus(const float *logits, float *weights, Py_ssize_t n, double top_p, double min_p,
                        Nucleus *out) {
    const float top = largest(logits, n);
    out->cut = 0.0f;
    out->tie_limit = INT64_MAX;
    out->dropped = NULL;
    out->n_dropped = 0;
    const Py_ssize_t n_blocks = (n + BLOCK - 1) / BLOCK;
    double *sums = calloc(BUCKETS, sizeof(double));
    float *heaviest = malloc(n_blocks * sizeof(float));   /* each block's largest weight */
    if (!sums || !heaviest) {
        free(sums);
        free(heaviest);
        return -1;
    }
    /* Weights below 2^-12 of the top one are histogrammed only if the nucleus turns out to reach them
     * (on real text it seldom does: the nucleus holds the few weights near the top). */
    const float floor = 2.44140625e-4f;
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t len = n - start < BLOCK ? n - start : BLOCK;
        float *w = weights + start;
        const float *x = logits + start;
        total += exp_block(x, w, len, top);
        if (top_p < 1.0) {
            heaviest[start / BLOCK] = block_max(w, len);
            histogram(w, len, floor, heaviest[start / BLOCK], sums);
        }
    }
    int rc = 0;
    if (top_p < 1.0) {
        const double mass = top_p * total;
        double histogrammed = 0.0;
        for (int b = 0; b < BUCKETS; b++) histogrammed += sums[b];
        if (histogrammed < mass) {
            /* A nucleus this wide (top-p within ~1e-2 of 1 over a long tail): histogram them all. */
            memset(sums, 0, BUCKETS * sizeof(double));
            for (Py_ssize_t start = 0; start < n; start += BLOCK)
                histogram(weights + start, n - start < BLOCK ? n - start : BLOCK, 0.0f, 1.0f, sums);
        }
        double above = 0.0;
        int b = BUCKETS - 1;
        for (; b > 0 && above + sums[b] < mass; b--) above += sums[b];
        /* The nucleus ends inside bucket b: sort its weights, heaviest first. */
        uint32_t k = 0, capacity = 1024;
        Entry *band = malloc(capacity * sizeof(Entry));
        uint32_t lowest_bits = (uint32_t) b << SHIFT;
        float lowest;   /* the smallest weight bucket b can hold: blocks below it are skipped */
        memcpy(&lowest, &lowest_bits, sizeof lowest);
        for (Py_ssize_t i = 0; band && i < n; i++) {
            if (i % BLOCK == 0 && heaviest[i / BLOCK] < lowest) {
                i += BLOCK - 1;
                continue;
            }
            if ((float_bits(weights[i]) >> SHIFT) != (uint32_t) b) continue;
            if (k == capacity) {
                Entry *grown = realloc(band, 2 * (size_t) capacity * sizeof(Entry));
                if (!grown) free(band);
                band = grown;
                capacity *= 2;
                if (!band) break;
            }
            band[k++] = (Entry){weights[i], (int32_t) i};
        }
        if (!band) {
            rc = -1;
        } else {
            qsort(band, k, sizeof(Entry), heavier_first);
            double running = above;
            uint32_t end = 0;
            for (; end < k; end++) {
                running += band[end].weight;
                if (running >= mass) break;
            }
            if (end >= k) end = k ? k - 1 : 0;   /* float rounding: keep the whole bucket */
            if (k) {
                out->cut = band[end].weight;
                out->tie_limit = band[end].id;
                uint32_t ties = 0;
                while (end + 1 + ties < k && band[end + 1 + ties].weight == out->cut) ties++;
                if (ties) {
                    out->dropped = malloc(ties * sizeof(int32_t));
                    if (!out->dropped) rc = -1;
                    for (uint32_t j = 0; rc == 0 && j < ties; j++) out->dropped[j] = band[end + 1 + j].id;
                    out->n_dropped = rc == 0 ? ties : 0;
                }
            }
            free(band);
        }
    }
    /* min-p: p >= min_p * p_max, and the weights are relative to the most likely token's. */
    if (rc == 0 && min_p > 0.0 && (float) min_p > out->cut) keep_all_at_or_above(out, (float) min_p);
    free(sums);
    free(heaviest);
    return rc;
}

/* Turns ``weights`` into the kept set's weights at ``temperature``, 0 outside it. */
WIDE static void temper(const float *logits, float *weights, Py_ssize_t n, Nucleus *nu, float temperature) {
    const float top = largest(logits, n), inverse = 1.0f / temperature;
    float kept[BLOCK];
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t len = n - start < BLOCK ? n - start : BLOCK;
        for (Py_ssize_t i = 0; i < len; i++) kept[i] = (float) is_kept(nu, weights[start + i], start + i);
        for (Py_ssize_t i = 0; i < len; i++)
            weights[start + i] = exp_nonpositive((logits[start + i] - top) * inverse) * kept[i];
    }
    /* A kept weight is at least e^-80 (~1.8e-35), above the smallest normal float. */
    keep_all_at_or_above(nu, 1.17549435e-38f);
}

/* The kept weights' sum per block (the draw's first level), without the token ``excluded``. */
WIDE static void kept_sums(const float *weights, Py_ssize_t n, const Nucleus *nu, Py_ssize_t excluded,
                           double *blocks) {
    const float cut = nu->cut;
    for (Py_ssize_t start = 0, b = 0; start < n; start += BLOCK, b++) {
        Py_ssize_t len = n - start < BLOCK ? n - start : BLOCK;
        const float *w = weights + start;
        float lanes[8] = {0};
        Py_ssize_t i = 0;
        for (; i + 8 <= len; i += 8)
            for (int j = 0; j < 8; j++) lanes[j] += w[i + j] >= cut ? w[i + j] : 0.0f;
        double sum = 0.0;
        for (int j = 0; j < 8; j++) sum += lanes[j];
        for (; i < len; i++) sum += w[i] >= cut ? w[i] : 0.0f;
        blocks[b] = sum;
    }
    for (uint32_t j = 0; j < nu->n_dropped; j++) blocks[nu->dropped[j] / BLOCK] -= cut;
    if (excluded >= 0 && excluded < n && is_kept(nu, weights[excluded], excluded))
        blocks[excluded / BLOCK] -= weights[excluded];
}

/* The kept token (not ``excluded``) where the running sum of kept weights passes ``u`` of their
 * total: a block by the block sums, then a token inside it. -1 when nothing is kept. */
static Py_ssize_t walk(const float *weights, Py_ssize_t n, const Nucleus *nu, Py_ssize_t excluded,
                       const double *blocks, double u) {
    const Py_ssize_t n_blocks = (n + BLOCK - 1) / BLOCK;
    double total = 0.0;
    for (Py_ssize_t b = 0; b < n_blocks; b++) total += blocks[b];
    if (!(total > 0.0)) return -1;
    double target = u * total, running = 0.0;
    Py_ssize_t chosen = -1;
    for (Py_ssize_t b = 0; b < n_blocks; b++) {
        if (!(blocks[b] > 0.0)) continue;
        chosen = b;   /* rounding at the very end lands in the last block holding any */
        if (running + blocks[b] > target) break;
        running += blocks[b];
    }
    Py_ssize_t start = chosen * BLOCK, end = start + BLOCK < n ? start + BLOCK : n, last = -1;
    for (Py_ssize_t i = start; i < end; i++) {
        if (i == excluded || !is_kept(nu, weights[i], i)) continue;
        last = i;
        running += weights[i];
        if (running > target) break;
    }
    return last;
}

typedef struct {
    Py_buffer logits, weights;
    Py_ssize_t n;
} Rows;

/* A buffer format that means native float32 ("f", "<f" from ctypes on a little-endian machine, ...). */
static int is_float32(const char *format) {
    if (!format) return 0;
    if (*format == '@' || *format == '=' || (*format == '<' && PY_LITTLE_ENDIAN) || (*format == '>' && !PY_LITTLE_ENDIAN))
        format++;
    return strcmp(format, "f") == 0;
}

static int take_rows(PyObject *logits_obj, PyObject *weights_obj, Rows *rows) {
    if (PyObject_GetBuffer(logits_obj, &rows->logits, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (PyObject_GetBuffer(weights_obj, &rows->weights, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&rows->logits);
        return -1;
    }
    rows->n = rows->logits.len / (Py_ssize_t) sizeof(float);
    if (!is_float32(rows->logits.format) || !is_float32(rows->weights.format) || rows->n < 1 || rows->weights.len < rows->logits.len ||
        rows->n > INT32_MAX) {
        PyBuffer_Release(&rows->logits);
        PyBuffer_Release(&rows->weights);
        PyErr_SetString(PyExc_ValueError, "expected a non-empty float32 logits row and a float32 scratch row as long");
        return -1;
    }
    return 0;
}

static void release_rows(Rows *rows) {
    PyBuffer_Release(&rows->logits);
    PyBuffer_Release(&rows->weights);
}

/* sample(logits, weights, temperature, top_p, min_p, u, excluded) -> (token, p_excluded)
 *
 * A token drawn with the uniform number ``u`` in [0, 1) from the chain's distribution with token
 * ``excluded`` (or none, when it is -1) taken out and the rest renormalized, and the probability
 * the full distribution gives ``excluded`` (0.0 when none). Drawing from the rest and keeping the
 * excluded token with its probability is exactly a draw from the full distribution, which is how a
 * draft token is verified. ``token`` is -1 when nothing is left to draw from. */
static PyObject *sample(PyObject *self, PyObject *args) {
    PyObject *logits_obj, *weights_obj;
    float temperature;
    double top_p, min_p, u;
    Py_ssize_t excluded;
    if (!PyArg_ParseTuple(args, "OOfdddn", &logits_obj, &weights_obj, &temperature, &top_p, &min_p, &u, &excluded))
        return NULL;
    if (!(temperature > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "temperature must be > 0 (greedy is an argmax)");
        return NULL;
    }
    Rows rows;
    if (take_rows(logits_obj, weights_obj, &rows) < 0) return NULL;
    const float *logits = rows.logits.buf;
    float *weights = rows.weights.buf;
    const Py_ssize_t n = rows.n;
    double *blocks = malloc(((n + BLOCK - 1) / BLOCK) * sizeof(double));
    Nucleus nu = {0};
    int rc = -1;
    Py_ssize_t token = -1;
    double p_excluded = 0.0;
    Py_BEGIN_ALLOW_THREADS
    if (blocks && find_nucleus(logits, weights, n, top_p, min_p, &nu) == 0) {
        rc = 0;
        if (temperature != 1.0f) temper(logits, weights, n, &nu, temperature);
        kept_sums(weights, n, &nu, excluded, blocks);
        double rest = 0.0;
        for (Py_ssize_t b = 0; b < (n + BLOCK - 1) / BLOCK; b++) rest += blocks[b];
        if (excluded >= 0 && excluded < n && is_kept(&nu, weights[excluded], excluded))
            p_excluded = weights[excluded] / (rest + weights[excluded]);
        token = walk(weights, n, &nu, excluded, blocks, u);
    }
    free(nu.dropped);
    Py_END_ALLOW_THREADS
    free(blocks);
    release_rows(&rows);
    if (rc < 0) return PyErr_NoMemory();
    return Py_BuildValue("nd", token, p_excluded);
}

/* distribution(logits, weights, temperature, top_p, min_p) -> total
 * Leaves in ``weights`` the chain's unnormalized weights (0 outside the kept set) and returns their
 * sum: what tests and benchmarks compare with the exact float64 nucleus. */
static PyObject *distribution(PyObject *self, PyObject *args) {
    PyObject *logits_obj, *weights_obj;
    float temperature;
    double top_p, min_p;
    if (!PyArg_ParseTuple(args, "OOfdd", &logits_obj, &weights_obj, &temperature, &top_p, &min_p)) return NULL;
    if (!(temperature > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "temperature must be > 0 (greedy is an argmax)");
        return NULL;
    }
    Rows rows;
    if (take_rows(logits_obj, weights_obj, &rows) < 0) return NULL;
    const float *logits = rows.logits.buf;
    float *weights = rows.weights.buf;
    Nucleus nu;
    if (find_nucleus(logits, weights, rows.n, top_p, min_p, &nu) < 0) {
        free(nu.dropped);
        release_rows(&rows);
        return PyErr_NoMemory();
    }
    if (temperature != 1.0f) temper(logits, weights, rows.n, &nu, temperature);
    double total = 0.0;
    for (Py_ssize_t i = 0; i < rows.n; i++) {
        if (!is_kept(&nu, weights[i], i)) weights[i] = 0.0f;
        total += weights[i];
    }
    free(nu.dropped);
    release_rows(&rows);
    return PyFloat_FromDouble(total);
}

static PyMethodDef methods[] = {
    {"sample", sample, METH_VARARGS, "A draw from the chain's distribution, optionally with one token taken out."},
    {"distribution", distribution, METH_VARARGS, "The chain's weights over a logits row, 0 outside the kept set."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_nucleus", NULL, -1, methods};

PyMODINIT_FUNC PyInit__nucleus(void) {
    return PyModule_Create(&module);
}
