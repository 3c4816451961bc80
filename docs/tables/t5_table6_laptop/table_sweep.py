"""Written by launch.reproduce: t5_table6 at laptop (expanding it again
gives the same runs)."""

from launch import reproduce


def get_sweep():
    return reproduce.build_sweep(table_name='t5_table6', scale_name='laptop', n_seeds=None, smoke=False, backend='local', text_files='', settings={})
