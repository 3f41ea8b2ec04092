"""Fleetboot: boots, configures and wires fleets of machines."""
