#!/bin/sh
# gpu_check.sh: prove `satchel exec --nv` on a machine with a real NVIDIA GPU.
#
# Builds a tiny CUDA program (nvcc, cudart linked statically) into an image together with a
# minimal root file system copied from this host (sh and the libraries the program needs), then
# runs inside the container, with --nv:
#   nvidia-smi -L            (the host's driver program, bound in by --nv)
#   /opt/gpu_check           (device query + a kernel whose result is checked on the host side)
# and once without --nv, where the same program must NOT see a GPU.
#
# Self-contained: needs only this repository, python3 >= 3.11, sh, nvcc, and, for a SIF image,
# mksquashfs (without it the image is a sandbox directory). It does not run ./scripts/install-deps:
# the exec path of satchel needs the standard library only, so the script writes a launcher that
# runs satchel from src/ (or uses .venv/bin/satchel when that works).
#
# Exit status: 0 all checks passed; 1 a check failed; 77 no NVIDIA GPU here (then the image is
# still built and run with --nv, which must degrade to one warning; nothing GPU-side is checked).
#
# Usage: bench/gpu_check.sh [--keep]
# Environment: NVCC, NVCC_FLAGS, PYTHON, SATCHEL, MKSQUASHFS (paths of the tools to use)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/satchel-gpucheck.XXXXXX)
KEEP=no
[ "${1:-}" = "--keep" ] && KEEP=yes
cleanup() { [ "$KEEP" = yes ] && echo "gpu_check: kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
chmod 755 "$WORK"

say() { echo "gpu_check: $*"; }
fail() { echo "gpu_check: FAILED: $*"; FAILED=yes; }
FAILED=no

# --- 1. satchel -------------------------------------------------------------------------------
pick_python() {
    for p in ${PYTHON:-} /usr/bin/python3 python3 python3.12 python3.11; do
        command -v "$p" >/dev/null 2>&1 || continue
        "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { command -v "$p"; return; }
    done
    return 1
}
PY=$(pick_python) || { say "no python3 >= 3.11 found: cannot run satchel"; exit 1; }
if [ -n "${SATCHEL:-}" ]; then
    :
elif [ -x "$ROOT/.venv/bin/satchel" ] && "$ROOT/.venv/bin/satchel" version >/dev/null 2>&1; then
    SATCHEL=$ROOT/.venv/bin/satchel
else
    mkdir -p "$WORK/bin"
    if PYTHONPATH="$ROOT/src" "$PY" -m satchel.launcher "$WORK/bin" satchel \
        && "$WORK/bin/satchel" version >/dev/null 2>&1; then
        SATCHEL=$WORK/bin/satchel
    else
        say "the launcher did not work; trying a venv with pip (offline: --no-build-isolation)"
        "$PY" -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q --no-deps \
            --no-build-isolation -e "$ROOT" >/dev/null 2>&1 \
            && SATCHEL=$WORK/venv/bin/satchel || { say "cannot set up satchel from $ROOT"; exit 1; }
    fi
fi
say "satchel: $SATCHEL ($("$SATCHEL" version 2>&1)), python $PY"

# --- 2. is there a GPU? -------------------------------------------------------------------------
HAVE_GPU=yes
SMI=$(command -v nvidia-smi 2>/dev/null || true)
[ -z "$SMI" ] && [ -x /usr/local/nvidia/bin/nvidia-smi ] && SMI=/usr/local/nvidia/bin/nvidia-smi
if [ -z "$SMI" ]; then
    HAVE_GPU=no; WHY="nvidia-smi not found"
elif ! "$SMI" -L >"$WORK/host-smi.txt" 2>&1; then
    HAVE_GPU=no; WHY="nvidia-smi -L failed: $(head -1 "$WORK/host-smi.txt")"
elif ! ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
    HAVE_GPU=no; WHY="no /dev/nvidiaN device"
fi
if [ "$HAVE_GPU" = yes ]; then
    say "host GPU(s):"; sed 's/^/    /' "$WORK/host-smi.txt"
else
    say "no NVIDIA GPU on this machine ($WHY)"
fi

# --- 3. the CUDA program -------------------------------------------------------------------------
NVCC=${NVCC:-$(command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc 2>/dev/null | head -1)}
if [ -z "$NVCC" ] || [ ! -x "$NVCC" ]; then
    say "nvcc not found (set NVCC=/path/to/nvcc): cannot build the CUDA program"
    [ "$HAVE_GPU" = yes ] && exit 1 || exit 77
fi
cat > "$WORK/gpu_check.cu" <<'EOF'
// Device query plus one kernel (y = a*x + y over 1M floats) checked element by element.
#include <cstdio>
#include <cuda_runtime.h>
__global__ void saxpy(int n, float a, const float *x, float *y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
int main() {
    int count = 0, driver = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        printf("NO-GPU: cudaGetDeviceCount: %s (count %d)\n", cudaGetErrorString(err), count);
        return 3;
    }
    cudaDriverGetVersion(&driver);
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("devices %d, device 0: %s, compute capability %d.%d, %zu MiB, driver API %d\n",
           count, prop.name, prop.major, prop.minor, prop.totalGlobalMem >> 20, driver);
    const int n = 1 << 20;
    float *x, *y, *hy = new float[n], *hx = new float[n];
    for (int i = 0; i < n; i++) { hx[i] = i; hy[i] = 1.0f; }
    if (cudaMalloc(&x, n * sizeof(float)) != cudaSuccess || cudaMalloc(&y, n * sizeof(float)) != cudaSuccess) {
        printf("FAIL: cudaMalloc\n"); return 1;
    }
    cudaMemcpy(x, hx, n * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(y, hy, n * sizeof(float), cudaMemcpyHostToDevice);
    saxpy<<<(n + 255) / 256, 256>>>(n, 2.0f, x, y);
    err = cudaDeviceSynchronize();
    cudaMemcpy(hy, y, n * sizeof(float), cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int i = 0; i < n; i++) if (hy[i] != 2.0f * i + 1.0f) bad++;
    printf("%s: saxpy on %d elements, %d wrong, kernel status %s\n", bad || err ? "FAIL" : "KERNEL-OK",
           n, bad, cudaGetErrorString(err));
    return bad || err ? 1 : 0;
}
EOF
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS/opt"
say "building the CUDA program with $NVCC (cudart static)"
if ! "$NVCC" -O2 -cudart static ${NVCC_FLAGS:-} -o "$ROOTFS/opt/gpu_check" "$WORK/gpu_check.cu" \
        >"$WORK/nvcc.log" 2>&1; then
    cat "$WORK/nvcc.log"; say "nvcc failed"; exit 1
fi

# --- 4. a minimal root file system from this host's files, and the image -------------------------
copy_with_libs() {  # copy a program and every library ldd names, at the same paths
    for f in "$@"; do
        mkdir -p "$ROOTFS$(dirname "$f")"; cp -L "$f" "$ROOTFS$f"
        ldd "$f" 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' |
        while read -r lib; do
            mkdir -p "$ROOTFS$(dirname "$lib")"; [ -e "$ROOTFS$lib" ] || cp -L "$lib" "$ROOTFS$lib"
        done
    done
}
mkdir -p "$ROOTFS/bin" "$ROOTFS/usr/bin" "$ROOTFS/etc" "$ROOTFS/proc" "$ROOTFS/sys" \
    "$ROOTFS/dev" "$ROOTFS/tmp" "$ROOTFS/root" "$ROOTFS/home" "$ROOTFS/.singularity.d/libs" \
    "$ROOTFS/.singularity.d/env"
SH=$(readlink -f /bin/sh)
copy_with_libs "$SH"
[ "$SH" = /bin/sh ] || cp -L "$SH" "$ROOTFS/bin/sh"
# the program's libraries (libstdc++, libc...; ldd names their host paths), at the same paths
ldd "$ROOTFS/opt/gpu_check" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' |
    while read -r lib; do mkdir -p "$ROOTFS$(dirname "$lib")"; [ -e "$ROOTFS$lib" ] || cp -L "$lib" "$ROOTFS$lib"; done
for tool in ls cat; do t=$(command -v $tool) && copy_with_libs "$t"; done
# What the driver's own files (bound in by --nv) link against: a real image has these from its
# distribution; this minimal one gets the host's (same glibc as the driver was built for).
copy_deps() {
    for f in "$@"; do
        [ -e "$f" ] || continue
        ldd "$f" 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' |
        while read -r lib; do
            case "$(basename "$lib")" in libcuda*|libnvidia*) continue ;; esac
            mkdir -p "$ROOTFS$(dirname "$lib")"; [ -e "$ROOTFS$lib" ] || cp -L "$lib" "$ROOTFS$lib"
        done
    done
}
for soname in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libgcc_s.so.1 libstdc++.so.6; do
    lib=$(ldconfig -p 2>/dev/null | awk -v n="$soname" '$1 == n && /x86-64|64bit/ {print $NF; exit}')
    [ -n "$lib" ] && [ -e "$lib" ] && { mkdir -p "$ROOTFS$(dirname "$lib")"; [ -e "$ROOTFS$lib" ] || cp -L "$lib" "$ROOTFS$lib"; }
done
copy_deps ${SMI:-} $(ldconfig -p 2>/dev/null | awk '/(libcuda\.so\.1|libnvidia-ml\.so\.1|libnvidia-ptxjitcompiler\.so\.1) /{print $NF}')
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOTFS/etc/passwd"
echo "root:x:0:" > "$ROOTFS/etc/group"
if ldd "$ROOTFS/opt/gpu_check" | grep -q cudart; then fail "cudart is linked dynamically"; fi

IMAGE=$ROOTFS
MKSQUASHFS=${MKSQUASHFS:-$(command -v mksquashfs 2>/dev/null)}
if [ -n "$MKSQUASHFS" ]; then
    if "$MKSQUASHFS" "$ROOTFS" "$WORK/rootfs.squashfs" -noappend -no-progress -quiet -all-root \
            >/dev/null 2>&1 &&
        PYTHONPATH="$ROOT/src" "$PY" -c 'import sys
from satchel.image import sif
sif.create(sys.argv[1], [sif.NewObject(datatype=sif.DATA_PARTITION, path=sys.argv[2],
           fs_type=sif.FS_SQUASH, part_type=sif.PART_PRIMSYS)])' "$WORK/gpu_check.sif" "$WORK/rootfs.squashfs"; then
        IMAGE=$WORK/gpu_check.sif
    else
        say "making the SIF failed: using the sandbox directory"
    fi
else
    say "mksquashfs not found: the image is a sandbox directory"
fi
say "image: $IMAGE"

# --- 5. the driver as satchel will see it ---------------------------------------------------------
# satchel finds driver libraries in the linker cache. Some GPU machines keep the driver in a
# directory that only LD_LIBRARY_PATH names (e.g. /usr/local/nvidia/lib64); then a private
# cache of those directories is made and handed to satchel with SATCHEL_LDCACHE.
if [ "$HAVE_GPU" = yes ] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    dirs=""
    for d in $(echo "${LD_LIBRARY_PATH:-}" | tr ':' ' ') /usr/local/nvidia/lib64 /usr/local/nvidia/lib \
             /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [ -e "$d/libcuda.so.1" ] && dirs="$dirs $d"
    done
    if [ -n "$dirs" ]; then
        say "libcuda.so.1 is not in /etc/ld.so.cache; private cache of:$dirs"
        printf '%s\n' $dirs > "$WORK/ld.so.conf"
        ldconfig -i -X -C "$WORK/ld.so.cache" -f "$WORK/ld.so.conf" 2>/dev/null
        export SATCHEL_LDCACHE=$WORK/ld.so.cache
    fi
fi
[ -n "$SMI" ] && export SATCHEL_GPU_BINPATH="$(dirname "$SMI"):${PATH:-/usr/bin:/bin}"

run() {  # run NAME ARGS...: satchel exec, output to $WORK/NAME.out, status in $RC
    name=$1; shift
    echo "\$ satchel exec $*" > "$WORK/$name.out"
    "$SATCHEL" exec "$@" >>"$WORK/$name.out" 2>&1; RC=$?
    echo "[exit $RC]" >> "$WORK/$name.out"
    sed 's/^/    /' "$WORK/$name.out"
}

# --- 6. no GPU: the degraded path --------------------------------------------------------------------
if [ "$HAVE_GPU" = no ]; then
    run nogpu --nv "$IMAGE" /opt/gpu_check
    if grep -q "WARNING: --nv: no NVIDIA driver" "$WORK/nogpu.out" && grep -q "^NO-GPU" "$WORK/nogpu.out"; then
        say "no NVIDIA GPU: image built, --nv degraded to one warning and the container ran;"
        say "the GPU check itself did NOT run (exit 77 = skipped)"
        exit 77
    fi
    say "FAILED: on a machine without a GPU, --nv should warn once and the program report NO-GPU"
    exit 1
fi

# --- 7. the GPU checks -----------------------------------------------------------------------------
say "host: kernel $(uname -r), $(ldconfig -p 2>/dev/null | grep -c -E 'libcuda|libnvidia') NVIDIA entries in the linker cache, devices: $(ls -d /dev/nvidia* 2>/dev/null | tr '\n' ' ')"
say "the program on the host, without a container:"
"$ROOTFS/opt/gpu_check" 2>&1 | sed 's/^/    /'
run smi --nv "$IMAGE" nvidia-smi -L
if [ "$RC" = 255 ] && grep -q '^FATAL' "$WORK/smi.out" && [ "$IMAGE" != "$ROOTFS" ]; then
    # e.g. no loop device or SquashFS in this kernel: the same root file system as a sandbox
    say "the SIF image could not be started here; retrying with the sandbox directory"
    IMAGE=$ROOTFS
    run smi --nv "$IMAGE" nvidia-smi -L
fi
[ "$RC" = 0 ] && grep -q "^GPU 0" "$WORK/smi.out" || fail "nvidia-smi -L inside the container"
run prog --nv "$IMAGE" /opt/gpu_check
[ "$RC" = 0 ] && grep -q "^KERNEL-OK" "$WORK/prog.out" || fail "the CUDA program inside the container"
run libs --nv "$IMAGE" ls /.singularity.d/libs
run plain "$IMAGE" /opt/gpu_check
[ "$RC" = 3 ] && grep -q "^NO-GPU" "$WORK/plain.out" || fail "without --nv the program must see no GPU"
# GPU selection: the first GPU by CUDA_VISIBLE_DEVICES, and none by NVIDIA_VISIBLE_DEVICES
export CUDA_VISIBLE_DEVICES=0; run cvd0 --nv "$IMAGE" /opt/gpu_check; unset CUDA_VISIBLE_DEVICES
[ "$RC" = 0 ] && grep -q "^KERNEL-OK" "$WORK/cvd0.out" || fail "CUDA_VISIBLE_DEVICES=0 with --nv"
export NVIDIA_VISIBLE_DEVICES=none; run nvdnone --nv "$IMAGE" /opt/gpu_check; unset NVIDIA_VISIBLE_DEVICES
[ "$RC" = 3 ] && grep -q "^NO-GPU" "$WORK/nvdnone.out" || fail "NVIDIA_VISIBLE_DEVICES=none must hide the GPUs"
if [ "$FAILED" = yes ]; then exit 1; fi
say "PASSED: nvidia-smi and a CUDA kernel ran in the container with --nv, not without it, and"
say "        CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES chose the GPUs"
exit 0
