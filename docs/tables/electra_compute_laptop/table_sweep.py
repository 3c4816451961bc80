"""Written by launch.reproduce: electra_compute at laptop (expanding it again
gives the same runs)."""

from launch import reproduce


def get_sweep():
    return reproduce.build_sweep(table_name='electra_compute', scale_name='laptop', n_seeds=None, smoke=False, backend='local', text_files='', settings={})
