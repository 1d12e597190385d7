# zinf_find_system_library(<Target> HEADER <h> LIBRARY <name> [DEBIAN <pkg>] [REQUIRED])
#
# Finds a plain C library that ships a header and a shared object (liburing,
# libaio, ISA-L) and wraps it in an IMPORTED target <Target>. Used both by the
# build and by the installed zinfConfig.cmake, so a consumer resolves the same
# targets. Sets <Target>_FOUND in the caller's scope.
function(zinf_find_system_library target)
  cmake_parse_arguments(ARG "REQUIRED" "HEADER;LIBRARY;DEBIAN" "" ${ARGN})
  string(MAKE_C_IDENTIFIER "${target}" var)
  if(TARGET ${target})
    set(${var}_FOUND TRUE PARENT_SCOPE)
    return()
  endif()
  find_path(${var}_INCLUDE_DIR NAMES ${ARG_HEADER})
  find_library(${var}_LIBRARY NAMES ${ARG_LIBRARY})
  if(${var}_INCLUDE_DIR AND ${var}_LIBRARY)
    add_library(${target} UNKNOWN IMPORTED GLOBAL)
    set_target_properties(${target} PROPERTIES
      IMPORTED_LOCATION "${${var}_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${${var}_INCLUDE_DIR}")
    set(${var}_FOUND TRUE PARENT_SCOPE)
  elseif(ARG_REQUIRED)
    message(FATAL_ERROR "zinf: ${ARG_HEADER} / lib${ARG_LIBRARY} not found. "
                        "Install the Debian package: apt-get install ${ARG_DEBIAN}")
  else()
    set(${var}_FOUND FALSE PARENT_SCOPE)
  endif()
endfunction()
