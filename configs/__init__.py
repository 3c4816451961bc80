"""ml-collections configs: common.py holds every key and its default; families add variants."""
