# Warnings for k2's own targets only; third-party headers are included as SYSTEM.
add_library(k2_warnings INTERFACE)
target_compile_options(k2_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow=local -Wnon-virtual-dtor
    -Wno-missing-field-initializers>)
if(K2_WERROR)
  target_compile_options(k2_warnings INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
# scripts/test-sanitizers builds build-asan (address) and build-tsan (thread).
if(K2_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(K2_SANITIZE STREQUAL "address" OR K2_SANITIZE STREQUAL "ON")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(K2_SANITIZE)
  message(FATAL_ERROR "K2_SANITIZE=${K2_SANITIZE}: expected OFF, address (or ON) or thread")
endif()

# k2_add_library(name SOURCES...): a static library with k2's warnings and src/ on the include path.
function(k2_add_library name)
  add_library(${name} STATIC ${ARGN})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${name} PRIVATE k2_warnings)
endfunction()

# k2_add_test(name SOURCES... LIBS ...): a GoogleTest executable registered with ctest.
function(k2_add_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest_main k2_warnings)
  target_compile_definitions(${name} PRIVATE K2_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "${T_LABELS}"
    ENVIRONMENT "K2_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()
