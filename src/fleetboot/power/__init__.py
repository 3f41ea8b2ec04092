"""Power control through nodes' BMCs: IPMI (pyghmi), Redfish (sushy), Fleetboot VMs (QMP)."""
