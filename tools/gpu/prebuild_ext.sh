#!/usr/bin/env bash
# Prebuild the SharQ CUDA kernels as a plain TORCH_LIBRARY shared library on a CPU-only machine,
# against a downloaded torch wheel's headers/libs (no GPU needed; nvcc needed), so the GPU call
# can skip compiling. Loaded with torch.ops.load_library via SHARQ_EXT_LIB.
#   TORCH_ROOT=/tmp/torch211/torch PYINC=/root/.pyenv/versions/3.12.1/include/python3.12 \
#     bash tools/gpu/prebuild_ext.sh build/prebuilt/libsharq_C.so
# (torch wheel: pip download torch==2.11.0 --no-deps --python-version 3.12 --only-binary=:all:
#  --platform manylinux_2_28_x86_64, then unzip torch/include/* torch/lib/*).
# EXTRA_NVFLAGS: more nvcc flags (e.g. -D... for a same-session A/B of a kernel variant).
set -euo pipefail
OUTSO="${1:-build/prebuilt/libsharq_C.so}"
TORCH_ROOT="${TORCH_ROOT:?set TORCH_ROOT to an unpacked torch/ dir}"
PYINC="${PYINC:?set PYINC to the target Python include dir}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
TMP="$(mktemp -d)"
mkdir -p "$(dirname "$OUTSO")"
# sources, arch (TORCH_CUDA_ARCH_LIST, default 9.0a) and flags: sharq_vllm/kernels/build.py, the
# definition setup.py and the JIT build use (importing it needs no torch)
BUILD=(env PYTHONPATH="$PWD" python3 -m sharq_vllm.kernels.build)
read -r -a NVFLAGS <<< "$("${BUILD[@]}" nvcc-flags) -Xcompiler -fPIC ${EXTRA_NVFLAGS:-}"
read -r -a CXXFLAGS <<< "$("${BUILD[@]}" cxx-flags) -fPIC"
read -r -a SOURCES <<< "$("${BUILD[@]}" sources)"
OBJS=()
for src in "${SOURCES[@]}"; do
  obj="$TMP/$(basename "$src").o"
  OBJS+=("$obj")
  if [[ "$src" == *.cu ]]; then
    nvcc "${NVFLAGS[@]}" -c "$src" -o "$obj" 2> "$obj.ptxas" &
  else
    g++ "${CXXFLAGS[@]}" -D_GLIBCXX_USE_CXX11_ABI=1 -DTORCH_EXTENSION_NAME=_C \
      -I"$TORCH_ROOT/include" -I"$TORCH_ROOT/include/torch/csrc/api/include" -I"$CUDA_HOME/include" \
      -I"$PYINC" -c "$src" -o "$obj" &
  fi
done
for job in $(jobs -p); do wait "$job"; done
g++ -shared -o "$OUTSO" "${OBJS[@]}" \
  -L"$TORCH_ROOT/lib" -lc10 -lc10_cuda -ltorch -ltorch_cpu -ltorch_cuda \
  -L"$CUDA_HOME/lib64" -lcudart -Wl,--as-needed
grep -E "registers|spill" "$TMP"/*.ptxas | sed 's/.*ptxas info *: //' | sort | uniq -c | head -40 || true
md5sum sharq_vllm/csrc/* > "$(dirname "$OUTSO")/SOURCES.md5"   # gpu_check.sh skips a stale library
ls -la "$OUTSO"
rm -rf "$TMP"
