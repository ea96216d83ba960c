#!/bin/bash
# Prepare the benchmark corpora for bench_recordmcount.py (idempotent).
#
#   bench/prepare.sh            # everything goes to ${FTPATCH_BENCH_CACHE:-/var/tmp/ftpatch-bench}
#
# Makes, in the cache dir:
#   recordmcount             Debian's compiled recordmcount (from linux-kbuild-6.1)
#   modules-pristine/        every .ko of Debian 12's linux-image-*-amd64-unsigned,
#                            decompressed, with __mcount_loc removed by objcopy
#   modules-shipped-mcount-loc.json
#                            the __mcount_loc tables Debian shipped, before objcopy removed them:
#                            {module: sorted "section+0xoffset" of each entry}, for tests/test_record_modules.py
#   big20k.o                 20,000 functions, gcc -O1 -pg -mfentry -fno-pie
#   fsections8k.o            8,000 functions, gcc -O1 -pg -mfentry -mrecord-mcount -ffunction-sections
#   corpus.txt               packages used, file/byte/__fentry__ relocation counts
#
# Environment:
#   FTPATCH_BENCH_CACHE   cache dir (default /var/tmp/ftpatch-bench)
#   FTPATCH_BENCH_KPKG    kernel image package to use (default: the newest
#                         linux-image-6.1.0-N-amd64-unsigned, matching linux-kbuild-6.1)
#   FTPATCH_BENCH_FORCE=1 redo every step
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ELFSITES="$BENCH_DIR/../tests/oracles/elfsites.py"  # the tests' stdlib reader of objects
CACHE=${FTPATCH_BENCH_CACHE:-/var/tmp/ftpatch-bench}
FORCE=${FTPATCH_BENCH_FORCE:-0}
KBUILD_PKG=linux-kbuild-6.1
mkdir -p "$CACHE/debs"
cd "$CACHE"

log() { printf '[prepare] %s\n' "$*" >&2; }
done_stamp() { [ "$FORCE" != 1 ] && [ -e "$CACHE/.stamp-$1" ]; }
stamp() { touch "$CACHE/.stamp-$1"; }
need() { command -v "$1" >/dev/null || { log "missing $1: apt-get install $2"; exit 1; }; }
need dpkg-deb dpkg
need objcopy binutils
need gcc gcc
need python3 python3

apt_download() {  # apt-get download into debs/, retrying after apt-get update
    (cd "$CACHE/debs" && apt-get download "$@" 2>/dev/null) && return 0
    log "apt-get download $* failed; running apt-get update"
    apt-get update -qq
    (cd "$CACHE/debs" && apt-get download "$@")
}

have_pkg_list() { apt-cache show "$KBUILD_PKG" >/dev/null 2>&1; }
have_pkg_list || { log "apt lists empty; running apt-get update"; apt-get update -qq; }

# ---------------------------------------------------------------- recordmcount
if ! done_stamp kbuild || [ ! -x "$CACHE/recordmcount" ]; then
    rm -f debs/${KBUILD_PKG}_*.deb
    apt_download "$KBUILD_PKG"
    deb=$(ls debs/${KBUILD_PKG}_*.deb | head -1)
    rm -rf kbuild && mkdir kbuild
    dpkg-deb -x "$deb" kbuild
    rm=$(find kbuild -path '*/scripts/recordmcount' -type f | head -1)
    [ -n "$rm" ] || { log "recordmcount not found in $deb"; exit 1; }
    ln -sf "$rm" "$CACHE/recordmcount"
    echo "$KBUILD_PKG $(dpkg-deb -f "$deb" Version)" > kbuild.version
    stamp kbuild
fi
log "recordmcount: $(readlink -f "$CACHE/recordmcount") ($(cat kbuild.version))"

# ------------------------------------------------------------- kernel modules
if ! done_stamp modules || [ ! -d "$CACHE/modules-pristine" ] || [ ! -s "$CACHE/modules-shipped-mcount-loc.json" ]; then
    KPKG=${FTPATCH_BENCH_KPKG:-}
    if [ -z "$KPKG" ]; then
        KPKG=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' \
                 | awk '{print $1}' | sort -V | tail -1)
    fi
    [ -n "$KPKG" ] || { log "no linux-image-6.1.0-*-amd64-unsigned package found"; exit 1; }
    log "kernel package: $KPKG"
    ls debs/"${KPKG}"_*.deb >/dev/null 2>&1 || apt_download "$KPKG"
    deb=$(ls debs/"${KPKG}"_*.deb | head -1)
    rm -rf img modules-pristine.tmp && mkdir img modules-pristine.tmp
    log "extracting $deb"
    dpkg-deb -x "$deb" img
    moddir=$(ls -d img/lib/modules/*/ | head -1)
    # Move (not copy) every module, keeping the relative layout; decompress if needed.
    n_xz=0; n_zst=0; n_gz=0
    while IFS= read -r -d '' f; do
        rel=${f#"$moddir"}
        dst="modules-pristine.tmp/$rel"
        mkdir -p "$(dirname "$dst")"
        case "$f" in
            *.ko)     mv "$f" "$dst" ;;
            *.ko.xz)  xz -dc "$f" > "${dst%.xz}"; n_xz=$((n_xz+1)) ;;
            *.ko.zst) zstd -qdc "$f" > "${dst%.zst}"; n_zst=$((n_zst+1)) ;;
            *.ko.gz)  gzip -dc "$f" > "${dst%.gz}"; n_gz=$((n_gz+1)) ;;
        esac
    done < <(find "$moddir" -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
    log "decompressed: xz=$n_xz zst=$n_zst gz=$n_gz"
    before=$(python3 "$ELFSITES" count modules-pristine.tmp)
    log "keeping the shipped __mcount_loc tables in modules-shipped-mcount-loc.json"
    python3 "$ELFSITES" loc modules-pristine.tmp > modules-shipped-mcount-loc.json.tmp
    log "stripping __mcount_loc with objcopy (2 parallel)"
    find modules-pristine.tmp -name '*.ko' -print0 |
        xargs -0 -P2 -n50 sh -c 'for f; do objcopy -R __mcount_loc -R .rela__mcount_loc "$f"; done' sh
    rm -rf img modules-pristine
    mv modules-pristine.tmp modules-pristine
    mv modules-shipped-mcount-loc.json.tmp modules-shipped-mcount-loc.json
    {
        echo "kernel_package: $KPKG $(dpkg-deb -f "$deb" Version)"
        echo "kernel_deb: $CACHE/$deb"
        echo "compressed_modules: xz=$n_xz zst=$n_zst gz=$n_gz"
        echo "modules_as_shipped: $before"
    } > modules.info
    stamp modules
fi

# ------------------------------------------------------------------- big20k.o
if ! done_stamp big20k || [ ! -f "$CACHE/big20k.o" ]; then
    log "generating big20k.c and compiling it (about 12 s)"
    python3 - "$CACHE/big20k.c" <<'EOF'
import sys
N = 20000
with open(sys.argv[1], "w") as f:
    f.write("extern volatile int g;\n")
    for i in range(N):
        f.write(f"int f{i}(int x) {{ return x * {i % 97 + 3} + g + {i}; }}\n")
    f.write("int (*const table[])(int) = {\n")
    f.write(",\n".join(f"  f{i}" for i in range(N)))
    f.write("\n};\n")
EOF
    gcc -O1 -pg -mfentry -fno-pie -c "$CACHE/big20k.c" -o "$CACHE/big20k.o.tmp"
    mv "$CACHE/big20k.o.tmp" "$CACHE/big20k.o"
    stamp big20k
fi

# -------------------------------------------------------------- fsections8k.o
# One relocation table and one section a function, plus __mcount_loc: for bench/inprocess.py.
if ! done_stamp fsections8k || [ ! -f "$CACHE/fsections8k.o" ]; then
    log "generating fsections8k.c and compiling it (about 5 s)"
    python3 -c 'import sys; sys.stdout.write("".join(f"int f{i}(int x) {{ return x * {i} + 1; }}\n" for i in range(8000)))' \
        > "$CACHE/fsections8k.c"
    gcc -O1 -pg -mfentry -mrecord-mcount -ffunction-sections -c "$CACHE/fsections8k.c" -o "$CACHE/fsections8k.o.tmp"
    mv "$CACHE/fsections8k.o.tmp" "$CACHE/fsections8k.o"
    stamp fsections8k
fi

# ------------------------------------------------------------------ corpus.txt
if ! done_stamp corpus || [ ! -s "$CACHE/corpus.txt" ] \
        || [ "$CACHE/corpus.txt" -ot "$CACHE/.stamp-modules" ] \
        || [ "$CACHE/corpus.txt" -ot "$CACHE/.stamp-big20k" ]; then
    {
        echo "# ftpatch bench corpora ($(date -u +%FT%TZ))"
        echo "cache: $CACHE"
        echo "recordmcount: $(readlink -f "$CACHE/recordmcount")"
        echo "kbuild_package: $(cat kbuild.version)"
        cat modules.info
        echo "modules_pristine: $CACHE/modules-pristine"
        echo "modules_counts: $(python3 "$ELFSITES" count modules-pristine)"
        echo "big20k: $CACHE/big20k.o ($(gcc --version | head -1))"
        echo "big20k_counts: $(python3 "$ELFSITES" count big20k.o)"
        echo "disk_use: $(du -sh "$CACHE" | cut -f1)"
    } > corpus.txt.tmp
    mv corpus.txt.tmp corpus.txt
    stamp corpus
fi
cat "$CACHE/corpus.txt"
