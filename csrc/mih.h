// Multi-index hashing (Norouzi, Punjani, Fleet, TPAMI 2014): exact k-NN in Hamming space that
// reads only the rows near the query. docs/architecture.md describes the algorithm, the README
// its measurements.
//
// A code of b bits is cut into m disjoint substrings (bit ranges; for 8-byte codes, any bits:
// choose_layout). If a row is at distance d
// from the query, some substring is within floor(d / m) of the query's substring (pigeonhole).
// Each substring has a table: the rows bucketed by their substring value. A query probes the
// tables' buckets by increasing radius (every value at distance r of the query's substring),
// each step the next radius of the table where it costs least, computes the full distance of
// the rows found, and stops once no unseen row can beat the k-th found (mih_query.inc).
//
// Memory: per table, rows as uint32 (4 bytes a row) in bucket order plus 2^h + 1 uint32 bucket
// offsets and a 2^h-bit map of the buckets that hold rows, with 2^h * 33 / 32 <= rows / m: at
// most 4m + 4 bytes a row (16 bytes for m = 3 at 64 bits, the size of the codes plus int64 ids). A substring wider than h bits is hashed to h bits; its
// buckets then hold other values too, which the query skips by comparing the substring.
//
// Copied codes (optional): each table also holds every row's code in its own bucket order
// (nbytes more a row a table), so a query reads a bucket's codes in sequence instead of one
// random read a row in the index's codes: random reads cost ~25x a sequential one here, and a
// query on learned codes checks tens of thousands of rows (README, multi-index benchmark).
//
// This header holds the tables and their build; the query loop is in mih_query.inc (compiled
// once per popcount instruction set, like the scan kernels).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "threads.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace medhash {

// Bits [begin, begin + len) of a code, len <= 32. Bit b is bit b % 8 (least significant first)
// of byte b / 8: the order of a little-endian word load, so 8-byte codes can use one.
inline uint64_t code_bits(const uint8_t* code, int begin, int len) {
    const int first = begin >> 3, last = (begin + len - 1) >> 3;
    uint64_t x = 0;
    for (int b = last; b >= first; --b) x = (x << 8) | code[b];
    return (x >> (begin & 7)) & ((uint64_t{1} << len) - 1);
}

constexpr int kMaxSubstringBits = 32;
constexpr int kMaxSubstrings = 64;  // so codes of up to 2048 bits
constexpr uint32_t kPrefetchRows = 32;  // copied codes: rows of a bucket requested ahead
constexpr uint32_t kRowsInFlight = 128;  // rows whose codes are requested ahead (row tables)
constexpr size_t kBucketsAhead = 4;  // buckets whose first rows are requested ahead (mih_query.inc)
constexpr int64_t kClockEvery = 512;  // units of work between two looks at the clock
constexpr double kWinShare = 0.9;  // a query through the tables wins when under this share of a scan
constexpr int64_t kCreditScans = 4;  // most scans' time the tables may bank (MultiIndex::credit_ns)
constexpr int kLayoutCandidates = 32;  // bit layouts tried for 64-bit codes (choose_layout)
constexpr int64_t kLayoutSample = 1 << 14;  // rows they are scored on
constexpr int kLayoutHashBits = 16;
using Clock = std::chrono::steady_clock;

struct MultiIndex {
    int64_t nbytes = 0;
    int64_t n = 0;  // rows covered: [0, n); later rows are scanned
    int m = 0;
    std::vector<int> begin, len, hbits;          // per substring: first bit, width, bucket bits
    // 8-byte codes: substring j is the bits of mask[j] (any bits of the little-endian word, in
    // increasing order), not a range; gather[8 * j + b][byte] is what byte b adds to its value
    std::vector<uint64_t> mask;
    std::vector<std::array<uint32_t, 256>> gather;
    std::vector<std::vector<uint32_t>> offsets;  // per substring: 2^h + 1 bucket starts
    std::vector<std::vector<uint32_t>> rows;     // per substring: n rows, bucket by bucket, in row order
    std::vector<std::vector<uint8_t>> codes;     // per substring, when copied: rows' codes in that order
    std::vector<std::vector<uint64_t>> filled;   // per substring: bit b set when bucket b holds rows

    // Adaptive fallback (search_multi in hamming.h): `credit` is the time the tables saved
    // against the scan over recent queries (capped at kCreditScans scans). Once they have lost
    // more than they saved (e.g. uniform codes), the next `skip` queries go straight to the
    // scan; the pause doubles each time (<= 64) until a query wins again.
    mutable std::atomic<int64_t> credit_ns{0};
    mutable std::atomic<int> skip{0};
    mutable std::atomic<int> backoff{1};
    // What a one-thread scan costs here, measured after the build (calibrate_multi_index in
    // hamming.h): a query gives up once it has spent a scan's time (mih_patience).
    double scan_ns_per_row = 0.0;

    // Value of substring j of a code.
    uint64_t value(int j, const uint8_t* code) const {
        if (mask.empty()) return code_bits(code, begin[static_cast<size_t>(j)], len[static_cast<size_t>(j)]);
        const std::array<uint32_t, 256>* g = gather.data() + 8 * j;
        uint64_t v = 0;
        for (int b = 0; b < 8; ++b) v |= g[b][code[b]];
        return v;
    }

    uint32_t bucket(int j, uint64_t value) const {
        const int h = hbits[static_cast<size_t>(j)];
        if (h >= len[static_cast<size_t>(j)]) return static_cast<uint32_t>(value);
        return static_cast<uint32_t>((value * 0x9E3779B97F4A7C15ULL) >> (64 - h));
    }

    size_t memory_bytes() const {
        size_t b = 0;
        for (const auto& o : offsets) b += o.size() * sizeof(uint32_t);
        for (const auto& r : rows) b += r.size() * sizeof(uint32_t);
        for (const auto& c : codes) b += c.size();
        for (const auto& f : filled) b += f.size() * sizeof(uint64_t);
        return b;
    }
};

// How many substrings nbits-bit codes may be cut into: each at most 32 bits, at least 1 bit.
inline std::pair<int64_t, int64_t> substring_range(int64_t nbits) {
    return {(nbits + kMaxSubstringBits - 1) / kMaxSubstringBits, std::min<int64_t>(nbits, kMaxSubstrings)};
}

// Substrings for nbits-bit codes and n rows: at most log2(n) bits each (the paper's rule,
// rounded towards more substrings), and few enough that the tables (4 bytes a row each, plus
// offsets) stay within the size of the codes plus int64 ids: m <= (nbytes + 8) / 4 - 1; always
// within substring_range().
inline int choose_substrings(int64_t nbits, int64_t n) {
    const double lg = std::max(8.0, std::log2(static_cast<double>(std::max<int64_t>(n, 2))));
    // rounded up: for 64-bit codes and 100M rows, rounding gives two 32-bit substrings, which
    // were slower than three on codes grown from real ones (README, multi-index benchmark)
    int64_t m = static_cast<int64_t>(std::ceil(static_cast<double>(nbits) / lg));
    m = std::min<int64_t>(m, (nbits / 8 + 8) / 4 - 1);
    const auto [lo, hi] = substring_range(nbits);
    return static_cast<int>(std::min<int64_t>(hi, std::max<int64_t>(lo, m)));
}

// Make substring j of 8-byte codes the bits of masks[j] (disjoint, covering the word).
inline void set_masks(MultiIndex& mi, const std::vector<uint64_t>& masks) {
    mi.mask = masks;
    mi.gather.assign(masks.size() * 8, {});
    for (size_t j = 0; j < masks.size(); ++j) {
        int at = 0;  // compact position of the next mask bit
        for (int bit = 0; bit < 64; ++bit) {
            if (!((masks[j] >> bit) & 1)) continue;
            for (int byte = 0; byte < 256; ++byte)
                if ((byte >> (bit & 7)) & 1) mi.gather[8 * j + static_cast<size_t>(bit >> 3)][static_cast<size_t>(byte)] |= uint32_t{1} << at;
            ++at;
        }
    }
}

// Which bits make up each substring of 8-byte codes. Learned codes have skewed, correlated
// bits, so a substring of neighbouring bits can take few values and its buckets crowd; the
// layout that spreads a sample of the codes over the most values (least sum of squared value
// counts, summed over substrings) wins among the contiguous ranges and kLayoutCandidates - 1
// fixed pseudo-random permutations of the bits. On codes grown from the default model's
// (benchmarks/realistic_codes.py, 10M) it cut the rows a query checks by a third.
inline std::vector<uint64_t> choose_layout(const uint8_t* codes, int64_t n, const std::vector<int>& widths) {
    const int64_t step = std::max<int64_t>(1, n / kLayoutSample);
    std::vector<uint64_t> words;
    for (int64_t r = 0; r < n; r += step) {
        uint64_t w;
        std::memcpy(&w, codes + 8 * r, 8);
        words.push_back(w);
    }
    uint64_t state = 0x853C49E6748FEA9BULL;  // splitmix64: the same candidates every build
    auto next = [&state] {
        uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    };
    std::vector<uint64_t> best;
    double best_score = 0.0;
    std::vector<uint32_t> counts(size_t{1} << kLayoutHashBits);
    for (int c = 0; c < kLayoutCandidates; ++c) {
        std::array<int, 64> perm;
        for (int i = 0; i < 64; ++i) perm[static_cast<size_t>(i)] = i;
        if (c > 0)
            for (int i = 63; i > 0; --i) std::swap(perm[static_cast<size_t>(i)], perm[next() % static_cast<uint64_t>(i + 1)]);
        std::vector<uint64_t> masks;
        for (size_t j = 0, at = 0; j < widths.size(); ++j) {
            uint64_t mk = 0;
            for (int i = 0; i < widths[j]; ++i) mk |= uint64_t{1} << perm[at++];
            masks.push_back(mk);
        }
        // sum of squared value counts, counted in a hashed table (a hash collision between two
        // values adds about the same to every candidate's score)
        double score = 0.0;
        for (uint64_t mk : masks) {
            std::fill(counts.begin(), counts.end(), 0);
            for (uint64_t w : words) ++counts[((w & mk) * 0x9E3779B97F4A7C15ULL) >> (64 - kLayoutHashBits)];
            for (uint32_t cnt : counts) score += static_cast<double>(cnt) * static_cast<double>(cnt);
        }
        if (c == 0 || score < best_score) {
            best_score = score;
            best = masks;
        }
    }
    return best;
}

// Reserve a table's memory and ask Linux to back it with huge pages before it is touched:
// queries read the tables at random places, and 4 KiB pages cost a TLB miss nearly every time.
template <class T>
inline void reserve_huge(std::vector<T>& v, size_t count) {
    v.clear();
    v.shrink_to_fit();
    v.reserve(count);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t page = uintptr_t{1} << 21;
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(v.data()) + page - 1) & ~(page - 1);
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(v.data()) + count * sizeof(T)) & ~(page - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

// Build the tables of rows [0, n) of codes. m: substrings (1..nbits, each <= 32 bits wide);
// copy_codes: each table also keeps the rows' codes in its order (see the top of this file).
inline void build_multi_index(MultiIndex& mi, const uint8_t* codes, int64_t n, int64_t nbytes,
                              int m, int threads, bool copy_codes = false) {
    const int nbits = static_cast<int>(nbytes * 8);
    mi.nbytes = nbytes;
    mi.n = n;
    mi.m = m;
    mi.begin.assign(static_cast<size_t>(m), 0);
    mi.len.assign(static_cast<size_t>(m), 0);
    mi.hbits.assign(static_cast<size_t>(m), 0);
    mi.offsets.assign(static_cast<size_t>(m), {});
    mi.rows.assign(static_cast<size_t>(m), {});
    mi.codes.assign(copy_codes ? static_cast<size_t>(m) : 0, {});
    mi.filled.assign(static_cast<size_t>(m), {});
    mi.credit_ns.store(0);
    mi.skip.store(0);
    mi.backoff.store(1);
    // bucket bits: 2^h * 33 / 32 <= n / m keeps the offsets (32 bits a bucket) and the bitmap
    // (1 bit) within 4 bytes a row over all tables
    int hmax = 1;
    while (hmax < 30 && (int64_t{33} << (hmax + 1)) * m <= 32 * std::max<int64_t>(n, 2)) ++hmax;
    for (int j = 0, at = 0; j < m; ++j) {
        const int w = nbits / m + (j < nbits % m ? 1 : 0);
        mi.begin[static_cast<size_t>(j)] = at;
        mi.len[static_cast<size_t>(j)] = w;
        mi.hbits[static_cast<size_t>(j)] = std::min(w, hmax);
        at += w;
    }
    if (nbytes == 8) set_masks(mi, choose_layout(codes, n, mi.len));
    else mi.mask.clear(), mi.gather.clear();
    auto build_table = [&](int j) {
        const size_t nb = size_t{1} << mi.hbits[static_cast<size_t>(j)];
        std::vector<uint32_t>& off = mi.offsets[static_cast<size_t>(j)];
        std::vector<uint32_t>& out = mi.rows[static_cast<size_t>(j)];
        reserve_huge(off, nb + 1);
        off.assign(nb + 1, 0);
        reserve_huge(out, static_cast<size_t>(n));
        out.resize(static_cast<size_t>(n));
        std::vector<uint32_t> keys(static_cast<size_t>(n));  // each row's bucket, computed once
        const uint8_t* p = codes;
        for (int64_t r = 0; r < n; ++r, p += nbytes) {
            const uint32_t key = mi.bucket(j, mi.value(j, p));
            keys[static_cast<size_t>(r)] = key;
            ++off[key + 1];
        }
        std::vector<uint64_t>& filled = mi.filled[static_cast<size_t>(j)];
        filled.assign((nb + 63) / 64, 0);
        for (size_t b = 0; b < nb; ++b)
            if (off[b + 1] != 0) filled[b >> 6] |= uint64_t{1} << (b & 63);
        for (size_t b = 0; b < nb; ++b) off[b + 1] += off[b];
        std::vector<uint32_t> cursor(off.begin(), off.end() - 1);
        for (int64_t r = 0; r < n; ++r) out[cursor[keys[static_cast<size_t>(r)]]++] = static_cast<uint32_t>(r);
        if (!copy_codes) return;
        std::vector<uint8_t>& copied = mi.codes[static_cast<size_t>(j)];
        reserve_huge(copied, static_cast<size_t>(n * nbytes));
        copied.resize(static_cast<size_t>(n * nbytes));
        auto gather_codes = [&](auto width) {  // width known at compile time: no memcpy call a row
            for (int64_t i = 0; i < n; ++i)
                std::memcpy(copied.data() + i * width, codes + int64_t{out[static_cast<size_t>(i)]} * width,
                            static_cast<size_t>(width));
        };
        if (nbytes == 8) gather_codes(std::integral_constant<int64_t, 8>{});
        else if (nbytes == 16) gather_codes(std::integral_constant<int64_t, 16>{});
        else gather_codes(nbytes);
    };
    const int nthreads = std::max(1, std::min(threads, m));
    run_threads(nthreads, [&](int t) {
        for (int j = t; j < m; j += nthreads) build_table(j);
    });
}

// Take rows out of the tables in place, as Index.remove() takes them out of its codes: removed
// (sorted ascending, unique) are row numbers of codes, whose rows are all still there; rows the
// tables do not cover (>= mi.n) need nothing. Each table loses those rows' entries (and copied
// codes), the buckets after them start one entry earlier per entry removed before them, and
// every row number above a removed row drops by one. One pass over each table: tens of
// milliseconds at 10M rows, against about a second to build them again.
inline void remove_multi_index_rows(MultiIndex& mi, const uint8_t* codes, const int64_t* removed, int64_t count) {
    std::vector<uint32_t> gone;
    for (int64_t i = 0; i < count; ++i)
        if (removed[i] < mi.n) gone.push_back(static_cast<uint32_t>(removed[i]));
    if (gone.empty()) return;
    const int64_t nb = mi.nbytes;
    const bool copied = !mi.codes.empty();
    for (int j = 0; j < mi.m; ++j) {
        std::vector<uint32_t>& off = mi.offsets[static_cast<size_t>(j)];
        std::vector<uint32_t>& rows = mi.rows[static_cast<size_t>(j)];
        std::vector<uint64_t>& filled = mi.filled[static_cast<size_t>(j)];
        uint8_t* copy = copied ? mi.codes[static_cast<size_t>(j)].data() : nullptr;
        std::vector<uint32_t> pos, buckets;  // each removed row's entry, and its bucket
        for (uint32_t r : gone) {
            const uint32_t b = mi.bucket(j, mi.value(j, codes + int64_t{r} * nb));
            uint32_t p = off[b];
            while (p < off[b + 1] && rows[p] != r) ++p;
            if (p == off[b + 1]) throw std::logic_error("multi-index tables out of step with the codes");
            pos.push_back(p);
            buckets.push_back(b);
        }
        std::sort(pos.begin(), pos.end());
        std::sort(buckets.begin(), buckets.end());
        // the entries between removed ones move down (onto themselves: out <= in), renumbered
        size_t w = 0;
        auto move_down = [&](size_t a, size_t b) {
            uint32_t* out = rows.data() + w;
            const uint32_t* in = rows.data() + a;
            if (gone.size() <= 16) {
                for (size_t i = 0; i < b - a; ++i) {
                    const uint32_t v = in[i];
                    uint32_t below = 0;
                    for (const uint32_t g : gone) below += v > g;
                    out[i] = v - below;
                }
            } else {
                for (size_t i = 0; i < b - a; ++i)
                    out[i] = in[i] - static_cast<uint32_t>(std::upper_bound(gone.begin(), gone.end(), in[i]) - gone.begin());
            }
            if (copied && w != a) std::memmove(copy + w * nb, copy + a * nb, (b - a) * static_cast<size_t>(nb));
            w += b - a;
        };
        size_t from = 0;
        for (const uint32_t p : pos) {
            move_down(from, p);
            from = size_t{p} + 1;
        }
        move_down(from, rows.size());
        rows.resize(w);
        if (copied) mi.codes[static_cast<size_t>(j)].resize(w * static_cast<size_t>(nb));
        // bucket b starts earlier by the entries removed from buckets before it
        size_t k = 0;
        for (size_t b = buckets.front() + 1; b < off.size(); ++b) {
            while (k < buckets.size() && buckets[k] < b) ++k;
            off[b] -= static_cast<uint32_t>(k);
        }
        for (uint32_t b : buckets)
            if (off[b] == off[b + 1]) filled[b >> 6] &= ~(uint64_t{1} << (b & 63));
    }
    mi.n -= static_cast<int64_t>(gone.size());
}

}  // namespace medhash
