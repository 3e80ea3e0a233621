# kind's base image (sigs.k8s.io/kind images/base), rebuilt from Debian packages so no registry
# is needed: systemd + containerd + runc + CNI plugins from Debian bookworm, kind's own files.
# Built by hack/kind/node-image.sh; context = kind's images/base/files, adjusted there.
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS build
COPY files/usr/local/bin/clean-install /usr/local/bin/clean-install
RUN chmod 0755 /usr/local/bin/clean-install && DEBIAN_FRONTEND=noninteractive clean-install \
      systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod libseccomp2 pigz \
      bash ca-certificates curl jq procps containerd runc containernetworking-plugins \
 && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf && ln -sf /usr/lib/systemd/systemd /sbin/init \
 && mkdir -p /opt/cni/bin && cp -a /usr/lib/cni/* /opt/cni/bin/ && ln -sf /usr/bin/containerd /usr/local/bin/containerd
COPY files/ /
RUN chmod 0755 /usr/local/bin/* /kind /kind/bin /kind/bin/* && systemctl enable kubelet.service \
 && systemctl enable containerd.service && systemctl enable undo-mount-hacks.service \
 && systemctl mask systemd-binfmt.service && mkdir -p /etc/kubernetes/manifests
RUN ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json && containerd --version && runc --version

FROM scratch
COPY --from=build / /
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]
