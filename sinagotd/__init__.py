"""sinagotd: the daemon that keeps a workspace processed (see `sinagotd --help`)."""
