# Script mode (cmake -P): install, configure the consumer, build it, run it.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package consumer: ${step} failed (${rc}):\n${out}")
  endif()
  message(STATUS "${step}: ok")
endfunction()

run(install ${CMAKE_COMMAND} --install ${ZINF_BINARY_DIR} --prefix ${prefix})
set(torch_arg "")
if(Torch_DIR)
  set(torch_arg -DTorch_DIR=${Torch_DIR})
endif()
string(REPLACE "|" ";" prefix_path "${prefix}|${SEARCH_CMAKE_PREFIX_PATH}")
string(REPLACE "|" ";" include_path "${SEARCH_CMAKE_INCLUDE_PATH}")
string(REPLACE "|" ";" library_path "${SEARCH_CMAKE_LIBRARY_PATH}")
run(configure ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE} "-DCMAKE_PREFIX_PATH=${prefix_path}"
    "-DCMAKE_INCLUDE_PATH=${include_path}" "-DCMAKE_LIBRARY_PATH=${library_path}" ${torch_arg})
run(build ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(execute ${WORK_DIR}/build/consumer)
file(REMOVE_RECURSE ${WORK_DIR})
