"""lxcwrap: the only code in dcfleet that runs LXC tools or writes LXC config."""
