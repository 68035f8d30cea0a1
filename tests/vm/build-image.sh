#!/usr/bin/env bash
# Builds (once) the Debian 12 VM disk the VM tests boot (tests/vm/): a debootstrap root of
# Debian's packages with systemd, openssh-server and linux-image-amd64, as a qcow2 image,
# plus the kernel and initrd to boot it with qemu's -kernel/-initrd (no bootloader).
#
# Usage: tests/vm/build-image.sh        prints the image directory on its last line
#   K8S_SQL_VM_CACHE    cache root (default /var/cache/k8s-sql-tests/vm); the image lands in
#                       $K8S_SQL_VM_CACHE/<release>-<hash>/, <hash> = sha256 of this script and
#                       the release, so changing this script builds a new image and a second run
#                       with that directory complete builds nothing.
#   K8S_SQL_VM_MIRROR   Debian mirror (default http://deb.debian.org/debian); the VM's apt uses it too.
#
# In the image directory: base.qcow2 (the disk; tests boot copy-on-write overlays of it and
# never write to it), vmlinuz, initrd.img, id_ed25519 (+.pub: root's SSH key, made here),
# ssh_host_ed25519_key.pub (for known_hosts), .complete (what was built, how long it took).
#
# The guest: root file system on /dev/vda (ext4, 10 GiB sparse), systemd-networkd with DHCP on
# every en*/eth* link (qemu's user-mode network: address 10.0.2.15, gateway and host 10.0.2.2,
# DNS 10.0.2.3), root login by key only, serial console on ttyS0, apt sources for bookworm,
# bookworm-updates and bookworm-security. Nothing else is added to debootstrap's default set
# (Priority required + important): the tests want a fresh, plain Debian.
#
# Host packages (Debian 12): debootstrap, qemu-utils (qemu-img), e2fsprogs (mkfs.ext4 -d),
# openssh-client (ssh-keygen), debian-archive-keyring. Must run as root (debootstrap).
# Network: the Debian mirror only.
set -euo pipefail

RELEASE="${K8S_SQL_VM_RELEASE:-bookworm}"
MIRROR="${K8S_SQL_VM_MIRROR:-http://deb.debian.org/debian}"
CACHE_ROOT="${K8S_SQL_VM_CACHE:-/var/cache/k8s-sql-tests/vm}"
DISK_SIZE=10G
INCLUDE=linux-image-amd64,openssh-server,systemd-sysv

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

HASH=$( { cat "${BASH_SOURCE[0]}"; echo "${RELEASE}"; } | sha256sum | cut -c1-12)
DEST="${CACHE_ROOT}/${RELEASE}-${HASH}"

complete() {
  local f
  [[ -f "${DEST}/.complete" ]] || return 1
  for f in base.qcow2 vmlinuz initrd.img id_ed25519 id_ed25519.pub ssh_host_ed25519_key.pub; do
    [[ -s "${DEST}/${f}" ]] || return 1
  done
}

if complete; then
  log "cached: ${DEST}"
  echo "${DEST}"
  exit 0
fi

# --- host tools ----------------------------------------------------------------------------------
export PATH="${PATH}:/usr/sbin:/sbin"
missing=()
for tool in debootstrap:debootstrap qemu-img:qemu-utils mkfs.ext4:e2fsprogs ssh-keygen:openssh-client \
            flock:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
((${#missing[@]} == 0)) || die "missing host packages: ${missing[*]} (apt-get install ${missing[*]})"
[[ $(id -u) == 0 ]] || die "debootstrap needs root"

mkdir -p "${DEST}"
# One build at a time per image (two pytest runs may start it together).
exec 9>"${DEST}/.lock"
flock 9
if complete; then
  log "cached (built by a concurrent run): ${DEST}"
  echo "${DEST}"
  exit 0
fi

START=$(date +%s)
WORK="${DEST}/build"
ROOT="${WORK}/root"
cleanup() {
  # debootstrap leaves /proc etc. mounted in the chroot when it fails half-way.
  local m
  for m in proc sys dev/pts dev; do mountpoint -q "${ROOT}/${m}" 2>/dev/null && umount -l "${ROOT}/${m}" || true; done
}
trap cleanup EXIT
cleanup
rm -rf "${WORK}"
mkdir -p "${WORK}"

# --- root file system ----------------------------------------------------------------------------
log "debootstrap ${RELEASE} from ${MIRROR} (+ ${INCLUDE})"
debootstrap --arch=amd64 --include="${INCLUDE}" \
  --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
  "${RELEASE}" "${ROOT}" "${MIRROR}" >"${DEST}/debootstrap.log" 2>&1 \
  || { tail -30 "${DEST}/debootstrap.log" >&2; tail -30 "${ROOT}/debootstrap/debootstrap.log" >&2 2>/dev/null || true;
       die "debootstrap failed (log: ${DEST}/debootstrap.log)"; }
cleanup

log "configure the guest"
echo k8s-sql-vm >"${ROOT}/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tk8s-sql-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"${ROOT}/etc/hosts"
printf '/dev/vda\t/\text4\terrors=remount-ro\t0\t1\n' >"${ROOT}/etc/fstab"
cat >"${ROOT}/etc/apt/sources.list" <<EOF
deb ${MIRROR} ${RELEASE} main
deb ${MIRROR} ${RELEASE}-updates main
deb ${MIRROR%/debian}/debian-security ${RELEASE}-security main
EOF
# qemu user-mode networking: DHCP from qemu; its DNS forwarder is 10.0.2.3 (no resolved in
# Debian 12's systemd package, so resolv.conf is static).
cat >"${ROOT}/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
echo 'nameserver 10.0.2.3' >"${ROOT}/etc/resolv.conf"
chroot "${ROOT}" systemctl enable systemd-networkd.service >/dev/null 2>&1
# ifupdown (Priority important) only brings up lo; networkd owns the NIC.
# Root logs in with the key made here, never with a password (sshd's default prohibit-password).
rm -f "${WORK}/id_ed25519" "${WORK}/id_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C k8s-sql-vm-test -f "${WORK}/id_ed25519"
install -d -m 0700 "${ROOT}/root/.ssh"
install -m 0600 "${WORK}/id_ed25519.pub" "${ROOT}/root/.ssh/authorized_keys"
[[ -s "${ROOT}/etc/ssh/ssh_host_ed25519_key.pub" ]] || chroot "${ROOT}" ssh-keygen -A >/dev/null
cp "${ROOT}/etc/ssh/ssh_host_ed25519_key.pub" "${WORK}/"
# No DNS lookups of the client by sshd (a slow resolver would delay every login).
echo 'UseDNS no' >"${ROOT}/etc/ssh/sshd_config.d/k8s-sql-test.conf"
chroot "${ROOT}" apt-get clean
rm -f "${ROOT}/etc/machine-id" && touch "${ROOT}/etc/machine-id"  # systemd makes one at first boot

# --- disk, kernel, initrd ------------------------------------------------------------------------
kernel=$(find "${ROOT}/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
initrd=$(find "${ROOT}/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n1)
[[ -n "${kernel}" && -n "${initrd}" ]] || die "no kernel or initrd in ${ROOT}/boot (linux-image-amd64, initramfs-tools)"
cp "${kernel}" "${WORK}/vmlinuz"
cp "${initrd}" "${WORK}/initrd.img"
log "mkfs.ext4 -d (${DISK_SIZE}, sparse) and qemu-img convert"
truncate -s "${DISK_SIZE}" "${WORK}/disk.raw"
mkfs.ext4 -q -F -L root -d "${ROOT}" "${WORK}/disk.raw"
qemu-img convert -f raw -O qcow2 "${WORK}/disk.raw" "${WORK}/base.qcow2"
rm -f "${WORK}/disk.raw"

END=$(date +%s)
for f in base.qcow2 vmlinuz initrd.img id_ed25519 id_ed25519.pub ssh_host_ed25519_key.pub; do
  mv "${WORK}/${f}" "${DEST}/${f}"
done
chmod 0444 "${DEST}/base.qcow2"
printf '%s\n' "release ${RELEASE}" "mirror ${MIRROR}" "kernel $(basename "${kernel}")" \
  "build seconds $((END - START))" >"${DEST}/.complete"
rm -rf "${WORK}"
# Images of older versions of this script are not used any more (each is ~0.7 GiB); one
# that another run holds the lock of is left alone.
for old in "${CACHE_ROOT}/${RELEASE}"-*; do
  [[ "${old}" != "${DEST}" && -d "${old}" ]] || continue
  (flock -n 8 && rm -rf "${old}") 8>>"${old}/.lock" || true
done
log "built in $((END - START)) s: ${DEST}"
echo "${DEST}"
