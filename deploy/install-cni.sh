#!/bin/sh
# Init container: puts weft's CNI plugin and conflist on the host, where the
# kubelet's container runtime looks for them. Atomic renames so a runtime
# never sees a half-written file.
set -eu
install -d /host/opt/cni/bin /host/etc/cni/net.d
cp /usr/lib/weft/weft-net /host/opt/cni/bin/.weft-net.tmp
mv /host/opt/cni/bin/.weft-net.tmp /host/opt/cni/bin/weft-net
cp /usr/lib/weft/10-weft.conflist /host/etc/cni/net.d/.10-weft.conflist.tmp
mv /host/etc/cni/net.d/.10-weft.conflist.tmp /host/etc/cni/net.d/10-weft.conflist
