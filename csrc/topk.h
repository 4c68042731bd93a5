// Exact top-k over small integer distances (Hamming: 0..nbits) by counting, not a heap.
//
// Tie rule (the spec is medhash_sdk.codes.brute_force_search): rows sorted by distance, equal
// distances by smaller row number. Rows are always offered in increasing row order, so a later
// row never beats an earlier row of the same distance.
//
// State: a threshold T such that only rows with distance < T can still enter the result, a
// histogram of the distances accepted so far, and an append-only candidate buffer (row order).
// Once k accepted rows have distance <= T-1, T drops: every later row of distance >= T-1 would
// rank behind k earlier rows. The scan loops compare whole SIMD vectors of distances against T
// and call push() only for the rare rows below it, so the hot loop never touches this state.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace medhash {

struct Candidate {
    int64_t row;
    int32_t dist;
};

// Result slots [from, to) hold no row: row -1, distance -1.
inline void pad_results(int64_t* rows, int32_t* dists, int64_t from, int64_t to) {
    for (int64_t i = from; i < to; ++i) {
        rows[i] = -1;
        dists[i] = -1;
    }
}

class TopK {
public:
    // Prepare for a new query: k results wanted, distances in [0, max_dist]. Reuses capacity.
    void reset(int64_t k, int max_dist) {
        k_ = k;
        max_dist_ = max_dist;
        threshold_ = max_dist + 1;  // accept everything until k rows are in
        below_ = 0;
        hist_.assign(static_cast<size_t>(max_dist) + 2, 0);
        buf_.clear();
        // Live candidates (distance <= T) never exceed 2k; compacting at 4k + 1024 keeps
        // the amortised cost O(1) per accepted row.
        cap_ = 4 * k + 1024;
        if (buf_.capacity() < static_cast<size_t>(std::min<int64_t>(cap_, 1 << 16)))
            buf_.reserve(static_cast<size_t>(std::min<int64_t>(cap_, 1 << 16)));
    }

    // Rows with distance < threshold() may still enter the result.
    int threshold() const { return threshold_; }

    // Accept only rows with distance < t from now on (call right after reset). If fewer than k
    // rows then pass, finish() writes fewer than k results and the caller must search again
    // without the limit.
    void limit(int t) { threshold_ = std::max(0, std::min(threshold_, t)); }

    // Offer a row whose distance is < threshold(); rows must come in increasing order.
    void push(int64_t row, int dist) {
        buf_.push_back(Candidate{row, dist});
        ++hist_[static_cast<size_t>(dist)];
        ++below_;
        // below_ = accepted rows with distance < T. Once k of them exist, rows at T-1 and
        // above can no longer enter: lower T, dropping the count of rows at the new T.
        while (below_ >= k_) {
            --threshold_;
            below_ -= hist_[static_cast<size_t>(threshold_)];
        }
        if (static_cast<int64_t>(buf_.size()) >= cap_) compact();
    }

    // Write the result, sorted by (distance, row), padded with row -1 / distance -1.
    // Returns how many real results were written (<= k).
    int64_t finish(int64_t* rows, int32_t* dists, int64_t k_out) {
        // Rows at distance < T all qualify (there are below_ < k of them); rows at distance
        // T fill the remaining slots in row order.
        const int T = threshold_;
        offsets_.assign(static_cast<size_t>(T) + 1, 0);
        int64_t pos = 0;
        for (int d = 0; d < T && d <= max_dist_; ++d) {
            offsets_[static_cast<size_t>(d)] = pos;
            pos += hist_[static_cast<size_t>(d)];
        }
        if (T <= max_dist_) offsets_[static_cast<size_t>(T)] = pos;
        const int64_t limit = std::min(k_, k_out);
        int64_t written = 0;
        for (const Candidate& c : buf_) {
            if (c.dist > T) continue;  // stale: rejected after it was buffered
            int64_t& o = offsets_[static_cast<size_t>(c.dist)];
            if (o < limit) {
                rows[o] = c.row;
                dists[o] = c.dist;
                ++o;
                ++written;
            }
        }
        pad_results(rows, dists, written, k_out);
        return written;
    }

private:
    void compact() {
        const int T = threshold_;
        size_t w = 0;
        for (size_t i = 0; i < buf_.size(); ++i)
            if (buf_[i].dist <= T) buf_[w++] = buf_[i];
        buf_.resize(w);
        // live rows are <= 2k - 1 < cap_ / 2, so the next compaction is far away
    }

    int64_t k_ = 1;
    int max_dist_ = 0;
    int threshold_ = 1;
    int64_t below_ = 0;
    int64_t cap_ = 0;
    std::vector<int64_t> hist_;
    std::vector<int64_t> offsets_;
    std::vector<Candidate> buf_;
};

// Merge per-part results (each sorted by (distance, row), parts in increasing row ranges,
// padding -1) into one top-k with the same tie rule, by a stable counting pass on distance.
inline void merge_parts(const int64_t* part_rows, const int32_t* part_dists, int nparts,
                        int64_t k, int max_dist, int64_t* rows, int32_t* dists,
                        std::vector<int64_t>& scratch) {
    scratch.assign(static_cast<size_t>(max_dist) + 1, 0);
    for (int p = 0; p < nparts; ++p)
        for (int64_t i = 0; i < k; ++i) {
            int32_t d = part_dists[p * k + i];
            if (d < 0) break;
            ++scratch[static_cast<size_t>(d)];
        }
    int64_t pos = 0;
    for (int d = 0; d <= max_dist; ++d) {
        int64_t c = scratch[static_cast<size_t>(d)];
        scratch[static_cast<size_t>(d)] = pos;
        pos += c;
    }
    int64_t written = 0;
    for (int p = 0; p < nparts; ++p)
        for (int64_t i = 0; i < k; ++i) {
            int32_t d = part_dists[p * k + i];
            if (d < 0) break;
            int64_t& o = scratch[static_cast<size_t>(d)];
            if (o < k) {
                rows[o] = part_rows[p * k + i];
                dists[o] = d;
                ++o;
                ++written;
            }
        }
    pad_results(rows, dists, written, k);
}


// Top-k of rows offered in any row order (multi-index hashing finds rows bucket by bucket).
// Same result and tie rule as TopK, but a later row may have a smaller row number, so every row
// at the k-th smallest distance so far is kept until finish() sorts them.
class UnorderedTopK {
public:
    void reset(int64_t k, int max_dist) {
        k_ = k;
        threshold_ = max_dist + 1;
        live_ = 0;
        closer_ = 0;
        hist_.assign(static_cast<size_t>(max_dist) + 2, 0);
        buf_.clear();
    }

    // Rows with distance < threshold() may still enter the result.
    int threshold() const { return threshold_; }

    // Rows kept with distance < threshold(): once >= k, the k-th distance is threshold() - 1.
    int64_t live() const { return live_; }
    int64_t k() const { return k_; }

    void push(int64_t row, int dist) {
        buf_.push_back(Candidate{row, dist});
        ++hist_[static_cast<size_t>(dist)];
        ++live_;
        if (dist < threshold_ - 1) ++closer_;
        // closer_ = rows at distance <= T - 2. Once k of them exist, distance T - 1 is out.
        while (closer_ >= k_) {
            --threshold_;
            live_ -= hist_[static_cast<size_t>(threshold_)];
            closer_ -= hist_[static_cast<size_t>(threshold_ - 1)];
        }
        if (buf_.size() >= 2 * static_cast<size_t>(live_) + 1024) compact();
    }

    // Sorted by (distance, row), padded with -1; returns how many real results (<= k_out).
    int64_t finish(int64_t* rows, int32_t* dists, int64_t k_out) {
        compact();
        std::sort(buf_.begin(), buf_.end(), [](const Candidate& a, const Candidate& b) {
            return a.dist != b.dist ? a.dist < b.dist : a.row < b.row;
        });
        const int64_t written = std::min<int64_t>({k_, k_out, static_cast<int64_t>(buf_.size())});
        for (int64_t i = 0; i < written; ++i) {
            rows[i] = buf_[static_cast<size_t>(i)].row;
            dists[i] = buf_[static_cast<size_t>(i)].dist;
        }
        pad_results(rows, dists, written, k_out);
        return written;
    }

private:
    void compact() {
        size_t w = 0;
        for (size_t i = 0; i < buf_.size(); ++i)
            if (buf_[i].dist < threshold_) buf_[w++] = buf_[i];
        buf_.resize(w);
    }

    int64_t k_ = 1;
    int threshold_ = 1;
    int64_t live_ = 0;
    int64_t closer_ = 0;
    std::vector<int64_t> hist_;
    std::vector<Candidate> buf_;
};

}  // namespace medhash
