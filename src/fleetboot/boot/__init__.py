"""Boot decisions and the boot files they lead to."""
