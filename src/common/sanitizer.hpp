// Whether this build runs under ThreadSanitizer (the tsan preset). Code whose
// synchronization happens inside an uninstrumented library says so here and
// takes a path TSan can see (see docs/ARCHITECTURE.md, "ThreadSanitizer").
#pragma once

namespace zinf {

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
#else
inline constexpr bool kThreadSanitizer = false;
#endif

}  // namespace zinf
