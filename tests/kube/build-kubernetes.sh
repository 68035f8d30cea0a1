#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and kubelet v1.20.2 offline from Debian 12's
# `kubernetes` source package, for the kube-apiserver-on-the-shim tests (tests/kube/) and the
# real kubelet in the VM (tests/vm/test_vm_kubelet.py), and keeps build/pause/linux/pause.c of
# that tree beside the binaries (the VM test compiles its pause image from it).
#
# Usage: tests/kube/build-kubernetes.sh [kubelet]   prints the bin directory on its last line;
#   with `kubelet` (only the VM test needs it, minutes more) kubelet is built too
#   K8S_SQL_KUBE_CACHE   cache root (default /var/cache/k8s-sql-tests); binaries land in
#                        $K8S_SQL_KUBE_CACHE/kubernetes-<source version>/bin, and a second run
#                        with that directory complete builds nothing; a cache from before a
#                        command was added here gets only the missing commands built (the
#                        ones there are kept), and src/pause.c.
#   K8S_SQL_KUBE_KEEP=1  keep the build tree (source, GOPATH, Go cache) after a success.
#
# Package needs (apt, Debian 12), installed here when missing (root only):
#   dpkg-dev                              apt-get source unpacks with dpkg-source
#   golang-go                             Go 1.19, the toolchain Debian builds this package with
#   golang-github-modern-go-reflect2-dev  reflect2 v1.0.2 in place of the vendored v1.0.1
# (dpkg-dev brings xz-utils and patch, which dpkg-source needs), plus a deb-src entry for bookworm:
# /etc/apt/sources.list.d/k8s-sql-deb-src.sources, written here (then apt-get update) when
# `apt-cache showsrc kubernetes` does not know the version. Network: the Debian mirror only.
# A failed build leaves its tree in .../build for a look; the next run starts it afresh.
#
# How, and why this way:
# - GOPATH mode (GO111MODULE=off) as the package's debian/rules does: module mode with
#   -mod=vendor fails on Go 1.19 for this tree (issue #10).
# - pkg/generated/openapi/zz_generated.openapi.go is not in the tarball: it is generated with the
#   vendored openapi-gen, with the arguments and inputs build/root/Makefile.generated_files uses.
# - vendored github.com/modern-go/reflect2 v1.0.1 makes kube-apiserver crash on Go >= 1.18 at the
#   first custom-resource create (SIGSEGV in reflect2.(*UnsafeMapType).UnsafeIterate); v1.0.2 fixes it.
# - CGO_ENABLED=0, ldflags with the version kube's hack/lib/version.sh derives for this archive.
set -euo pipefail

VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBE_GIT_VERSION="v1.20.2"
KUBE_GIT_COMMIT="faecb196815e248d3ecfb03c680a4507229c2a56"
CMDS=(kube-apiserver kube-controller-manager kubectl)
[[ "${1:-}" == kubelet ]] && CMDS+=(kubelet)
PACKAGES=(dpkg-dev golang-go golang-github-modern-go-reflect2-dev)
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

CACHE_ROOT="${K8S_SQL_KUBE_CACHE:-/var/cache/k8s-sql-tests}"
DEST="${CACHE_ROOT}/kubernetes-${VERSION}"
BIN="${DEST}/bin"
PAUSE_C="${DEST}/src/pause.c"

log() { printf '[build-kubernetes] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

complete() {
  local c
  [[ -f "${BIN}/.complete" ]] || return 1
  for c in "${CMDS[@]}"; do [[ -x "${BIN}/${c}" ]] || return 1; done
  [[ -s "${PAUSE_C}" ]]
}

if complete; then
  log "cached: ${BIN}"
  echo "${BIN}"
  exit 0
fi

mkdir -p "${DEST}"
# One build at a time per cache directory (two pytest runs may start it together).
exec 9>"${DEST}/.lock"
flock 9
if complete; then
  log "cached (built by a concurrent run): ${BIN}"
  echo "${BIN}"
  exit 0
fi

START=$(date +%s)

# --- packages ------------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed" || missing+=("${p}")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (run: apt-get install ${missing[*]})"
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ -d "${REFLECT2_SRC}" ]] || die "${REFLECT2_SRC} not found (package golang-github-modern-go-reflect2-dev)"

export PATH="/usr/lib/go/bin:${PATH}"
go_version=$(go env GOVERSION)
[[ "${go_version}" == go1.19* ]] || log "warning: ${go_version}; this recipe is tested with Debian's Go 1.19"

# --- deb-src -------------------------------------------------------------------------------------
has_source() { apt-cache showsrc kubernetes 2>/dev/null | grep -qxF "Version: ${VERSION}"; }
if ! has_source; then
  [[ $(id -u) == 0 ]] || die "no deb-src entry gives kubernetes ${VERSION}; add one for bookworm (root needed)"
  list=/etc/apt/sources.list.d/k8s-sql-deb-src.sources
  if [[ ! -f "${list}" ]]; then
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
      # The same mirrors and suites as the binary entries (deb822), as source entries.
      sed -e 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"${list}.tmp"
    else
      {
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n'
        printf 'Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n'
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n'
        printf 'Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
      } >"${list}.tmp"
    fi
    mv "${list}.tmp" "${list}"
    log "added ${list}"
  fi
  log "apt-get update"
  apt-get update -qq
  has_source || die "kubernetes ${VERSION} is in no deb-src entry, even with ${list}"
fi

# --- source --------------------------------------------------------------------------------------
WORK="${DEST}/build"
rm -rf "${WORK}" "${BIN}.tmp"
mkdir -p "${WORK}"
cd "${WORK}"
log "apt-get source kubernetes=${VERSION}"
apt-get source -qq "kubernetes=${VERSION}" >apt-source.log 2>&1 \
  || { tail -20 apt-source.log >&2; die "apt-get source failed"; }
SRC=$(find "${WORK}" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
[[ -n "${SRC}" && -f "${SRC}/debian/rules" ]] || die "unpacked source not found in ${WORK}"

rm -rf "${SRC}/vendor/github.com/modern-go/reflect2"
cp -a "${REFLECT2_SRC}" "${SRC}/vendor/github.com/modern-go/reflect2"

export GOPATH="${WORK}/gopath"
export GOCACHE="${WORK}/gocache"
export GO111MODULE=off GOFLAGS="" GOPROXY=off CGO_ENABLED=0
unset GOBIN
mkdir -p "${GOPATH}/src/k8s.io"
ln -sfn "${SRC}" "${GOPATH}/src/k8s.io/kubernetes"
cd "${GOPATH}/src/k8s.io/kubernetes"
export GOROOT
GOROOT=$(go env GOROOT)

# --- openapi -------------------------------------------------------------------------------------
log "openapi-gen: pkg/generated/openapi/zz_generated.openapi.go"
go build -o "${WORK}/tools/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
# Inputs as Makefile.generated_files computes them: every dir with Go files (staging named as
# vendor/, the rest of vendor/ left out) whose files carry +k8s:openapi-gen=, minus
# code-generator and sample-apiserver.
dirs=$(find -H . \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune -o \
         -type f -name '*.go' -print \
       | sed -e 's|^./staging/src|vendor|' -e 's|/[^/]*$||' -e 's|^./||' | LC_ALL=C sort -u)
openapi_dirs=$(find -H ${dirs} -maxdepth 1 -type f -name '*.go' -print0 \
               | xargs -0 grep -l '^// *+k8s:' \
               | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
               | xargs grep -l '+k8s:openapi-gen=' | xargs -n1 dirname | LC_ALL=C sort -u)
inputs=$(for d in ${openapi_dirs}; do printf 'k8s.io/kubernetes/%s,' "${d}"; done)
"${WORK}/tools/openapi-gen" --logtostderr \
  -i "${inputs%,}" \
  -p k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
  -r "${WORK}/KUBE_violations.report" >"${WORK}/openapi-gen.log" 2>&1 \
  || { tail -20 "${WORK}/openapi-gen.log" >&2; die "openapi-gen failed"; }
[[ -s pkg/generated/openapi/zz_generated.openapi.go ]] || die "openapi-gen wrote no zz_generated.openapi.go"
diff "${WORK}/KUBE_violations.report" api/api-rules/violation_exceptions.list >&2 \
  || die "API rule violations differ from api/api-rules/violation_exceptions.list (as make would fail)"

# --- binaries ------------------------------------------------------------------------------------
ldflags="-s -w -buildid="
for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version \
           k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
  ldflags+=" -X ${pkg}.gitVersion=${KUBE_GIT_VERSION} -X ${pkg}.gitCommit=${KUBE_GIT_COMMIT}"
  ldflags+=" -X ${pkg}.gitTreeState=archive -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=20"
  ldflags+=" -X ${pkg}.buildDate=$(date -u -d @"$(stat -c %Y "${SRC}/debian/changelog")" +%Y-%m-%dT%H:%M:%SZ)"
done
mkdir -p "${DEST}/src"
cp build/pause/linux/pause.c "${PAUSE_C}.tmp" && mv "${PAUSE_C}.tmp" "${PAUSE_C}"
# Only what the cache lacks: a cache from before kubelet was added keeps its binaries.
build=()
for c in "${CMDS[@]}"; do [[ -x "${BIN}/${c}" && -f "${BIN}/.complete" ]] || build+=("${c}"); done
mkdir -p "${BIN}.tmp"
if ((${#build[@]})); then
  log "go build ${build[*]} ($(nproc) CPUs; this is the slow part)"
  go build -tags selinux,notest -trimpath -ldflags "${ldflags}" -o "${BIN}.tmp/" \
    "${build[@]/#/./cmd/}"
fi
for c in "${CMDS[@]}"; do
  [[ -x "${BIN}.tmp/${c}" ]] || cp -a "${BIN}/${c}" "${BIN}.tmp/" 2>/dev/null || die "${c} was not built"
done
"${BIN}.tmp/kubectl" version --client --short >&2
[[ ! -x "${BIN}.tmp/kubelet" ]] || "${BIN}.tmp/kubelet" --version >&2

END=$(date +%s)
{ [[ -f "${BIN}/.complete" ]] && cat "${BIN}/.complete"
  printf '%s\n' "source ${VERSION}" "go ${go_version}" "built ${build[*]:-nothing} in $((END - START)) s"
} >"${BIN}.tmp/.complete.new"
mv "${BIN}.tmp/.complete.new" "${BIN}.tmp/.complete"
rm -rf "${BIN}"
mv "${BIN}.tmp" "${BIN}"
[[ "${K8S_SQL_KUBE_KEEP:-0}" == 1 ]] || rm -rf "${WORK}"
log "built in $((END - START)) s: ${BIN}"
echo "${BIN}"
