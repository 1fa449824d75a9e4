#!/bin/sh
# Builds the libFuzzer harnesses against the library sources and runs each for a while.
#   Fuzz/run.sh [SECONDS] [HARNESS...]      (default: 600 s each; all harnesses)
# Harnesses: TensorStream SafeTensors Tokenizer Netpbm. Builds land in .build/fuzz/, corpora in
# .build/fuzz/corpus-NAME (seeded from Tests/Fixtures), crashes in .build/fuzz/crashes-NAME/.
# Not part of `swift build` or `swift test`: the harnesses need -sanitize=fuzzer, which SwiftPM
# does not pass, so CI is unaffected.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECONDS_EACH=${1:-600}
[ $# -gt 0 ] && shift
HARNESSES=${*:-TensorStream SafeTensors Tokenizer Netpbm}
OUT=$ROOT/.build/fuzz
mkdir -p "$OUT"
# Build from a snapshot of the sources, so that editing them during a long run cannot break
# the build of the next harness.
SNAP=$OUT/src-$$
rm -rf "$SNAP" && mkdir -p "$SNAP" && cp -R Sources/DiffEditCore Sources/CNetpbm Fuzz "$SNAP/"
LIB=$SNAP/DiffEditCore
# The parts of DiffEditCore that parse outside input; nothing here needs BLAS.
SOURCES="$LIB/IO/ByteIO.swift $LIB/IO/ToolError.swift $LIB/Format/DType.swift $LIB/Format/TensorRecord.swift
 $LIB/Format/TensorStream.swift $LIB/Kernels/Tensor.swift $LIB/Weights/SafeTensors.swift $LIB/Weights/ModelFolder.swift
 $LIB/Tokenizer/CLIPTokenizer.swift $LIB/Tokenizer/CLIPTokenizerFiles.swift $LIB/Tokenizer/JSONValue.swift
 $LIB/ImageIO/NetpbmImage.swift $LIB/IO/MemoryBudget.swift"

# The libnetpbm shim as a Clang module, as SwiftPM builds it.
mkdir -p "$SNAP/module"
cat > "$SNAP/module/module.modulemap" <<MAP
module CNetpbm { header "$SNAP/CNetpbm/include/netpbm_shim.h" export * }
MAP
clang -c -O1 -g -fsanitize=fuzzer-no-link,address -I/usr/include/netpbm -I"$SNAP/CNetpbm/include" \
        "$SNAP/CNetpbm/netpbm_shim.c" -o "$SNAP/netpbm_shim.o"

for h in $HARNESSES; do
    exe=$OUT/${h}Fuzzer
    echo "== building $h" >&2
    # shellcheck disable=SC2086
    swiftc -parse-as-library -sanitize=fuzzer,address -Onone -g -module-name ${h}Fuzz \
        -Xcc -I/usr/include/netpbm -I "$SNAP/module" \
        $SOURCES "$SNAP/Fuzz/FuzzSupport.swift" "$SNAP/Fuzz/${h}Fuzzer.swift" "$SNAP/netpbm_shim.o" -lnetpbm -o "$exe"
    corpus=$OUT/corpus-$h
    mkdir -p "$corpus" "$OUT/crashes-$h"
    case $h in
        TensorStream) find Tests/Fixtures -name '*.tensor' -size -24k -exec cp {} "$corpus/" \;
                      { printf 'DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=2\nmodel=m\n\n'; printf '\n%.0s' $(seq 12)
                        printf '\0\0\200?\0\0\0@'; head -c 56 /dev/zero; } > "$corpus/seed" ;;
        SafeTensors) # Small valid files (the fixture weights are larger than -max_len).
                     hdr='{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[2,2],"data_offsets":[8,16]}}'
                     { printf "$(printf '\\%03o' $(( ${#hdr} % 256 )) $(( ${#hdr} / 256 )))\0\0\0\0\0\0"; printf '%s' "$hdr"; head -c 16 /dev/urandom; } > "$corpus/valid" ;;
        Tokenizer) printf 'a photo of a cat' > "$corpus/cat"; printf 'A BOWL of Pears, 3.5kg!! ça' > "$corpus/mixed" ;;
        Netpbm) printf 'P3\n2 2\n255\n0 0 0 255 0 0 0 255 0 0 0 255\n' > "$corpus/p3"
                printf 'P7\nWIDTH 1\nHEIGHT 1\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n\1\2\3\4' > "$corpus/pam" ;;
    esac
    echo "== running $h for ${SECONDS_EACH}s" >&2
    DIFFEDIT_FUZZ_TOKENIZER=$ROOT/Tests/Fixtures/sd1/tokenizer ASAN_OPTIONS=detect_leaks=0 \
        "$exe" -max_total_time="$SECONDS_EACH" -max_len=32768 -rss_limit_mb=2048 -timeout=20 \
        -artifact_prefix="$OUT/crashes-$h/" -print_final_stats=1 "$corpus" 2>&1 | tail -n 30
done
rm -rf "$SNAP"
