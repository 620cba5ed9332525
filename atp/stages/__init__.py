"""Stage CLIs: each is `python -m atp.stages.<name> --config <job yaml> ...`."""
