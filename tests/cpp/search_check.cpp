// Plain C++ check of csrc/ (no Python): medhash::search against a naive reference, for every
// code size and k, with and without an allow mask, 1-3 threads. Built and run by
// tests/test_cpp_headers.py natively, and for aarch64 under qemu where a cross compiler exists
// (the portable path: no x86 intrinsics there). Prints "N passed, 0 failed" and exits 0 on success.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "hamming.h"

namespace {

int popcount8(uint8_t x) { int c = 0; while (x) { c += x & 1; x >>= 1; } return c; }

// Reference: distance, then row, ascending; rows with allow == 0 skipped; -1 padding.
void reference(const std::vector<uint8_t>& codes, int64_t n, int64_t nb, const uint8_t* q, int64_t k,
               const std::vector<uint8_t>* allow, std::vector<int64_t>& rows, std::vector<int32_t>& dists) {
    std::vector<std::pair<int32_t, int64_t>> all;
    for (int64_t r = 0; r < n; ++r) {
        if (allow && !(*allow)[r]) continue;
        int32_t d = 0;
        for (int64_t b = 0; b < nb; ++b) d += popcount8(codes[r * nb + b] ^ q[b]);
        all.emplace_back(d, r);
    }
    std::sort(all.begin(), all.end());
    rows.assign(k, -1);
    dists.assign(k, -1);
    for (int64_t i = 0; i < k && i < static_cast<int64_t>(all.size()); ++i) {
        rows[i] = all[i].second;
        dists[i] = all[i].first;
    }
}

}  // namespace

int main() {
    std::mt19937_64 rng(12345);
    int passed = 0, failed = 0;
    const int level = medhash::detect_level();
    medhash::mih_patience().store(1e9);  // multi-index queries never give up here: the tables answer
    for (int64_t nb : {1, 2, 4, 8, 16, 24, 32, 40, 64}) {
        for (int64_t n : {0, 1, 7, 100, 1000, 5000}) {
            for (int distinct : {3, 256}) {   // few distinct byte values: many ties
                std::vector<uint8_t> codes(n * nb), queries(4 * nb);
                for (auto& c : codes) c = static_cast<uint8_t>(rng() % distinct);
                for (auto& c : queries) c = static_cast<uint8_t>(rng() % distinct);
                // multi-index tables (8-bit substrings) over the first 3/4 of the rows; the rest
                // is the tail that search_multi scans
                medhash::MultiIndex multi, copied;  // copied: the tables hold copies of the codes
                medhash::build_multi_index(multi, codes.data(), n - n / 4, nb, static_cast<int>(nb), 2);
                medhash::build_multi_index(copied, codes.data(), n - n / 4, nb, static_cast<int>(nb), 2, true);
                std::vector<uint8_t> allow(n);
                for (auto& a : allow) a = static_cast<uint8_t>(rng() % 3 != 0);
                for (int64_t k : {int64_t{1}, int64_t{10}, n + 3}) {
                    for (bool masked : {false, true}) {
                        // negative: through the multi-index (below -10: its copied-codes variant)
                        for (int threads : {1, 2, 3, -1, -2, -11, -12}) {
                            std::vector<int64_t> rows(4 * k);
                            std::vector<int32_t> dists(4 * k);
                            medhash::SearchJob job{codes.data(), n, nb, queries.data(), 4, k,
                                                   masked ? allow.data() : nullptr, rows.data(), dists.data()};
                            if (threads > 0)
                                medhash::search(job, threads, level);
                            else if (threads > -10)
                                medhash::search_multi(job, multi, -threads, level);
                            else
                                medhash::search_multi(job, copied, -threads - 10, level);
                            bool ok = true;
                            for (int64_t qi = 0; qi < 4; ++qi) {
                                std::vector<int64_t> want_rows;
                                std::vector<int32_t> want_dists;
                                reference(codes, n, nb, queries.data() + qi * nb, k, masked ? &allow : nullptr,
                                          want_rows, want_dists);
                                ok = ok && std::equal(want_rows.begin(), want_rows.end(), rows.begin() + qi * k)
                                        && std::equal(want_dists.begin(), want_dists.end(), dists.begin() + qi * k);
                            }
                            if (ok) {
                                ++passed;
                            } else {
                                ++failed;
                                std::printf("FAIL nbytes=%lld n=%lld k=%lld masked=%d threads=%d\n",
                                            static_cast<long long>(nb), static_cast<long long>(n),
                                            static_cast<long long>(k), masked ? 1 : 0, threads);
                            }
                        }
                    }
                }
            }
        }
    }
    std::printf("simd level: %s\n", medhash::level_name(level));
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
