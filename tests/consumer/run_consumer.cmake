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
run(configure ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE} -DCMAKE_PREFIX_PATH=${prefix} ${torch_arg})
run(build ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(execute ${WORK_DIR}/build/consumer)
file(REMOVE_RECURSE ${WORK_DIR})
