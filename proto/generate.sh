#!/usr/bin/env bash
# Regenerates the TypeScript for proto/sana/v1/*.proto into services/common/gen/ (ts-proto, grpc-js services).
# With --check, generates into a temporary folder and fails when the committed output differs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=services/common/gen
OPTS=esModuleInterop=true,importSuffix=.js,env=node,outputServices=grpc-js,forceLong=bigint,oneof=unions-value,outputJsonMethods=false,annotateFilesWithVersion=false

generate() {
  rm -rf "$1" && mkdir -p "$1"
  protoc --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto --ts_proto_out="$1" --ts_proto_opt="$OPTS" \
    -I proto proto/sana/v1/*.proto
}

if [ "${1:-}" = "--check" ]; then
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  generate "$TMP/gen"
  if ! diff -r "$TMP/gen" "$OUT" >/dev/null; then
    diff -ru "$OUT" "$TMP/gen" | head -50 >&2 || true
    echo "generated proto code in $OUT is stale: run 'npm run proto' and commit the result" >&2
    exit 1
  fi
  echo "generated proto code is fresh"
else
  generate "$OUT"
  echo "generated $(find "$OUT" -name '*.ts' | wc -l) files in $OUT"
fi
