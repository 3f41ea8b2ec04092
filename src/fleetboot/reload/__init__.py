"""Disk reload: chunked compressed images, multicast and HTTP transports, deploys."""
