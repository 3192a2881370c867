"""Each CLI stage as a plain function: arguments in, files out. The CLI only parses and calls these."""
