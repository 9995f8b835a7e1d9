# Sourced by demo.sh and test.sh: makes sure the system programs and .venv exist.
# pip's cache (~/.cache/pip) lives outside the clone, so a second run installs nothing new.
set -euo pipefail

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
if [ "${MUSICREP_WITH_TEST_TOOLS:-0}" = 1 ]; then
  command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
  command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
  # Headless Chromium renders the probe reports in tests/probes/test_report_pages.py.
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: missing ${need_apt[*]}; install them (Debian: apt-get install ${need_apt[*]})" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  python3 -m venv .venv
fi
extras=""
[ "${MUSICREP_WITH_TEST_TOOLS:-0}" = 1 ] && extras="[test]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extras}"

# Prism, Beam's portable local runner (a Go program), for the runner tests and for
# --runner=PrismRunner/DirectRunner offline: built once per machine from the Go module
# proxy into Go's bin folder (~/go/bin, outside the clone). Where `go` exists a failed
# build stops here, so CI cannot skip the Prism tests; without `go` the tests fall back
# to Beam's own download of the binary.
if [ "${MUSICREP_WITH_TEST_TOOLS:-0}" = 1 ] && [ -z "${MUSICREP_PRISM:-}" ] && command -v go >/dev/null 2>&1; then
  prism_bin="$(go env GOBIN)"
  prism_bin="${prism_bin:-$(go env GOPATH)/bin}/prism"
  if [ ! -x "$prism_bin" ]; then
    echo "building Prism (go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0)" >&2
    go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0
  fi
  export MUSICREP_PRISM="$prism_bin"
fi

# A real Flink for the Flink tests (tests/pipelines/test_flink.py): Flink 1.16.3's
# distribution from PyPI and Beam 2.50's Flink job server built with Maven
# (docker/flink/pom.xml), fetched once per machine into ~/.cache/musicrep/flink (pip's
# cache and ~/.m2 make a second machine's fetch fast). Where Java and Maven exist the
# tests require it (MUSICREP_REQUIRE_FLINK=1): a failed fetch fails CI, never skips it.
if [ "${MUSICREP_WITH_TEST_TOOLS:-0}" = 1 ] && command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then
  .venv/bin/musicrep flink-cluster fetch >/dev/null
  export MUSICREP_REQUIRE_FLINK="${MUSICREP_REQUIRE_FLINK:-1}"
fi
