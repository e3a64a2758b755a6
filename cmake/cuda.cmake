# The CUDA backend is compiled whenever nvcc exists (also in CI, which has no GPU), for sm_90a only.
set(K2_HAVE_CUDA OFF)
if(NOT K2_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES 90a)
    # NOTE: CMake 3.25 does not know nvcc 13's C++20 flag, so it is passed by hand.
    enable_language(CUDA)
    set(CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS} -std=c++20 --expt-relaxed-constexpr")
    # NOTE: fmt's imported target carries /usr/include; as -isystem it breaks libstdc++'s #include_next <math.h>
    # under nvcc. Declaring it implicit makes CMake drop it from CUDA compile lines.
    list(APPEND CMAKE_CUDA_IMPLICIT_INCLUDE_DIRECTORIES /usr/include)
    find_package(CUDAToolkit REQUIRED)
    set(K2_HAVE_CUDA ON)
  elseif(K2_CUDA STREQUAL "ON")
    message(FATAL_ERROR "K2_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()
message(STATUS "k2: CUDA backend ${K2_HAVE_CUDA}")
