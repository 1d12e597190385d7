# Per-target settings only: nothing here touches global flags.

set(ZINF_LAYERS "" CACHE INTERNAL "zinf library layers, bottom first")

# The sanitizers every zinf target is built and linked with, if any.
set(ZINF_SANITIZERS "")
if(ZINF_SANITIZE)
  set(ZINF_SANITIZERS -fsanitize=address,undefined)
elseif(ZINF_TSAN)
  set(ZINF_SANITIZERS -fsanitize=thread)
endif()

# zinf_apply_defaults(<target>): the language level, warnings and sanitizers
# every zinf target (library, test, tool, bench) is built with.
function(zinf_apply_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF POSITION_INDEPENDENT_CODE ON)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wno-missing-field-initializers>)
  # GCC 12 reports -Wrestrict on plain std::string concatenation at -O2/-O3
  # (GCC bug 105329, fixed in 13): a false positive, so off for GCC < 13.
  target_compile_options(${target} PRIVATE
    $<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>>:-Wno-restrict>)
  if(ZINF_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(ZINF_SANITIZERS)
    target_compile_options(${target} PRIVATE ${ZINF_SANITIZERS} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE ${ZINF_SANITIZERS})
  endif()
  # libFuzzer's coverage instrumentation, so that the fuzz targets see the
  # branches of the layers they link; an undefined-behaviour report then
  # stops the run (and is written as a reproducer) instead of scrolling by.
  if(ZINF_FUZZ)
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer-no-link -fno-sanitize-recover=all)
  endif()
endfunction()

# zinf_add_layer(<name> SOURCES ... ): the library target zinf_<name>, exported
# as zinf::<name>, with include/ as its public include directory.
function(zinf_add_layer name)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  set(target zinf_${name})
  add_library(${target} ${ARG_SOURCES})
  add_library(zinf::${name} ALIAS ${target})
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${name} OUTPUT_NAME zinf_${name})
  target_include_directories(${target}
    PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${PROJECT_SOURCE_DIR}/src)
  zinf_apply_defaults(${target})
  if(ZINF_SANITIZERS)
    target_link_options(${target} INTERFACE ${ZINF_SANITIZERS})
  endif()
  install(TARGETS ${target} EXPORT zinfTargets)
  set(ZINF_LAYERS ${ZINF_LAYERS} ${target} CACHE INTERNAL "")
endfunction()

# zinf_add_test(<name> SOURCES ... LIBS ... [LABELS ...]): one GoogleTest binary,
# its tests discovered individually so ctest reports each one (and its skips).
function(zinf_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  zinf_apply_defaults(${name})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "${ARG_LABELS}")
endfunction()
