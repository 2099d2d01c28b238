#!/usr/bin/env bash
# Installs what the multi-host tests need when it is missing: network namespaces and bridge filtering
# (iproute2, nftables), ICMP for the isolation check (iputils-ping), per-host datastore views (fuse3,
# bindfs), libvirt with QEMU for the real-VM case, headless Chromium for the status-page test, jq
# for scripts/lab.sh's checks of `fdmctl --output json`, and for the metrics tests promtool
# (Debian's `prometheus` package: `promtool check rules` on dist/, `promtool check metrics` on the
# scrapes) and the Prometheus project's reference exposition parsers (`python3-prometheus-client`,
# for Debian's /usr/bin/python3), and for the guest-agent test's tiny guest (scripts/build-test-guest.sh)
# busybox-static, qemu-guest-agent (its qemu-ga goes into the guest's initramfs), cpio and kmod; that
# script fetches the Debian cloud kernel itself with `apt-get download`. Needs root; safe to run again.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have nft || need+=(nftables)
have ping || need+=(iputils-ping)
have bindfs || need+=(bindfs fuse3)
have virsh || need+=(libvirt-clients)
have libvirtd || [ -x /usr/sbin/libvirtd ] || need+=(libvirt-daemon libvirt-daemon-driver-qemu)
have qemu-system-x86_64 || need+=(qemu-system-x86)
have promtool || need+=(prometheus)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null ||
  need+=(python3-prometheus-client)
have chromium || have chromium-browser || need+=(chromium)
have jq || need+=(jq)
[ -x /bin/busybox ] || need+=(busybox-static)
[ -x /usr/sbin/qemu-ga ] || need+=(qemu-guest-agent)
have cpio || need+=(cpio)
have depmod || [ -x /usr/sbin/depmod ] || need+=(kmod)

if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# libvirt's QEMU driver under TCG in a container-like machine: no cgroups, no security driver, root.
# Debian ships the config files only with libvirt-daemon-system (systemd units we do not want here).
if [ -d /etc/libvirt ] && ! grep -qs '^# fdm-test' /etc/libvirt/qemu.conf; then
  getent passwd libvirt-qemu >/dev/null || useradd -r -s /usr/sbin/nologin libvirt-qemu || true
  cat >> /etc/libvirt/qemu.conf <<'CONF'
# fdm-test: settings for the multi-host tests (TESTBED.md)
user = "root"
group = "root"
cgroup_controllers = [ ]
security_driver = "none"
CONF
fi
echo "test dependencies present"
