#!/usr/bin/env bash
# Builds the tiny guest of the guest-agent test (fdm-agent/tests/guest_agent.rs): the Debian cloud
# kernel and an initramfs made from Debian packages only: busybox-static, qemu-ga with the libraries
# `ldd` names, and the virtio modules the cloud kernel has as modules. Its init mounts the usual
# filesystems, loads the modules, starts qemu-ga on the guest-agent port and a tiny "application"
# (a loop that touches /run/app.ok and writes to the disk /dev/vda when there is one).
#
# Usage: scripts/build-test-guest.sh OUT_DIR
# Writes OUT_DIR/vmlinuz and OUT_DIR/initrd.img; cached: nothing is done when both exist and are
# newer than this script. Needs the packages of scripts/install-test-deps.sh; fetches the kernel
# package with `apt-get download` (the Debian registry) the first time.
set -euo pipefail

out=${1:?usage: build-test-guest.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ "$out/initrd.img" -nt "$self" ]; then
  exit 0
fi
for f in /bin/busybox /usr/sbin/qemu-ga; do
  [ -x "$f" ] || { echo "$f missing: run scripts/install-test-deps.sh" >&2; exit 1; }
done
command -v cpio >/dev/null || { echo "cpio missing: run scripts/install-test-deps.sh" >&2; exit 1; }

work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The kernel: the cloud flavour (virtio drivers, small), unpacked, never installed on the host.
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
if [ -z "$kpkg" ]; then
  apt-get update -qq
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
fi
[ -n "$kpkg" ] || { echo "no linux-image-cloud-amd64 kernel package found" >&2; exit 1; }
deb=$(ls "$out"/"$kpkg"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  (cd "$out" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg")
  deb=$(ls "$out"/"$kpkg"_*.deb | head -n1)
fi
dpkg -x "$deb" "$work/kernel"
kver=${kpkg#linux-image-}
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.new"

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,etc,lib/modules,usr/sbin}
cp /bin/busybox "$root/bin/busybox"
# The shell for init; init links the other applets (ps, pidof, kill, ...) at boot.
ln -s busybox "$root/bin/sh"

# qemu-ga and exactly the libraries it loads, at the paths the dynamic loader looks in.
cp /usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
for lib in $(ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# virtio-pci, virtio-serial (the agent's channel) and virtio-blk are modules in the cloud kernel, with their
# dependencies: insmod them in dependency order (busybox insmod reads no modules.dep).
depmod -b "$work/kernel" "$kver"
mods=()
for m in virtio_pci virtio_console virtio_blk; do
  while read -r kind path; do
    [ "$kind" = insmod ] || continue
    mods+=("$path")
  done < <(modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" 2>/dev/null || true)
done
loads=""
for path in "${mods[@]}"; do
  name=$(basename "$path")
  case " $loads " in *" $name "*) continue ;; esac
  src="$work/kernel${path#"$work/kernel"}"
  case "$name" in
    *.ko.xz) xz -dc "$src" > "$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$src" > "$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$src" "$root/lib/modules/$name" ;;
  esac
  loads="$loads $name"
done
# Built in (=y) needs nothing; say which so that a kernel change is visible in the build log.
for opt in CONFIG_VIRTIO_CONSOLE CONFIG_VIRTIO_BLK CONFIG_VIRTIO_PCI; do
  grep -h "^$opt=" "$work/kernel/boot/config-$kver" || echo "$opt not set"
done
echo "modules loaded at boot:$loads"

cat > "$root/init" <<INIT
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
for m in$loads; do insmod /lib/modules/\$m; done
# /dev/virtio-ports/NAME is made by udev, which this guest has not: find the port by its name.
port=
for i in 1 2 3 4 5 6 7 8 9 10; do
  for n in /sys/class/virtio-ports/*/name; do
    [ -e "\$n" ] || continue
    if [ "\$(cat "\$n")" = org.qemu.guest_agent.0 ]; then
      d=\${n%/name}; port=/dev/\${d##*/}
    fi
  done
  [ -n "\$port" ] && [ -e "\$port" ] && break
  sleep 0.2
done
if [ -n "\$port" ]; then
  mkdir -p /dev/virtio-ports && ln -sf "\$port" /dev/virtio-ports/org.qemu.guest_agent.0
  /usr/sbin/qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run -f /run/qemu-ga.pid
  echo "fdm-guest: qemu-ga started on \$port"
else
  echo "fdm-guest: no guest agent channel"
fi
# The application: proves it lives with /run/app.ok; writes to the disk when there is one, so
# that the host's disk counters move.
cat > /bin/app <<'APP'
#!/bin/sh
while :; do
  touch /run/app.ok
  [ -b /dev/vda ] && dd if=/dev/zero of=/dev/vda bs=64k count=4 conv=fsync 2>/dev/null
  sleep 1
done
APP
chmod +x /bin/app
/bin/app &
echo "fdm-guest: up"
while :; do sleep 60; done
INIT
chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$out/initrd.img.new" "$out/initrd.img"
echo "guest built in $out (kernel $kver)"
