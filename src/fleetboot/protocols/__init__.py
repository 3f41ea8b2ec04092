"""Protocol cores: codecs and state machines, no I/O."""
