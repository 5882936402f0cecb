// alloy/core/test_hooks.h: deterministic pause points for the race tests (tests/core/test_races.cpp).
//
// A race between alloy and another process (a directory created at OUT during a merge, a tokenizer
// swapped for a symlink, an input truncated, a signal) cannot be tested by timing. In builds with
// ALLOY_TEST_HOOKS (the default when the tests are built; off with -DALLOY_TESTS=OFF), a run whose
// environment has ALLOY_TEST_PAUSE_AT=<point> and ALLOY_TEST_PAUSE_FILE=<path> creates <path> when
// it reaches <point> and waits, up to 60 s, until the test deletes it. Points: "before-publish"
// (StagingDirectory::publish), "after-first-tensor" (the merge executor).
#pragma once

namespace alloy {

// Does nothing unless test hooks are compiled in and the environment selects `point`.
void test_pause_point(const char* point);

}  // namespace alloy
