"""Userspace device models (bhyve's usr.sbin/bhyve half): each knows its registers, not where it is mapped."""
