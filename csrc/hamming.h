// Exact Hamming search over packed binary codes: distance kernels specialised per code size
// (8, 16, 32, 64 bytes, generic) and per instruction set, chosen at run time, and the driver that
// splits work across query blocks (batches) or row ranges (single queries) and threads.
//
// Instruction sets: the build uses portable flags; each SIMD kernel carries its own
// __attribute__((target(...))) and runs only when __builtin_cpu_supports says so. On other
// architectures only the portable kernels are compiled.
//
// One pass: each kernel computes a vector of distances, compares it with the top-k threshold
// in registers and leaves the loop only for rows below it (rare after the first few thousand
// rows), so a single query streams the codes once at close to memory speed. A batch scans the
// codes once per block of queries, a cache-sized chunk of rows at a time.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "mih.h"
#include "threads.h"
#include "topk.h"

#if defined(__x86_64__) || defined(_M_X64)
#define MEDHASH_X86 1
#include <immintrin.h>
#else
#define MEDHASH_X86 0
#endif

namespace medhash {

enum SimdLevel : int { LEVEL_PORTABLE = 0, LEVEL_POPCNT = 1, LEVEL_AVX2 = 2, LEVEL_AVX512 = 3 };

inline const char* level_name(int level) {
    switch (level) {
        case LEVEL_AVX512: return "avx512_vpopcntdq";
        case LEVEL_AVX2: return "avx2";
        case LEVEL_POPCNT: return "popcnt";
        default: return "portable";
    }
}

// Best level this CPU (and OS, for the wide registers) supports.
inline int detect_level() {
#if MEDHASH_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
        return LEVEL_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return LEVEL_AVX2;
    if (__builtin_cpu_supports("popcnt")) return LEVEL_POPCNT;
#endif
    return LEVEL_PORTABLE;
}

// Scan rows [begin, end) of codes (nbytes each) against one query, feeding the top-k state.
using ScanFn = void (*)(const uint8_t* codes, int64_t nbytes, int64_t begin, int64_t end,
                        const uint8_t* query, TopK& st, const uint8_t* allow);

inline uint64_t load_u64(const uint8_t* p) {
    uint64_t x;
    std::memcpy(&x, p, 8);
    return x;
}

// The slow path shared by all kernels: a row below the threshold, if the allow mask lets it.
inline void offer(TopK& st, int64_t row, int d, const uint8_t* allow, int& T) {
    if (d < T && (allow == nullptr || allow[row] != 0)) {
        st.push(row, d);
        T = st.threshold();
    }
}

inline uint64_t popcount64_swar(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

// ---- portable: no instruction beyond the base ISA ----
namespace portable {
#define MH_TARGET
#if MEDHASH_X86
#define MH_POPCOUNT64(x) popcount64_swar(x)  // base x86-64 has no popcnt instruction
#else
#define MH_POPCOUNT64(x) __builtin_popcountll(x)  // a native instruction on aarch64
#endif
#include "hamming_scalar.inc"
#include "mih_query.inc"
#undef MH_TARGET
#undef MH_POPCOUNT64
}  // namespace portable

#if MEDHASH_X86
// ---- popcnt: scalar, one popcnt instruction per 64 bits ----
namespace popcnt {
#define MH_TARGET __attribute__((target("popcnt")))
#define MH_POPCOUNT64(x) static_cast<uint64_t>(__builtin_popcountll(x))
#include "hamming_scalar.inc"
#include "mih_query.inc"
#undef MH_TARGET
#undef MH_POPCOUNT64
}  // namespace popcnt

// Shared by the two vector levels: walk the set bits of a mask of lanes below the threshold.
// dist holds the distances of the rows row0, row0 + 1, ...
inline void offer_mask(TopK& st, int64_t row0, uint64_t mask, const uint64_t* dist,
                       const uint8_t* allow, int& T) {
    while (mask) {
        const int lane = __builtin_ctzll(mask);
        mask &= mask - 1;
        offer(st, row0 + lane, static_cast<int>(dist[lane]), allow, T);
    }
}

// rows (a multiple of 8) codes of NB bytes from src into dst, word-major per 8 rows: the layout
// every transposed batch kernel reads (avx512::transpose_rows does the same with shuffles).
template <int NB>
inline void transpose_rows_portable(const uint8_t* src, int64_t rows, uint64_t* dst) {
    constexpr int W = NB / 8;
    for (int64_t r = 0; r < rows; r += 8, src += 8 * NB, dst += NB)
        for (int i = 0; i < 8; ++i)
            for (int w = 0; w < W; ++w) dst[8 * w + i] = load_u64(src + i * NB + 8 * w);
}

// ---- AVX2: byte popcount by nibble lookup (vpshufb), summed by vpsadbw ----
namespace avx2 {
#define MH_AVX2 __attribute__((target("avx2,popcnt")))

MH_AVX2 static inline __m256i popcount_bytes(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// popcount of each 64-bit lane of a ^ b
MH_AVX2 static inline __m256i popcount_xor64(__m256i a, __m256i b) {
    return _mm256_sad_epu8(popcount_bytes(_mm256_xor_si256(a, b)), _mm256_setzero_si256());
}

MH_AVX2 static inline __m256i load(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The query as the kernels of its size read it: lo alone up to 32 bytes (broadcast to the
// register), lo and hi (its two halves) for 64 bytes.
struct Query {
    __m256i lo, hi;
};

template <int NB>
MH_AVX2 static inline Query broadcast_query(const uint8_t* q) {
    Query r;
    if constexpr (NB == 8) {
        r.lo = _mm256_set1_epi64x(static_cast<long long>(load_u64(q)));
    } else if constexpr (NB == 16) {
        r.lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    } else {
        r.lo = load(q);
    }
    r.hi = NB == 64 ? load(q + 32) : r.lo;
    return r;
}

// Four vectors of per-word distances, one row each, to the four rows' distances in row order.
MH_AVX2 static inline __m256i sum_rows4(__m256i s0, __m256i s1, __m256i s2, __m256i s3) {
    // a01 = [r0 w0+w1, r1 w0+w1, r0 w2+w3, r1 w2+w3], same for a23 with rows 2, 3
    const __m256i a01 = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
    const __m256i a23 = _mm256_add_epi64(_mm256_unpacklo_epi64(s2, s3), _mm256_unpackhi_epi64(s2, s3));
    return _mm256_add_epi64(_mm256_permute2x128_si256(a01, a23, 0x20),
                            _mm256_permute2x128_si256(a01, a23, 0x31));
}

// Distances of 4 consecutive rows (NB bytes each) as 4 uint64 lanes in row order.
template <int NB>
MH_AVX2 static inline __m256i dist4(const uint8_t* p, const Query& q) {
    if constexpr (NB == 8) {
        return popcount_xor64(load(p), q.lo);
    } else if constexpr (NB == 16) {
        // s0 = [r0a r0b r1a r1b], s1 = [r2a r2b r3a r3b] (a, b: the two 64-bit halves)
        const __m256i s0 = popcount_xor64(load(p), q.lo);
        const __m256i s1 = popcount_xor64(load(p + 32), q.lo);
        const __m256i s = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
        // s = [r0 r2 r1 r3]
        return _mm256_permute4x64_epi64(s, _MM_SHUFFLE(3, 1, 2, 0));
    } else if constexpr (NB == 32) {
        return sum_rows4(popcount_xor64(load(p), q.lo), popcount_xor64(load(p + 32), q.lo),
                         popcount_xor64(load(p + 64), q.lo), popcount_xor64(load(p + 96), q.lo));
    } else {
        static_assert(NB == 64, "AVX2 kernels exist for 8, 16, 32 and 64 bytes");
        __m256i s[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
            s[r] = _mm256_add_epi64(popcount_xor64(load(p + 64 * r), q.lo),
                                    popcount_xor64(load(p + 64 * r + 32), q.hi));
        return sum_rows4(s[0], s[1], s[2], s[3]);
    }
}

// Distances of 16 rows (4 vectors of 4, in row order) against the threshold; the rows below it,
// rarely after the first few thousand, offered in row order.
MH_AVX2 static inline void test16(const __m256i (&d)[4], int64_t row, TopK& st, const uint8_t* allow, int& T,
                                  __m256i& vT, uint64_t* dist) {
    unsigned m = 0;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v)
        m |= static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(vT, d[v])))) << (4 * v);
    if (m) {
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(dist + 4 * v), d[v]);
        offer_mask(st, row, m, dist, allow, T);
        vT = _mm256_set1_epi64x(T);
    }
}

template <int NB>
MH_AVX2 static void scan(const uint8_t* codes, int64_t, int64_t begin, int64_t end,
                         const uint8_t* query, TopK& st, const uint8_t* allow) {
    const Query q = broadcast_query<NB>(query);
    int T = st.threshold();
    __m256i vT = _mm256_set1_epi64x(T);
    int64_t row = begin;
    const uint8_t* p = codes + row * NB;
    alignas(32) uint64_t dist[16];
    for (; row + 16 <= end; row += 16, p += 16 * NB) {
        const __m256i d[4] = {dist4<NB>(p, q), dist4<NB>(p + 4 * NB, q), dist4<NB>(p + 8 * NB, q),
                              dist4<NB>(p + 12 * NB, q)};
        test16(d, row, st, allow, T, vT, dist);
    }
    popcnt::scan_fixed<NB>(codes, row, end, query, st, allow);
}

// Distances of 4 rows of a transposed block (b: word 0 of those rows; word w 8 words further):
// the words' byte counts are added as bytes (at most 8 * 8 = 64 a byte) and summed by one
// vpsadbw, instead of one vpsadbw a word and the cross-lane adds of sum_rows4.
template <int W>
MH_AVX2 static inline __m256i dist4_transposed(const uint64_t* b, const __m256i* q) {
    __m256i bytes = popcount_bytes(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), q[0]));
#pragma GCC unroll 8
    for (int w = 1; w < W; ++w)
        bytes = _mm256_add_epi8(bytes, popcount_bytes(_mm256_xor_si256(
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 8 * w)), q[w])));
    return _mm256_sad_epu8(bytes, _mm256_setzero_si256());
}

// One query over rows (a multiple of 8) of a transposed chunk whose first row is row0 (the
// threshold test and offers of scan above, 16 rows at a time).
template <int NB>
MH_AVX2 static void scan_transposed(const uint64_t* t, int64_t rows, int64_t row0, const uint8_t* query,
                                    TopK& st, const uint8_t* allow) {
    constexpr int W = NB / 8;
    __m256i q[W];
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) q[w] = _mm256_set1_epi64x(static_cast<long long>(load_u64(query + 8 * w)));
    int T = st.threshold();
    __m256i vT = _mm256_set1_epi64x(T);
    alignas(32) uint64_t dist[16];
    int64_t r = 0;
    for (; r < rows; r += 16, t += 2 * NB) {
        const bool two = r + 16 <= rows;  // two blocks of 8 rows, or the last one alone
        const __m256i d[4] = {dist4_transposed<W>(t, q), dist4_transposed<W>(t + 4, q),
                              two ? dist4_transposed<W>(t + NB, q) : vT, two ? dist4_transposed<W>(t + NB + 4, q) : vT};
        test16(d, row0 + r, st, allow, T, vT, dist);
    }
}

struct Kernels {
    template <int NB>
    MH_AVX2 static void scan(const uint8_t* c, int64_t nb, int64_t b, int64_t e, const uint8_t* q,
                             TopK& st, const uint8_t* allow) {
        avx2::scan<NB>(c, nb, b, e, q, st, allow);
    }
    static constexpr ScanFn generic = popcnt::Kernels::generic;
};
#undef MH_AVX2
}  // namespace avx2

// ---- AVX-512 VPOPCNTDQ: eight 64-bit popcounts per instruction ----
namespace avx512 {
#define MH_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx2,popcnt")))

MH_AVX512 static inline __m512i popcnt_xor(const uint8_t* p, __m512i q) {
    return _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p), q));
}

// Sum the two 64-bit words of each 128-bit lane pairwise across two registers:
// lane L of the result holds [a's word sum in L, b's word sum in L].
MH_AVX512 static inline __m512i pair_sums(__m512i a, __m512i b) {
    return _mm512_add_epi64(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}

// Distances of 8 consecutive rows (NB bytes each) as 8 uint64 lanes in a fixed lane order
// (not row order for NB = 16, 32: the hot loop only needs their minimum); in_row_order() below
// puts them in row order for the rare groups that hold a candidate.
template <int NB>
MH_AVX512 static inline __m512i dist8(const uint8_t* p, __m512i q) {
    if constexpr (NB == 8) {
        return popcnt_xor(p, q);
    } else if constexpr (NB == 16) {
        // each register: 4 rows x 2 words; pair the words within 128-bit lanes
        // -> [r0 r4 r1 r5 r2 r6 r3 r7]
        return pair_sums(popcnt_xor(p, q), popcnt_xor(p + 64, q));
    } else if constexpr (NB == 32) {
        // each register: 2 rows x 4 words
        // a01 lanes (128-bit): [r0 h0, r2 h0], [r0 h1, r2 h1], [r1 h0, r3 h0], [r1 h1, r3 h1]
        const __m512i a01 = pair_sums(popcnt_xor(p, q), popcnt_xor(p + 64, q));
        const __m512i a23 = pair_sums(popcnt_xor(p + 128, q), popcnt_xor(p + 192, q));
        // add the two halves: lanes become [r0 r2], [r0 r2], [r1 r3], [r1 r3]
        const __m512i b01 = _mm512_add_epi64(a01, _mm512_shuffle_i64x2(a01, a01, _MM_SHUFFLE(2, 3, 0, 1)));
        const __m512i b23 = _mm512_add_epi64(a23, _mm512_shuffle_i64x2(a23, a23, _MM_SHUFFLE(2, 3, 0, 1)));
        // [r0 r2 r1 r3 r4 r6 r5 r7]
        return _mm512_shuffle_i64x2(b01, b23, _MM_SHUFFLE(2, 0, 2, 0));
    } else {
        static_assert(NB == 64, "AVX-512 kernels exist for 8, 16, 32 and 64 bytes");
        // one row a register (8 words); a01 lane L = [r0's words of L, r1's words of L], ...
        const __m512i a01 = pair_sums(popcnt_xor(p, q), popcnt_xor(p + 64, q));
        const __m512i a23 = pair_sums(popcnt_xor(p + 128, q), popcnt_xor(p + 192, q));
        const __m512i a45 = pair_sums(popcnt_xor(p + 256, q), popcnt_xor(p + 320, q));
        const __m512i a67 = pair_sums(popcnt_xor(p + 384, q), popcnt_xor(p + 448, q));
        // add lanes 0+1 and 2+3: c0 = [r0 r1](L0+L1), [r0 r1](L2+L3), [r2 r3](L0+L1), [r2 r3](L2+L3)
        const __m512i c0 = _mm512_add_epi64(_mm512_shuffle_i64x2(a01, a23, _MM_SHUFFLE(2, 0, 2, 0)),
                                            _mm512_shuffle_i64x2(a01, a23, _MM_SHUFFLE(3, 1, 3, 1)));
        const __m512i c1 = _mm512_add_epi64(_mm512_shuffle_i64x2(a45, a67, _MM_SHUFFLE(2, 0, 2, 0)),
                                            _mm512_shuffle_i64x2(a45, a67, _MM_SHUFFLE(3, 1, 3, 1)));
        // and the two halves: [r0 r1 r2 r3 r4 r5 r6 r7]
        return _mm512_add_epi64(_mm512_shuffle_i64x2(c0, c1, _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i64x2(c0, c1, _MM_SHUFFLE(3, 1, 3, 1)));
    }
}

// dist8's lanes in row order.
template <int NB>
MH_AVX512 static inline __m512i in_row_order(__m512i d) {
    if constexpr (NB == 16) {
        return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), d);
    } else if constexpr (NB == 32) {
        return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 1, 3, 4, 6, 5, 7), d);
    } else {
        return d;  // 8 and 64 bytes: already in row order
    }
}

template <int NB>
MH_AVX512 static inline __m512i broadcast_query(const uint8_t* q) {
    if constexpr (NB == 8) {
        return _mm512_set1_epi64(static_cast<long long>(load_u64(q)));
    } else if constexpr (NB == 16) {
        return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    } else if constexpr (NB == 32) {
        return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
    } else {
        return _mm512_loadu_si512(q);
    }
}

// Vectors of 8 rows tested together: 512 bytes a group at 64 bits, 32 rows (512 B / 1 KB) at
// 128 and 256 bits, 16 rows (1 KB) at 512 bits.
template <int NB>
constexpr int kGroupVecs = NB == 8 ? 8 : NB == 64 ? 2 : 4;

// One group of U vectors of 8 distances (rows row, row + 1, ...; lanes in dist8<ORDER_NB>'s
// order): the minimum against the threshold, and only when it passes (rarely, after the first
// rows) each row below it offered, in row order.
template <int U, int ORDER_NB>
MH_AVX512 static inline void test_group(const __m512i (&d)[U], int64_t row, TopK& st, const uint8_t* allow,
                                        int& T, __m512i& vT, uint64_t* dist) {
    __m512i mn[U];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) mn[u] = d[u];
    // minimum of the group by a tree (pairs, then pairs of pairs)
#pragma GCC unroll 8
    for (int w = 1; w < U; w *= 2)
#pragma GCC unroll 8
        for (int u = 0; u + w < U; u += 2 * w) mn[u] = _mm512_min_epu64(mn[u], mn[u + w]);
    if (_mm512_cmplt_epu64_mask(mn[0], vT) != 0) {
        uint64_t m = 0;
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) {
            const __m512i o = in_row_order<ORDER_NB>(d[u]);
            _mm512_store_si512(dist + 8 * u, o);
            m |= static_cast<uint64_t>(_mm512_cmplt_epu64_mask(o, vT)) << (8 * u);
        }
        offer_mask(st, row, m, dist, allow, T);
        vT = _mm512_set1_epi64(T);
    }
}

// The hot loop tests only the minimum of a group's distances against the threshold: one
// compare and one rarely taken branch per group (per-vector mask compares and ORs cost
// ~15% over the memory floor at 64 bits on Zen 5). A group that holds a candidate is
// re-tested vector by vector, in row order.
// PF: software-prefetch kPrefetchBytes ahead, one line per 64 bytes. For codes beyond L2,
// a streaming scan of 16- and 32-byte codes has ~100 uops per KB in flight, too few loads ahead
// for the L3/DRAM latency: without prefetch it ran at ~1.15x of a plain read (1M x 256 bit,
// Zen 5), with it ~0.75-0.8x. Not used at 8 bytes a code (no gain measured) nor for
// the cache-sized chunks of a batch (already in cache).
constexpr int64_t kPrefetchBytes = 16 << 10;
constexpr int64_t kPrefetchMinBytes = 1 << 20;  // scans shorter than this are cache-resident

template <int NB, bool PF>
MH_AVX512 static void scan_rows(const uint8_t* codes, int64_t begin, int64_t end,
                                const uint8_t* query, TopK& st, const uint8_t* allow) {
    constexpr int U = kGroupVecs<NB>;
    constexpr int G = 8 * U;
    const __m512i q = broadcast_query<NB>(query);
    int T = st.threshold();
    __m512i vT = _mm512_set1_epi64(T);
    int64_t row = begin;
    const uint8_t* p = codes + row * NB;
    alignas(64) uint64_t dist[G];
    for (; row + G <= end; row += G, p += G * NB) {
        if constexpr (PF) {
#pragma GCC unroll 16
            for (int l = 0; l < G * NB / 64; ++l)
                _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes + 64 * l, _MM_HINT_T0);
        }
        __m512i d[U];
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) d[u] = dist8<NB>(p + 8 * NB * u, q);
        test_group<U, NB>(d, row, st, allow, T, vT, dist);
    }
    for (; row + 8 <= end; row += 8, p += 8 * NB) {
        const __m512i d0 = in_row_order<NB>(dist8<NB>(p, q));
        const __mmask8 m0 = _mm512_cmplt_epu64_mask(d0, vT);
        if (m0 != 0) {
            _mm512_store_si512(dist, d0);
            offer_mask(st, row, m0, dist, allow, T);
            vT = _mm512_set1_epi64(T);
        }
    }
    popcnt::scan_fixed<NB>(codes, row, end, query, st, allow);
}

template <int NB>
MH_AVX512 static void scan(const uint8_t* codes, int64_t, int64_t begin, int64_t end,
                           const uint8_t* query, TopK& st, const uint8_t* allow) {
    if (NB > 8 && (end - begin) * NB >= kPrefetchMinBytes)
        scan_rows<NB, NB != 8>(codes, begin, end, query, st, allow);
    else
        scan_rows<NB, false>(codes, begin, end, query, st, allow);
}

// ---- batches: each chunk of rows transposed once, then scanned by every query of the block ----
// At 16-64 bytes a code dist8 spends most of its work summing each row's words across lanes
// (unpacks and shuffles: 11 of its 19 vector operations at 32 bytes). A batch reads each chunk
// once per query, so the chunk is first stored word-major, 8 rows at a time (register w of a
// block = word w of its 8 rows): a row's distance is then the lane-wise sum of its words'
// popcounts, already in row order. The transposition costs about one query's pass over the
// chunk and serves every query of the block.

// rows (a multiple of 8) codes of NB bytes from src into dst, word-major per 8 rows.
template <int NB>
MH_AVX512 static void transpose_rows(const uint8_t* src, int64_t rows, uint64_t* dst) {
    for (int64_t r = 0; r < rows; r += 8, src += 8 * NB, dst += NB) {
        if constexpr (NB == 16) {
            // a0 = [r0w0 r0w1 r1w0 r1w1 r2w0 r2w1 r3w0 r3w1], a1 the same for rows 4..7
            const __m512i a0 = _mm512_loadu_si512(src), a1 = _mm512_loadu_si512(src + 64);
            _mm512_storeu_si512(dst, _mm512_permutex2var_epi64(a0, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), a1));
            _mm512_storeu_si512(dst + 8, _mm512_permutex2var_epi64(a0, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), a1));
        } else if constexpr (NB == 32) {
            // a_i = rows 2i, 2i + 1, four words each
            const __m512i a0 = _mm512_loadu_si512(src), a1 = _mm512_loadu_si512(src + 64);
            const __m512i a2 = _mm512_loadu_si512(src + 128), a3 = _mm512_loadu_si512(src + 192);
            const __m512i w01 = _mm512_setr_epi64(0, 4, 8, 12, 1, 5, 9, 13);   // words 0, 1 of 4 rows
            const __m512i w23 = _mm512_setr_epi64(2, 6, 10, 14, 3, 7, 11, 15);  // words 2, 3
            const __m512i lo01 = _mm512_permutex2var_epi64(a0, w01, a1), hi01 = _mm512_permutex2var_epi64(a2, w01, a3);
            const __m512i lo23 = _mm512_permutex2var_epi64(a0, w23, a1), hi23 = _mm512_permutex2var_epi64(a2, w23, a3);
            _mm512_storeu_si512(dst, _mm512_shuffle_i64x2(lo01, hi01, _MM_SHUFFLE(1, 0, 1, 0)));
            _mm512_storeu_si512(dst + 8, _mm512_shuffle_i64x2(lo01, hi01, _MM_SHUFFLE(3, 2, 3, 2)));
            _mm512_storeu_si512(dst + 16, _mm512_shuffle_i64x2(lo23, hi23, _MM_SHUFFLE(1, 0, 1, 0)));
            _mm512_storeu_si512(dst + 24, _mm512_shuffle_i64x2(lo23, hi23, _MM_SHUFFLE(3, 2, 3, 2)));
        } else {
            static_assert(NB == 64, "transposed batches exist for 16, 32 and 64 bytes");
            // an 8 x 8 transpose of 64-bit words: pairs of rows, then fours, then halves
            __m512i a[8], p[8], q[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) a[i] = _mm512_loadu_si512(src + 64 * i);
#pragma GCC unroll 4
            for (int i = 0; i < 8; i += 2) {
                p[i] = _mm512_unpacklo_epi64(a[i], a[i + 1]);      // [ri rj] words 0, 2, 4, 6
                p[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 1]);  // words 1, 3, 5, 7
            }
            const __m512i even = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
            const __m512i odd = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
#pragma GCC unroll 2
            for (int h = 0; h < 8; h += 4) {  // rows h .. h + 3
                q[h] = _mm512_permutex2var_epi64(p[h], even, p[h + 2]);      // words 0, 4
                q[h + 1] = _mm512_permutex2var_epi64(p[h + 1], even, p[h + 3]);  // words 1, 5
                q[h + 2] = _mm512_permutex2var_epi64(p[h], odd, p[h + 2]);       // words 2, 6
                q[h + 3] = _mm512_permutex2var_epi64(p[h + 1], odd, p[h + 3]);   // words 3, 7
            }
#pragma GCC unroll 4
            for (int w = 0; w < 4; ++w) {
                _mm512_storeu_si512(dst + 8 * w, _mm512_shuffle_i64x2(q[w], q[w + 4], _MM_SHUFFLE(1, 0, 1, 0)));
                _mm512_storeu_si512(dst + 8 * (w + 4), _mm512_shuffle_i64x2(q[w], q[w + 4], _MM_SHUFFLE(3, 2, 3, 2)));
            }
        }
    }
}

// Distances of a transposed block of 8 rows of W words, in row order.
template <int W>
MH_AVX512 static inline __m512i dist8_transposed(const uint64_t* b, const __m512i* q) {
    __m512i s = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(b), q[0]));
#pragma GCC unroll 8
    for (int w = 1; w < W; ++w)
        s = _mm512_add_epi64(s, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(b + 8 * w), q[w])));
    return s;
}

// One query over rows (a multiple of 8) of a transposed chunk whose first row is row0; the
// same threshold test and offers as scan_rows.
template <int NB>
MH_AVX512 static void scan_transposed(const uint64_t* t, int64_t rows, int64_t row0, const uint8_t* query,
                                      TopK& st, const uint8_t* allow) {
    constexpr int W = NB / 8;
    constexpr int U = kGroupVecs<NB>;
    __m512i q[W];
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) q[w] = _mm512_set1_epi64(static_cast<long long>(load_u64(query + 8 * w)));
    int T = st.threshold();
    __m512i vT = _mm512_set1_epi64(T);
    alignas(64) uint64_t dist[8 * U];
    int64_t r = 0;
    for (; r + 8 * U <= rows; r += 8 * U, t += U * NB) {
        __m512i d[U];
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) d[u] = dist8_transposed<W>(t + u * NB, q);
        test_group<U, 8>(d, row0 + r, st, allow, T, vT, dist);   // lanes already in row order
    }
    for (; r < rows; r += 8, t += NB) {
        const __m512i d0 = dist8_transposed<W>(t, q);
        const __mmask8 m0 = _mm512_cmplt_epu64_mask(d0, vT);
        if (m0 != 0) {
            _mm512_store_si512(dist, d0);
            offer_mask(st, row0 + r, m0, dist, allow, T);
            vT = _mm512_set1_epi64(T);
        }
    }
}

// Every allowed row of [begin, end) at distance <= D, in row order, into rows / dists (cap +
// 64 slots); returns how many, or -1 once more than cap. For one query asking for many results
// (run_block): the scan kernel above leaves its loop for each group of rows that holds one, a
// branch the predictor cannot learn (~14 ns each, and a push a row). Here a first pass stores
// each group's 64-bit mask of such rows, without a branch on the data; a second marks the
// groups whose mask is not zero and writes their rows out. 8-byte codes: 1M x 64 bit, limit
// 20 (~1,900 rows), median query: 99 us, against 91 us for a k = 10 scan (a C++ harness on the
// benchmark VM; README, Exact Hamming search). The masks are stored a byte a vector straight
// from the compare (combining them into one 64-bit mask first took 105 us).
MH_AVX512 static int64_t collect_within_8(const uint8_t* codes, int64_t begin, int64_t end, const uint8_t* query,
                                          int D, const uint8_t* allow, std::vector<uint64_t>& masks,
                                          std::vector<uint64_t>& any, int64_t* rows, int32_t* dists, int64_t cap) {
    const __m512i q = broadcast_query<8>(query);
    const __m512i vD = _mm512_set1_epi64(D + 1);
    const int64_t groups = (end - begin) / 64;
    masks.resize(static_cast<size_t>(groups));
    const uint8_t* p = codes + begin * 8;
    // byte u of a group's mask: its rows 8u .. 8u + 7, stored straight from the mask register
    uint8_t* mask_bytes = reinterpret_cast<uint8_t*>(masks.data());
    for (int64_t g = 0; g < groups; ++g, p += 512) {
#pragma GCC unroll 8
        for (int u = 0; u < 8; ++u)
            mask_bytes[8 * g + u] = static_cast<uint8_t>(_mm512_cmplt_epu64_mask(dist8<8>(p + 64 * u, q), vD));
    }
    // which groups have any: 8 masks a vector test (they are in L2 by now), into a bitmap whose
    // set bits are then walked (a walk 8 groups at a time mispredicted more: 1.43-1.49x the
    // floor at k = 1000 against 1.25-1.34x)
    any.assign(static_cast<size_t>((groups + 63) / 64), 0);
    for (int64_t g = 0; g < groups; g += 8) {
        const __mmask8 valid = groups - g >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (groups - g)) - 1);
        const __m512i v = _mm512_maskz_loadu_epi64(valid, masks.data() + g);
        any[static_cast<size_t>(g >> 6)] |= static_cast<uint64_t>(_mm512_test_epi64_mask(v, v)) << (g & 63);
    }
    const uint64_t qw = load_u64(query);
    int64_t count = 0;
    for (size_t wi = 0; wi < any.size(); ++wi) {
        for (uint64_t w = any[wi]; w != 0; w &= w - 1) {
            const int64_t g = static_cast<int64_t>(wi) * 64 + __builtin_ctzll(w);
            for (uint64_t m = masks[static_cast<size_t>(g)]; m != 0; m &= m - 1) {
                const int64_t row = begin + g * 64 + __builtin_ctzll(m);
                rows[count] = row;
                dists[count] = static_cast<int32_t>(__builtin_popcountll(load_u64(codes + row * 8) ^ qw));
                count += allow == nullptr || allow[row] != 0;
            }
            if (count > cap) return -1;
        }
    }
    for (int64_t row = begin + groups * 64; row < end; ++row) {  // the last rows, fewer than a group
        const int d = static_cast<int>(__builtin_popcountll(load_u64(codes + row * 8) ^ qw));
        rows[count] = row;
        dists[count] = d;
        count += d <= D && (allow == nullptr || allow[row] != 0);
    }
    return count > cap ? -1 : count;
}

struct Kernels {
    template <int NB>
    MH_AVX512 static void scan(const uint8_t* c, int64_t nb, int64_t b, int64_t e, const uint8_t* q,
                               TopK& st, const uint8_t* allow) {
        avx512::scan<NB>(c, nb, b, e, q, st, allow);
    }
    static constexpr ScanFn generic = popcnt::Kernels::generic;
};
#undef MH_AVX512
}  // namespace avx512
#endif  // MEDHASH_X86

// The one map from code size to kernel, for every level: K (a level's kernel set, e.g.
// avx512::Kernels) has scan<NB> for 8, 16, 32 and 64 bytes and generic for any other size.
template <class K>
inline ScanFn select_kernel(int64_t nbytes) {
    switch (nbytes) {
        case 8: return &K::template scan<8>;
        case 16: return &K::template scan<16>;
        case 32: return &K::template scan<32>;
        case 64: return &K::template scan<64>;
        default: return K::generic;
    }
}

// The rows within a distance, in row order (avx512::collect_within_8), or nullptr where this
// CPU or code size has no such kernel (the scan with its top-k serves alone there).
using CollectFn = int64_t (*)(const uint8_t* codes, int64_t begin, int64_t end, const uint8_t* query, int D,
                              const uint8_t* allow, std::vector<uint64_t>& masks, std::vector<uint64_t>& any,
                              int64_t* rows, int32_t* dists, int64_t cap);

inline CollectFn select_collect(int level, int64_t nbytes) {
#if MEDHASH_X86
    if (level >= LEVEL_AVX512 && nbytes == 8) return &avx512::collect_within_8;
#endif
    (void)level;
    (void)nbytes;
    return nullptr;
}

// A batch's kernels over transposed chunks (avx512::transpose_rows, scan_transposed), or
// nullptrs where this CPU or code size has none (8-byte codes need no transposition).
using TransposeFn = void (*)(const uint8_t* src, int64_t rows, uint64_t* dst);
using TransposedScanFn = void (*)(const uint64_t* words, int64_t rows, int64_t row0, const uint8_t* query,
                                  TopK& st, const uint8_t* allow);
struct BatchKernels {
    TransposeFn transpose = nullptr;
    TransposedScanFn scan = nullptr;
};

inline BatchKernels select_batch(int level, int64_t nbytes) {
#if MEDHASH_X86
    if (level >= LEVEL_AVX512) {
        switch (nbytes) {
            case 16: return {&avx512::transpose_rows<16>, &avx512::scan_transposed<16>};
            case 32: return {&avx512::transpose_rows<32>, &avx512::scan_transposed<32>};
            case 64: return {&avx512::transpose_rows<64>, &avx512::scan_transposed<64>};
            default: break;
        }
    } else if (level >= LEVEL_AVX2) {
        switch (nbytes) {
            case 16: return {&transpose_rows_portable<16>, &avx2::scan_transposed<16>};
            case 32: return {&transpose_rows_portable<32>, &avx2::scan_transposed<32>};
            case 64: return {&transpose_rows_portable<64>, &avx2::scan_transposed<64>};
            default: break;
        }
    }
#endif
    (void)level;
    (void)nbytes;
    return {};
}

inline ScanFn select_scan(int level, int64_t nbytes) {
#if MEDHASH_X86
    if (level >= LEVEL_AVX512) return select_kernel<avx512::Kernels>(nbytes);
    if (level >= LEVEL_AVX2) return select_kernel<avx2::Kernels>(nbytes);
    if (level >= LEVEL_POPCNT) return select_kernel<popcnt::Kernels>(nbytes);
#endif
    (void)level;
    return select_kernel<portable::Kernels>(nbytes);
}

// ---- driver ----

// The kernels a search uses, chosen once per call from the level and the code size.
struct KernelSet {
    ScanFn scan;
    CollectFn collect;
    BatchKernels batch;
};

inline KernelSet select_kernels(int level, int64_t nbytes) {
    return {select_scan(level, nbytes), select_collect(level, nbytes), select_batch(level, nbytes)};
}

struct SearchJob {
    const uint8_t* codes;
    int64_t n;
    int64_t nbytes;
    const uint8_t* queries;
    int64_t nq;
    int64_t k;           // results per query (output width)
    const uint8_t* allow;  // n bytes, 0 = skip the row; or nullptr
    int64_t* out_rows;   // nq * k
    int32_t* out_dists;  // nq * k
};

// Per-thread scratch, reused across calls made from the same thread.
struct Scratch {
    std::vector<TopK> states;
    TopK sample;
    // one query's rows within its sampled limit (run_block, CollectFn)
    std::vector<uint64_t> masks, any;
    std::vector<int64_t> cand_rows, sel_rows, sel_counts;
    std::vector<int32_t> cand_dists, sel_dists;
    std::vector<uint64_t> words;  // a batch's transposed chunk (BatchKernels)
};

inline Scratch& thread_scratch() {
    thread_local Scratch s;
    return s;
}

// One query asking for many results (k >= kSeedMinK): most of what its scan costs above the
// memory floor is offering the rows that pass a still-high threshold, about k ln(n / k) of them.
// kSeedBlocks evenly spaced blocks of rows (together kSeedRowsPerK * n / k rows) give a sample
// whose kSeedRank-th smallest distance D is usually at or above the k-th smallest of the whole
// range (about kSeedRank / kSeedRowsPerK = 1.5k rows are expected at or below it). The scan then
// accepts only distances <= D from its first row; when fewer than k rows pass, it searches again
// without the limit, so the answer is always exact. Each row offered costs a mispredicted branch
// and a push, so a small sample and a tight rank win even though they search again more often:
// at most ~11% of queries (Poisson(8) >= 12, when nearly k rows lie just below the k-th
// distance), far fewer on real distance histograms, where many rows tie at the k-th distance.
// Measured (README, Exact Hamming search; median query, 1M x 64 bit, k = 1000): 32 n / k rows
// and rank 64 were 1.65-1.76x the memory floor, these 1.50x. Where a CollectFn exists (AVX-512,
// 8-byte codes) the rows within D are gathered without that branch and counted (1.23-1.28x);
// a looser rank there (20, 32) was slower: D moves by whole bits, and one more bit lets in
// more than the 4k + 1024 rows gathered, so the scan then runs twice.
constexpr int64_t kSeedMinK = 128;
constexpr int64_t kSeedRowsPerK = 8;
constexpr int64_t kSeedRank = 12;
// A CollectFn's second pass reads each row it writes out again: from the caches when the range
// fits there, else from memory, at ~100 ns a row. Measured (median query, k = 1000): 1M x 64
// bit (8 MB) 1.30x the floor against 1.55x for the scan with its top-k; 2M-4M level; 10M (80 MB)
// 1.22-1.38x against 1.05-1.15x. So only ranges up to this size are gathered.
constexpr int64_t kCollectMaxBytes = int64_t{16} << 20;
constexpr int64_t kSeedBlocks = 64;

// D as above for rows [r0, r1), or -1 where no limit should be used (a small range, or a sample
// whose allowed rows are fewer than kSeedRank).
inline int sampled_limit(const SearchJob& job, ScanFn scan, const uint8_t* query, int64_t r0, int64_t r1,
                         int64_t kin, TopK& sample) {
    const int64_t n = r1 - r0;
    if (kin < kSeedMinK || n < 4 * kSeedRowsPerK * kin) return -1;
    const int64_t per_block = ((kSeedRowsPerK * n / kin / kSeedBlocks) + 63) & ~int64_t{63};
    const int64_t stride = n / kSeedBlocks;
    sample.reset(kSeedRank, static_cast<int>(job.nbytes * 8));
    for (int64_t b = 0; b < kSeedBlocks; ++b) {
        const int64_t b0 = r0 + b * stride;
        scan(job.codes, job.nbytes, b0, std::min(r1, b0 + per_block), query, sample, job.allow);
    }
    int64_t rows[kSeedRank];
    int32_t dists[kSeedRank];
    if (sample.finish(rows, dists, kSeedRank) < kSeedRank) return -1;
    return dists[kSeedRank - 1];
}

// Queries [q0, q1) over rows [r0, r1), written with row stride k into rows / dists.
// More than one query: rows go by in cache-sized chunks and every query of the block scans a
// chunk while it is hot, so the codes come from memory once per block, not once per query.
// collect: the level's CollectFn for this code size, or nullptr.
inline void run_block(const SearchJob& job, const KernelSet& ks, int64_t q0, int64_t q1, int64_t r0, int64_t r1,
                      int64_t kin, int64_t* rows, int32_t* dists) {
    const ScanFn scan = ks.scan;
    const CollectFn collect = ks.collect;
    Scratch& s = thread_scratch();
    const int64_t nqb = q1 - q0;
    if (static_cast<int64_t>(s.states.size()) < nqb) s.states.resize(static_cast<size_t>(nqb));
    const int max_dist = static_cast<int>(job.nbytes * 8);
    for (int64_t i = 0; i < nqb; ++i) s.states[static_cast<size_t>(i)].reset(kin, max_dist);
    if (nqb == 1) {
        const uint8_t* query = job.queries + q0 * job.nbytes;
        TopK& st = s.states[0];
        int limit = sampled_limit(job, scan, query, r0, r1, kin, s.sample);
        if (limit >= 0 && collect != nullptr && (r1 - r0) * job.nbytes <= kCollectMaxBytes) {
            // the rows within the limit, gathered without a branch on the data, then sorted by
            // counting (merge_parts of one part: stable, so ties stay in row order)
            const int64_t cap = 4 * kin + 1024;
            s.cand_rows.resize(static_cast<size_t>(cap + 64));
            s.cand_dists.resize(s.cand_rows.size());
            const int64_t found = collect(job.codes, r0, r1, query, limit, job.allow, s.masks, s.any,
                                          s.cand_rows.data(), s.cand_dists.data(), cap);
            if (found >= kin) {
                s.sel_rows.resize(static_cast<size_t>(found));
                s.sel_dists.resize(s.sel_rows.size());
                merge_parts(s.cand_rows.data(), s.cand_dists.data(), 1, found, max_dist, s.sel_rows.data(),
                            s.sel_dists.data(), s.sel_counts);
                std::copy_n(s.sel_rows.data(), kin, rows);
                std::copy_n(s.sel_dists.data(), kin, dists);
                pad_results(rows, dists, kin, job.k);
                return;
            }
            // fewer than k rows within the limit: the scan without it; more than cap (a sample
            // unlike the rest): the scan with it
            if (found >= 0) limit = -1;
        }
        if (limit >= 0) st.limit(limit + 1);
        scan(job.codes, job.nbytes, r0, r1, query, st, job.allow);
        if (st.finish(rows, dists, job.k) < kin && limit >= 0) {  // fewer than k rows passed: again, in full
            st.reset(kin, max_dist);
            scan(job.codes, job.nbytes, r0, r1, query, st, job.allow);
            st.finish(rows, dists, job.k);
        }
        return;
    }
    // 24 KB of codes a chunk: within any L1 of 32 KB or more. (48 KB, more than this CPU's L1:
    // 100 queries at k = 100 over 1M x 64 bit ran at 9,300-10,400 queries/s against 10,900-11,300.)
    // With BatchKernels the chunk is transposed into s.words first and its queries scan that.
    // While they do, the next chunk's lines are requested into L2, a share before each query: a
    // block of 11 queries then no longer waits for memory at each chunk (1M x 256 bit, k = 10:
    // 0.42 -> 0.33 ms a query; README, Exact Hamming search).
    const int64_t chunk = std::max<int64_t>(64, (int64_t{24} * 1024 / job.nbytes) & ~int64_t{63});
    const bool transposed = ks.batch.scan != nullptr;
    if (transposed) s.words.resize(static_cast<size_t>(chunk * job.nbytes / 8));
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        const int64_t c1 = std::min(r1, c0 + chunk);
        const int64_t whole = transposed ? (c1 - c0) & ~int64_t{7} : 0;  // rows in s.words
        if (transposed) ks.batch.transpose(job.codes + c0 * job.nbytes, whole, s.words.data());
        const char* next = reinterpret_cast<const char*>(job.codes + c1 * job.nbytes);
        const int64_t next_lines = (std::min(r1, c1 + chunk) - c1) * job.nbytes / 64;
        const int64_t lines_per_query = (next_lines + nqb - 1) / nqb;
        for (int64_t i = 0; i < nqb; ++i) {
            for (int64_t l = i * lines_per_query, e = std::min(next_lines, l + lines_per_query); l < e; ++l)
                __builtin_prefetch(next + 64 * l, 0, 2);
            const uint8_t* query = job.queries + (q0 + i) * job.nbytes;
            TopK& st = s.states[static_cast<size_t>(i)];
            if (whole > 0) ks.batch.scan(s.words.data(), whole, c0, query, st, job.allow);
            if (c0 + whole < c1) scan(job.codes, job.nbytes, c0 + whole, c1, query, st, job.allow);
        }
    }
    for (int64_t i = 0; i < nqb; ++i)
        s.states[static_cast<size_t>(i)].finish(rows + i * job.k, dists + i * job.k, job.k);
}

// Bytes of codes per thread below which a single query is not split: starting a thread costs
// tens of microseconds, about what one core needs to stream 4 MB. Process-wide, changed only
// by tests (set_split_bytes) so that small inputs exercise the split-and-merge path.
inline std::atomic<int64_t>& min_split_bytes() {
    static std::atomic<int64_t> v{int64_t{4} << 20};
    return v;
}
constexpr int64_t kMaxQueryBlock = 32;

// The whole search. Call without the GIL; touches only the job's memory and thread scratch.
inline void search(const SearchJob& job, int threads, int level) {
    const int64_t total = job.nq * job.k;
    if (job.n == 0 || job.nq == 0) {
        std::fill(job.out_rows, job.out_rows + total, int64_t{-1});
        std::fill(job.out_dists, job.out_dists + total, int32_t{-1});
        return;
    }
    const KernelSet ks = select_kernels(level, job.nbytes);
    const int64_t kin = std::min(job.k, job.n);  // never more candidates than rows
    threads = std::max(1, threads);

    if (job.nq >= threads) {
        // Batches: threads take blocks of queries; each block scans all rows once.
        // blocks of at most kMaxQueryBlock queries, the same number for every thread
        const int64_t per_thread = (job.nq + threads - 1) / threads;
        const int64_t blocks_per_thread = (per_thread + kMaxQueryBlock - 1) / kMaxQueryBlock;
        const int64_t qb = (per_thread + blocks_per_thread - 1) / blocks_per_thread;
        const int64_t nblocks = (job.nq + qb - 1) / qb;
        const int nthreads = static_cast<int>(std::min<int64_t>(threads, nblocks));
        run_threads(nthreads, [&](int t) {
            for (int64_t b = t; b < nblocks; b += nthreads) {
                const int64_t q0 = b * qb, q1 = std::min(job.nq, q0 + qb);
                run_block(job, ks, q0, q1, 0, job.n, kin, job.out_rows + q0 * job.k,
                          job.out_dists + q0 * job.k);
            }
        });
        return;
    }

    // Fewer queries than threads: split the rows; each part keeps its own exact top-k of its
    // range, then the parts are merged per query (same tie rule: parts are in row order).
    const int64_t min_bytes = std::max<int64_t>(1, min_split_bytes().load(std::memory_order_relaxed));
    const int64_t max_parts = std::max<int64_t>(1, job.n * job.nbytes / min_bytes);
    const int nparts = static_cast<int>(std::min<int64_t>(threads, max_parts));
    if (nparts <= 1) {
        const int64_t qb = std::min(kMaxQueryBlock, job.nq);
        for (int64_t q0 = 0; q0 < job.nq; q0 += qb) {
            const int64_t q1 = std::min(job.nq, q0 + qb);
            run_block(job, ks, q0, q1, 0, job.n, kin, job.out_rows + q0 * job.k,
                      job.out_dists + q0 * job.k);
        }
        return;
    }
    // part results: [part][query][kin]
    std::vector<int64_t> part_rows(static_cast<size_t>(nparts * job.nq * kin));
    std::vector<int32_t> part_dists(part_rows.size());
    const int64_t step = ((job.n + nparts - 1) / nparts + 63) & ~int64_t{63};
    SearchJob sub = job;
    sub.k = kin;
    run_threads(nparts, [&](int t) {
        const int64_t r0 = std::min(job.n, t * step), r1 = std::min(job.n, r0 + step);
        int64_t* rows = part_rows.data() + static_cast<size_t>(t) * job.nq * kin;
        int32_t* dists = part_dists.data() + static_cast<size_t>(t) * job.nq * kin;
        run_block(sub, ks, 0, job.nq, r0, r1, kin, rows, dists);
    });
    const int max_dist = static_cast<int>(job.nbytes * 8);
    std::vector<int64_t> merged_rows(static_cast<size_t>(kin) * nparts);
    std::vector<int32_t> merged_dists(merged_rows.size());
    std::vector<int64_t> scratch;
    for (int64_t qi = 0; qi < job.nq; ++qi) {
        for (int p = 0; p < nparts; ++p) {
            const size_t src = (static_cast<size_t>(p) * job.nq + qi) * kin;
            std::copy_n(part_rows.data() + src, kin, merged_rows.data() + p * kin);
            std::copy_n(part_dists.data() + src, kin, merged_dists.data() + p * kin);
        }
        int64_t* out_r = job.out_rows + qi * job.k;
        int32_t* out_d = job.out_dists + qi * job.k;
        merge_parts(merged_rows.data(), merged_dists.data(), nparts, kin, max_dist, out_r, out_d,
                    scratch);
        pad_results(out_r, out_d, kin, job.k);
    }
}


// ---- multi-index hashing driver (tables and query: mih.h, mih_query.inc) ----

// A query through the multi-index gives up after this fraction of a one-thread scan's time
// (then scans: at most 1 + this fraction of a scan). The tables keep a balance of the time
// they saved against the scan (MultiIndex::credit_ns); when it falls below zero the next
// queries skip them for a while. (Before, one query over 9/10 of a scan's time made the next
// skip the tables: on 64-bit codes grown from real ones, 10M rows, k = 100, the few slow
// queries then sent fast ones to the scan, 0.42 ms a query with copied codes against 0.32 ms
// for the same queries without the pause, consecutive runs.)
// Process-wide, changed only by tests (set_multi_index_patience).
inline std::atomic<double>& mih_patience() {
    static std::atomic<double> v{1.0};
    return v;
}

using MihFn = int64_t (*)(const MultiIndex&, const uint8_t*, const uint8_t*, const uint8_t*,
                          Clock::time_point, UnorderedTopK&);

inline MihFn select_mih(int level) {
#if MEDHASH_X86
    if (level >= LEVEL_POPCNT) return &popcnt::mih_query;
#endif
    (void)level;
    return &portable::mih_query;
}

// Time a one-thread scan of (up to) the first 256 MiB of codes, best of three, into
// mi.scan_ns_per_row: what a query through the tables is measured against. Past the caches,
// like the real scans of a large index (a cache-sized sample made it 4x too fast, so queries
// gave up when they were still winning).
inline void calibrate_multi_index(MultiIndex& mi, const uint8_t* codes, int level) {
    const int64_t rows = std::min<int64_t>(mi.n, (int64_t{256} << 20) / std::max<int64_t>(1, mi.nbytes));
    if (rows == 0) return;
    const ScanFn scan = select_scan(level, mi.nbytes);
    TopK st;
    double best = 0.0;
    for (int rep = 0; rep < 3; ++rep) {
        st.reset(10, static_cast<int>(mi.nbytes * 8));
        const Clock::time_point t0 = Clock::now();
        scan(codes, mi.nbytes, 0, rows, codes + (rows / 2) * mi.nbytes, st, nullptr);
        const double ns = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
        best = rep == 0 ? ns : std::min(best, ns);
    }
    mi.scan_ns_per_row = best / static_cast<double>(rows);
}

// search() through the multi-index: rows [0, mi.n) by the tables, rows [mi.n, n) (added since
// the build) by the scan kernel, the two merged. Queries that give up, or that come while the
// index is pausing after a give-up, are scanned together by search(). Same results as search().
inline void search_multi(const SearchJob& job, const MultiIndex& mi, int threads, int level) {
    if (job.n == 0 || job.nq == 0 || mi.n > job.n || mi.nbytes != job.nbytes) {
        search(job, threads, level);
        return;
    }
    const MihFn query_fn = select_mih(level);
    const ScanFn scan = select_scan(level, job.nbytes);
    const int max_dist = static_cast<int>(job.nbytes * 8);
    const int64_t kin = std::min(job.k, job.n);
    const double scan_ns = mi.scan_ns_per_row * static_cast<double>(job.n);
    const auto patience = std::chrono::nanoseconds(
        static_cast<int64_t>(scan_ns * mih_patience().load(std::memory_order_relaxed)));
    std::vector<uint8_t> done(static_cast<size_t>(job.nq), 0);
    const int nthreads = static_cast<int>(std::min<int64_t>(std::max(1, threads), job.nq));
    run_threads(nthreads, [&](int t) {
        UnorderedTopK found;
        TopK tail;
        std::vector<int64_t> part_rows(static_cast<size_t>(2 * kin));
        std::vector<int32_t> part_dists(part_rows.size());
        std::vector<int64_t> merge_scratch;
        for (int64_t qi = t; qi < job.nq; qi += nthreads) {
            int pause = mi.skip.load(std::memory_order_relaxed);
            if (pause > 0 && mi.skip.compare_exchange_strong(pause, pause - 1)) continue;
            const uint8_t* query = job.queries + qi * job.nbytes;
            found.reset(kin, max_dist);
            const Clock::time_point start = Clock::now();
            const int64_t work = query_fn(mi, job.codes, query, job.allow, start + patience, found);
            const int64_t spent = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
            // a query that gave up cost its time and a scan besides; one that finished saved
            // the scan's time less its own, counted against kWinShare of the scan so that tables
            // about as fast as the scan (a noisy calibration can call them faster) are paused
            // (relaxed: concurrent queries may lose an update)
            const int64_t gain = work < 0 ? -spent : static_cast<int64_t>(scan_ns * kWinShare) - spent;
            const int64_t credit = std::min(mi.credit_ns.load(std::memory_order_relaxed) + gain,
                                            kCreditScans * static_cast<int64_t>(scan_ns));
            if (credit < 0) {  // losing on balance: pause for the next queries, longer each time
                const int b = mi.backoff.load(std::memory_order_relaxed);
                mi.skip.store(b, std::memory_order_relaxed);
                mi.backoff.store(std::min(64, 2 * b), std::memory_order_relaxed);
                mi.credit_ns.store(0, std::memory_order_relaxed);
            } else {
                mi.credit_ns.store(credit, std::memory_order_relaxed);
                if (gain > 0) mi.backoff.store(1, std::memory_order_relaxed);
            }
            if (work < 0) continue;
            int64_t* out_r = job.out_rows + qi * job.k;
            int32_t* out_d = job.out_dists + qi * job.k;
            if (mi.n == job.n) {
                found.finish(out_r, out_d, job.k);
            } else {
                found.finish(part_rows.data(), part_dists.data(), kin);
                tail.reset(kin, max_dist);
                scan(job.codes, job.nbytes, mi.n, job.n, query, tail, job.allow);
                tail.finish(part_rows.data() + kin, part_dists.data() + kin, kin);
                merge_parts(part_rows.data(), part_dists.data(), 2, kin, max_dist, out_r, out_d,
                            merge_scratch);
                pad_results(out_r, out_d, kin, job.k);
            }
            done[static_cast<size_t>(qi)] = 1;
        }
    });
    std::vector<int64_t> rest;
    for (int64_t qi = 0; qi < job.nq; ++qi)
        if (!done[static_cast<size_t>(qi)]) rest.push_back(qi);
    if (rest.empty()) return;
    if (static_cast<int64_t>(rest.size()) == job.nq) {
        search(job, threads, level);
        return;
    }
    std::vector<uint8_t> queries(rest.size() * static_cast<size_t>(job.nbytes));
    for (size_t i = 0; i < rest.size(); ++i)
        std::memcpy(queries.data() + i * job.nbytes, job.queries + rest[i] * job.nbytes,
                    static_cast<size_t>(job.nbytes));
    std::vector<int64_t> rows(rest.size() * static_cast<size_t>(job.k));
    std::vector<int32_t> dists(rows.size());
    SearchJob sub = job;
    sub.queries = queries.data();
    sub.nq = static_cast<int64_t>(rest.size());
    sub.out_rows = rows.data();
    sub.out_dists = dists.data();
    search(sub, threads, level);
    for (size_t i = 0; i < rest.size(); ++i) {
        std::copy_n(rows.data() + i * job.k, job.k, job.out_rows + rest[i] * job.k);
        std::copy_n(dists.data() + i * job.k, job.k, job.out_dists + rest[i] * job.k);
    }
}

}  // namespace medhash
