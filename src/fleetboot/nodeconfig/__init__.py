"""Node configuration in one request, node states, and every boot's timeline.

``fleetboot.nodeconfig.service.NodeConfigService`` is what the server runtime
runs; ``docs/architecture.md`` ("Node configuration") shows how it is wired in.
"""
