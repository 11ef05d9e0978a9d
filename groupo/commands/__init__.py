"""The subcommands of `groupo`, one module each (`add_arguments(parser)` and `run(args)`), and the
one way they all turn [CONFIG.yaml | RUN_DIR] [--smoke] [key=value ...] into a configuration."""
