"""Cloud TPU VM backend (placeholder until the commands are written)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--execute", action="store_true")


def run_root(sweep, args):
    return None


def scripts(runs, name, args):
    return {}


def launch(runs, name, args):
    raise NotImplementedError
