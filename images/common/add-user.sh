#!/bin/sh
# Create the non-root user seer as uid/gid 1000, which the training pods' securityContext requires
# (runAsUser 1000). uid/gid 1000 may be taken already (Ubuntu 24.04 bases ship user and group `ubuntu`
# as 1000): free them first. Both images run this (COPY'd, then RUN sh).
set -e
if getent passwd 1000 >/dev/null; then userdel --remove "$(getent passwd 1000 | cut -d: -f1)"; fi
if getent group 1000 >/dev/null; then groupdel "$(getent group 1000 | cut -d: -f1)"; fi
groupadd --gid 1000 seer
useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin seer
