// run_threads: the one way the engine runs work on several threads (the scan's query blocks and
// row parts, the multi-index build). A worker's exception is re-raised in the caller after every
// thread has joined; a thread that cannot be started has its share done by the caller.
#pragma once

#include <exception>
#include <thread>
#include <vector>

namespace medhash {

// Call work(t) for t = 0 .. nthreads - 1, t = 0 on the calling thread.
template <class F>
inline void run_threads(int nthreads, F&& work) {
    if (nthreads <= 1) {
        work(0);
        return;
    }
    std::vector<std::exception_ptr> errors(static_cast<size_t>(nthreads));
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(nthreads - 1));
    for (int t = 1; t < nthreads; ++t) {
        try {
            pool.emplace_back([&, t] {
                try {
                    work(t);
                } catch (...) {
                    errors[static_cast<size_t>(t)] = std::current_exception();
                }
            });
        } catch (...) {  // could not start a thread: do its share here
            errors[static_cast<size_t>(t)] = nullptr;
            try {
                work(t);
            } catch (...) {
                errors[static_cast<size_t>(t)] = std::current_exception();
            }
        }
    }
    try {
        work(0);
    } catch (...) {
        errors[0] = std::current_exception();
    }
    for (std::thread& th : pool) th.join();
    for (const std::exception_ptr& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace medhash
